"""Many GW problems of equal size at once in torch: the path GPU workers use.

For B pairs of (n, n) cost matrices the square-loss GW objective (POT's convention)

    GW(T) = sum_{ijkl} (C1_ik - C2_jl)^2 T_ij T_kl

is minimised by a proximal-point scheme (Xu et al., 2019, "Gromov-Wasserstein learning"):

    T_{t+1} = argmin_{T in Pi(p, q)} <grad GW(T_t), T> + eps * s * KL(T | T_t),

each step an entropic OT problem whose kernel is T_t * exp(-grad / (eps * s)), solved by a few
log-domain Sinkhorn sweeps. ``s`` is the pair's cost scale (mean C1 times mean C2), so ``epsilon``
is dimensionless. All B pairs advance together with batched matmuls; convergence is tested on
the device every ``check_every`` iterations (one boolean read), and converged pairs are frozen.

Each plan is then handed to the conditional-gradient solver as a warm start
(:func:`gwray.gw.solver.gromov_wasserstein` with ``starts=[T]``), which rounds it to an exactly
feasible plan (Altschuler, Weed and Rigollet, 2017, Algorithm 2) and polishes it for a few
iterations, so every returned value is the objective of a feasible coupling: a true upper bound
on GW, next to the solver's TLB lower bound.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from gwray.errors import GwrayInputError
from gwray.gw.solver import GWResult, gromov_wasserstein

__all__ = ["batched_gw"]

# Share of the product plan mixed into the identity start: the KL step multiplies entries, so an
# exact zero could never grow; a tiny share lets a better nearby plan appear without blurring.
_MIX = 1e-6


def _as_tensor(x, name: str, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GwrayInputError(f"{name}: not a numeric array ({exc})") from exc
    return torch.as_tensor(arr, device=device).to(dtype)


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise GwrayInputError(f"{name}: non-finite value (NaN or inf) at pair {where[0]}, "
                              f"index {where[1:]}")


def _check_costs(C: torch.Tensor, name: str) -> None:
    if C.ndim != 3 or C.shape[1] != C.shape[2]:
        raise GwrayInputError(f"{name}: expected shape (B, n, n), got {tuple(C.shape)}")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise GwrayInputError(f"{name}: empty batch or empty layer, shape {tuple(C.shape)}")
    _check_finite(C, name)
    asym = (C - C.transpose(1, 2)).abs().amax(dim=(1, 2))
    scale = C.abs().amax(dim=(1, 2)).clamp_min(1.0)
    bad = (asym > 1e-8 * scale).nonzero()
    if len(bad):
        raise GwrayInputError(f"{name}: pair {int(bad[0, 0])} is not symmetric "
                              f"(max |C - C^T| = {float(asym[bad[0, 0]]):.3g})")


def _weights(w, name: str, B: int, n: int, device, dtype) -> torch.Tensor:
    if w is None:
        return torch.full((B, n), 1.0 / n, device=device, dtype=dtype)
    w = _as_tensor(w, name, device, dtype)
    if w.ndim == 1:
        w = w.expand(B, -1)
    if tuple(w.shape) != (B, n):
        raise GwrayInputError(f"{name}: expected shape ({B}, {n}) or ({n},), got {tuple(w.shape)}")
    _check_finite(w, name)
    if bool((w <= 0).any()):
        raise GwrayInputError(f"{name}: weights must be positive (the log-domain loop needs it)")
    err = (w.sum(dim=1) - 1.0).abs()
    if bool((err > 1e-6).any()):
        b = int(err.argmax())
        raise GwrayInputError(f"{name}: weights of pair {b} sum to {float(w[b].sum()):.9g}, not 1")
    return w.contiguous()


def _monotone_plan(C1, C2, p, q):
    """Where conditional gradient goes first from the product plan, for every pair at once.

    At ``T = p q^T`` the gradient is rank one, ``-4 (C1 p)(C2 q)^T``, so the best vertex couples
    the samples co-monotonically by eccentricity ``C1 p`` and ``C2 q`` (the north-west corner
    plan of the two sorted orders): ``T_ij = max(0, min(P_i, Q_j) - max(P_{i-1}, Q_{j-1}))`` with
    P, Q the cumulative sorted weights. Shapes: C (B, n, n), p, q (B, n) -> (B, n, n).
    """
    ia = torch.argsort(torch.einsum("bik,bk->bi", C1, p), dim=1)
    ib = torch.argsort(torch.einsum("bjl,bl->bj", C2, q), dim=1)
    P = torch.cumsum(torch.gather(p, 1, ia), dim=1)
    Q = torch.cumsum(torch.gather(q, 1, ib), dim=1)
    P0, Q0 = P - torch.gather(p, 1, ia), Q - torch.gather(q, 1, ib)
    S = (torch.minimum(P[:, :, None], Q[:, None, :])
         - torch.maximum(P0[:, :, None], Q0[:, None, :])).clamp_min(0.0)
    T = torch.empty_like(S)
    rows = torch.empty_like(S).scatter_(1, ia[:, :, None].expand_as(S), S)  # undo the row sort
    return T.scatter_(2, ib[:, None, :].expand_as(S), rows)                # and the column sort


def _objective(C1sq_p, C2sq_q, cross, T):
    """GW objective, shape (B,): sum C1_ik^2 p_i p_k + sum C2_jl^2 q_j q_l - 2 <C1 T C2, T>."""
    return C1sq_p + C2sq_q - 2.0 * (cross * T).sum(dim=(1, 2))


def _prox_loop(C1, C2, p, q, logT, eps, max_iter, inner, check_every, tol):
    """Run the proximal-point iterations on all pairs; returns (log T, iterations per pair).

    The plan returned is the best one seen at a check (the start included), per pair.

    Only tensors stay on the device; the loop reads one boolean every ``check_every`` iterations.
    """
    B = C1.shape[0]
    # log T is kept above 80 % of the log of the smallest normal float (-566 in float64): the
    # mass this adds is nil, and it keeps every exp() out of the subnormal range, where CPU
    # arithmetic is tens of times slower
    floor = 0.8 * math.log(torch.finfo(C1.dtype).tiny)
    logp, logq = p.log(), q.log()
    C1sq_p = torch.einsum("bi,bik,bk->b", p, C1 * C1, p)
    C2sq_q = torch.einsum("bj,bjl,bl->b", q, C2 * C2, q)
    scale = (C1.abs().mean(dim=(1, 2)) * C2.abs().mean(dim=(1, 2))).clamp_min(1e-30)
    step = (4.0 / (eps * scale))[:, None, None]  # grad = const(i) + const(j) - 4 C1 T C2
    active = torch.ones(B, dtype=torch.bool, device=C1.device)
    iters = torch.zeros(B, dtype=torch.int64, device=C1.device)
    last = torch.full((B,), float("inf"), dtype=C1.dtype, device=C1.device)
    best, best_logT = last.clone(), logT  # mirror steps on a non-convex objective can climb
    for it in range(max_iter):
        T = logT.exp()
        cross = torch.bmm(torch.bmm(C1, T), C2)
        if it % check_every == 0:  # the objective of the current plan costs no extra matmul
            value = _objective(C1sq_p, C2sq_q, cross, T)
            active &= (last - value).abs() > tol * value.abs().clamp_min(scale)
            last = value
            better = value < best
            best = torch.where(better, value, best)
            best_logT = torch.where(better[:, None, None], logT, best_logT)
            if not bool(active.any()):  # the loop's only device-to-host read
                break
        logK = logT + step * cross
        f = torch.zeros_like(p)
        g = torch.zeros_like(q)
        for _ in range(inner):
            f = logp - torch.logsumexp(logK + g.unsqueeze(1), dim=2)
            g = logq - torch.logsumexp(logK + f.unsqueeze(2), dim=1)
        new = (logK + f.unsqueeze(2) + g.unsqueeze(1)).clamp_min(floor)
        logT = torch.where(active[:, None, None], new, logT)
        iters += active
    return best_logT, iters


def batched_gw(C1, C2, *, p=None, q=None, aligned: bool = True,
               starts=("identity", "product"), epsilon: float = 1.0,
               max_iter: int = 50, inner_iter: int = 3, check_every: int = 5,
               tol: float = 1e-4, polish_iter: int = 50, keep_coupling: bool = True,
               device=None, dtype=torch.float64) -> list[GWResult]:
    """Square-loss GW for B pairs of equal size at once, each value from a feasible plan.

    Parameters
    ----------
    C1, C2 : array or torch.Tensor, shape (B, n, n)
        Symmetric intra-layer cost matrices; pair ``b`` is ``(C1[b], C2[b])``.
    p, q : array or torch.Tensor, shape (B, n) or (n,), optional
        Marginals (uniform when omitted); each row sums to 1.
    aligned : bool
        Row i of both layers is the same sample, so the identity plan ``diag(p)`` is feasible
        (needs ``p == q``); without it the "identity" start is skipped, as in the serial solver.
    starts : sequence of {"identity", "product"}
        Initial plans; each runs its own proximal loop over the whole batch (so the time grows
        with their number) and the polish keeps the best. "product" starts where conditional
        gradient's first step from the product plan goes (the co-monotone plan by eccentricity,
        see :func:`_monotone_plan`), so both starts mirror the serial solver's. Each is mixed with
        1e-6 of the product plan so that every entry can move.
    epsilon : float
        Proximal step, relative to the pair's cost scale (smaller = bolder steps).
    max_iter : int
        Proximal iterations at most; ``inner_iter`` Sinkhorn sweeps each.
    inner_iter : int
        Log-domain Sinkhorn sweeps per proximal step (the plan need not be exact: it is rounded).
    check_every, tol : int, float
        Every ``check_every`` iterations (one device-to-host read of a boolean), pairs whose
        objective changed by at most ``tol`` relative since the last check are frozen; the loop
        ends when all are. The best plan seen at a check is the one returned.
    polish_iter : int
        Conditional-gradient iterations after rounding (``gromov_wasserstein(..., starts=[T])``).
    keep_coupling : bool
        Keep the (n, n) float64 plans in the results.
    device : str or torch.device, optional
        Where the loop runs; defaults to ``C1``'s device for tensors, else the CPU.
    dtype : torch.dtype
        Loop precision (float32 is faster on most GPUs; rounding and polish run in float64).

    Returns
    -------
    list[GWResult]
        One per pair: ``value`` (the objective of an exactly feasible plan), ``lower_bound``,
        ``iterations`` (proximal + polish of the winning start; ``total_iterations`` over all),
        ``init`` ("batched-identity" or "batched-product"),
        ``solver`` ("batched-prox+" followed by the polish solver's name) and ``seconds``
        (the batch's loop time shared equally, plus the pair's own polish).

    Raises
    ------
    GwrayInputError
        Shapes other than two equal (B, n, n), NaN/inf or asymmetric costs, bad weights, an
        unknown start, a non-positive parameter, an unknown device (one line naming which).
    """
    if device is None:
        device = C1.device if isinstance(C1, torch.Tensor) else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GwrayInputError(f"device: {device!r} is not a torch device ({exc})") from None
    t0 = time.perf_counter()
    C1t = _as_tensor(C1, "C1", device, dtype)
    C2t = _as_tensor(C2, "C2", device, dtype)
    _check_costs(C1t, "C1")
    _check_costs(C2t, "C2")
    if C1t.shape != C2t.shape:
        raise GwrayInputError(f"C2: shape {tuple(C2t.shape)} differs from C1's {tuple(C1t.shape)}"
                              " (the batched path needs B pairs of equal n)")
    for name, val in (("epsilon", epsilon), ("tol", tol)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise GwrayInputError(f"{name}: must be a positive number, got {val!r}")
    for name, val in (("max_iter", max_iter), ("inner_iter", inner_iter),
                      ("check_every", check_every)):
        if not (isinstance(val, int) and val >= 1):
            raise GwrayInputError(f"{name}: must be a positive integer, got {val!r}")
    B, n, _ = C1t.shape
    p64 = _weights(p, "p", B, n, device, torch.float64)
    q64 = _weights(q, "q", B, n, device, torch.float64)
    if aligned and bool(((p64 - q64).abs() > 1e-12).any()):
        raise GwrayInputError("aligned: the identity plan needs p == q; pass aligned=False")
    starts = [starts] if isinstance(starts, str) else list(starts)
    unknown = [s for s in starts if s not in ("identity", "product")]
    if unknown or not starts:
        raise GwrayInputError(f"starts: {unknown or starts!r} not a non-empty list of "
                              "'identity' and 'product'")
    # as in the serial solver, the identity is no coupling of unaligned samples
    names = [s for s in dict.fromkeys(starts) if aligned or s != "identity"] or ["product"]
    prod = p64.unsqueeze(2) * q64.unsqueeze(1)
    inits = {"identity": (1 - _MIX) * torch.diag_embed(p64) + _MIX * prod,
             "product": (1 - _MIX) * _monotone_plan(C1t.to(torch.float64), C2t.to(torch.float64),
                                                    p64, q64) + _MIX * prod}
    plans, iters = [], []
    for name in names:
        logT, its = _prox_loop(C1t, C2t, p64.to(dtype), q64.to(dtype), inits[name].to(dtype).log(),
                               epsilon, max_iter, inner_iter, check_every, tol)
        plans.append(logT.to(torch.float64).exp().cpu().numpy())
        iters.append(its.cpu().numpy())
    loop_share = (time.perf_counter() - t0) / B
    C1n = C1t.to(torch.float64).cpu().numpy()
    C2n = C2t.to(torch.float64).cpu().numpy()
    pn, qn = p64.cpu().numpy(), q64.cpu().numpy()
    given = {("given" if k == 0 else f"given:{k}"): k for k in range(len(names))}
    out = []
    for b in range(B):
        r = gromov_wasserstein(C1n[b], C2n[b], pn[b], qn[b], starts=[T[b] for T in plans],
                               max_iter=polish_iter, keep_coupling=keep_coupling)
        won = given[r.init]
        r.start_values = {f"batched-{names[given[k]]}": v for k, v in r.start_values.items()}
        r.init = f"batched-{names[won]}"
        r.iterations += int(iters[won][b])
        r.total_iterations += int(sum(its[b] for its in iters))
        r.seconds += loop_share
        r.solver = f"batched-prox+{r.solver}"
        out.append(r)
    return out
