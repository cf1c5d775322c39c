"""The "entropic" start on the device, for B pairs at once: the serial
:func:`gwray.gw.starts.entropic_plan` (entropic GW by ε-scaling, Peyré et al. 2016: ε lowered
geometrically from step to step, each Sinkhorn warm-started from the last step's potentials).

One step for every pair: the gradient A = C1 T C2 (two batched matmuls in search precision),
then Sinkhorn on the kernel exp((A + f ⊕ g − max) / ε) from the potentials (f, g), which the
result's scalings are absorbed into. Where the serial solver holds that kernel in float64 (its
float32 exponent range fails at the last steps), the device runs Sinkhorn in the log domain in
search precision — the same iteration, with a range no ε can exceed — and keeps the potentials
in float64. A half-sweep is one kernel launch on CUDA (:mod:`gwray.gw.sinkhorn_kernels`: one
read of the exponents, an online log-sum-exp) and ``torch.logsumexp`` elsewhere. A pair's sweeps
stop as the serial solver's: once its row marginals are within 1e-3 / n, checked every 5 sweeps
(read off the next row half-sweep, no extra pass); the batch stops sweeping when every pair has
(one host read per check). On the 12-layer bench net's pairs at n = 512 the serial test passed
after 14.5 of 30 sweeps per step on average (5 in the first steps, 30 in the last). The plan only
chooses where CG starts: its precision can change which vertex that is, never a reported value.
"""
from __future__ import annotations

import numpy as np
import torch

from gwray.gw.device_assignment import kernel_launch, triton_kernels


def _half_sweep(E, other, log_w, rows: bool) -> torch.Tensor:
    """log_w − logsumexp(E + other) over rows (``other``: column potential) or columns."""
    out = torch.empty_like(log_w)
    kern = triton_kernels(E, "sinkhorn_kernels") if E.dtype == torch.float32 else None
    with kernel_launch():
        if kern is not None:
            kern.half_sweep(E, other, log_w, out, rows)
        elif rows:
            torch.sub(log_w, torch.logsumexp(E + other[:, None, :], dim=2), out=out)
        else:
            torch.sub(log_w, torch.logsumexp(E + other[:, :, None], dim=1), out=out)
    return out


def entropic_plans(P, eps_range: tuple[float, float], steps: int, tail: int, iters: int) -> torch.Tensor:
    """The entropic plans of the B pairs of ``P`` (:class:`gwray.gw.device_cg.Pairs`).

    Parameters
    ----------
    eps_range : (hi, lo), ε relative to s = (pᵀC1p)(qᵀC2q) at the first and last of ``steps``
        geometric steps; ``tail`` more steps at ``lo``.
    iters : int, Sinkhorn sweeps per step.

    Returns
    -------
    (B, n, m) tensor in search precision: the plans (feasible up to Sinkhorn's tolerance; the
    caller rounds or picks a vertex).
    """
    B, n, m, dt = P.B, P.n, P.m, P.dt
    C2 = P.Xb[P.ib]
    scale = (torch.einsum("bi,bik,bk->b", P.p, P.Ca[P.ia], P.p)
             * torch.einsum("bj,bjl,bl->b", P.q, P.Cb[P.ib], P.q)).clamp_min(1e-300)
    T = (P.p[:, :, None] * P.q[:, None, :]).to(dt)
    log_p, log_q = P.p.log().to(dt), P.q.log().to(dt)
    f = torch.zeros(B, n, dtype=torch.float64, device=T.device)
    g = torch.zeros(B, m, dtype=torch.float64, device=T.device)
    hi, lo = eps_range
    for rel in [*np.geomspace(hi, lo, steps), *[lo] * tail]:
        eps = rel * scale
        E = torch.bmm(P.C1, torch.bmm(T, C2))
        E += (f - f.mean(1, keepdim=True)).to(dt)[:, :, None]
        E += (g - g.mean(1, keepdim=True)).to(dt)[:, None, :]
        E -= E.amax(dim=(1, 2), keepdim=True)
        E /= eps.to(dt)[:, None, None]
        lu, lv = None, torch.zeros(B, m, dtype=dt, device=T.device)
        done = torch.zeros(B, dtype=torch.bool, device=T.device)
        for k in range(iters):
            lu_next = _half_sweep(E, lv, log_p, rows=True)
            if k % 5 == 0 and k > 0:  # the serial test after k sweeps: Σ |row marginal − p| < 1e-3 / n
                marginal_error = (P.p * ((lu - lu_next).double().exp() - 1.0).abs()).sum(dim=1)
                done |= marginal_error < 1e-3 / n
                if P.read(done.all()):
                    break
                lu_next = torch.where(done[:, None], lu, lu_next)
            lu = lu_next
            lv = torch.where(done[:, None], lv, _half_sweep(E, lu, log_q, rows=False))
        T = E.add_(lu[:, :, None]).add_(lv[:, None, :]).exp_()
        f = f - f.mean(1, keepdim=True) + eps[:, None] * lu.double()
        g = g - g.mean(1, keepdim=True) + eps[:, None] * lv.double()
    return T
