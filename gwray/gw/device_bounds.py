"""Lower bounds on square-loss GW for many pairs at once, on the device (see :mod:`gwray.gw.bounds`).

Uniform weights: Mémoli's TLB. Γ_ij = W2²(row i of C1, row j of C2) comes from the rows sorted
on their common quantile grid as one batched matmul; TLB = min over couplings of ⟨Γ, T⟩ is an OT
problem that the device solves only approximately (n = m: the engine's auction on −Γ, one launch
for the batch; n ≠ m: annealed Sinkhorn). The bound stays certified anyway: for ANY column
potential g, f = its c-transform f_i = min_j (Γ_ij − g_j) makes (f, g) dual-feasible, so
p·f + q·g ≤ TLB ≤ GW (weak duality), less a margin for float64 rounding (as
:func:`gwray.gw.bounds.assignment_bound`). A near-optimal g only makes it tight. For n = m the
projected Hoffman-Wielandt (eigenvalue) bound of :func:`gwray.gw.bounds.eigen_bound` is computed
too, from per-layer data (one symmetric eigenvalue problem per layer, not per pair), and the
larger of the two is the bound, as in the serial solver.

Other weights: the second lower bound (SLB), the squared 1-D W2 between the laws of all entries
C1_ik under p⊗p and C2_jl under q⊗q (T⊗T couples them, so GW(T) ≥ SLB): sorts and a merged
quantile grid, no OT solve. It is weaker than the TLB.
"""
from __future__ import annotations

import math

import torch

from gwray.gw.device_assignment import auction, sinkhorn
from gwray.gw.device_local_search import EXACT_BYTES


class LayerData:
    """What the bounds need of a stack of (L, n, n) float64 cost matrices, once per layer: the
    rows sorted (the TLB's quantile functions), their squared norms, and for the eigenvalue
    bound the row sums, totals, squared norms and the deflated spectrum ``kappa`` (ascending,
    each raised by its rounding-error bound), as :func:`gwray.gw.bounds.layer_summary`."""

    def __init__(self, C: torch.Tensor, spectrum: bool = True):
        L, n = C.shape[0], C.shape[1]
        self.sorted_rows = C.sort(dim=2).values
        self.row_sq = (self.sorted_rows ** 2).sum(2)
        self.row_sums, self.total = C.sum(2), C.sum(dim=(1, 2))
        self.sq_norm = (C * C).sum(dim=(1, 2))
        self.kappa = None
        if spectrum and n > 1:
            # Householder H = I − 2wwᵀ maps e1 to 1/√n: V = H[:, 1:] spans 1⊥
            w = torch.full((n,), 1.0 / n ** 0.5, dtype=C.dtype, device=C.device)
            w[0] -= 1.0
            w = w / w.norm()
            Cw = C @ w
            H = (C - 2.0 * w[None, :, None] * Cw[:, None, :] - 2.0 * Cw[:, :, None] * w[None, None, :]
                 + 4.0 * (Cw @ w)[:, None, None] * (w[:, None] * w[None, :]))
            err = 16.0 * n * torch.finfo(torch.float64).eps * n * C.abs().amax(dim=(1, 2))
            self.kappa = (-torch.linalg.eigvalsh(H[:, 1:, 1:])).sort(dim=1).values + err[:, None]

    @classmethod
    def cat(cls, parts) -> "LayerData":
        """One stack's data from the data of its layers (e.g. cached one layer at a time)."""
        out = cls.__new__(cls)
        for name in ("sorted_rows", "row_sq", "row_sums", "total", "sq_norm", "kappa"):
            values = [getattr(p, name) for p in parts]
            setattr(out, name, None if any(v is None for v in values) else torch.cat(values))
        return out


def eigen_bound(Sa: LayerData, Sb: LayerData, ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """The serial :func:`gwray.gw.bounds.eigen_bound` for pairs (layer ia[b] of Sa, ib[b] of Sb),
    n = m ≥ 2: (B,) float64 lower bounds on GW."""
    n = Sa.row_sums.shape[1]
    k1, k2 = Sa.kappa[ia], Sb.kappa[ib]
    s1, s2 = (-k1[:, 0]).clamp_min(0.0), (-k2[:, 0]).clamp_min(0.0)
    r1, r2 = Sa.row_sums[ia].sort(dim=1).values, Sb.row_sums[ib].sort(dim=1).values
    linear = 2.0 * (r1 * r2).sum(1) / n - Sa.total[ia] * Sb.total[ib] / n ** 2
    quad = ((k1 + s1[:, None]) * (k2 + s2[:, None])).sum(1) + s1 * s2 * (n - 1)
    norms = Sa.sq_norm[ia] + Sb.sq_norm[ib]
    return (norms - 2.0 * (linear + quad) - 1e-12 * (norms + 2.0 * linear.abs() + 2.0 * quad)) / n ** 2


def _gamma(Sa: LayerData, Sb: LayerData, ia, ib) -> torch.Tensor:
    """Γ (B, n, n) float64 for n = m: (|U_i|² + |V_j|² − 2 U_i·V_j) / n of the sorted rows."""
    n = Sa.sorted_rows.shape[1]
    G = torch.baddbmm((Sa.row_sq[ia][:, :, None] + Sb.row_sq[ib][:, None, :]),
                      Sa.sorted_rows[ia], Sb.sorted_rows[ib].transpose(1, 2), alpha=-2.0)
    return G.div_(n).clamp_min_(0.0)


def assignment_tlb(Sa: LayerData, Sb: LayerData, ia: torch.Tensor, ib: torch.Tensor,
                   dtype=torch.float32, rel: float = 1e-6) -> torch.Tensor:
    """TLB for uniform weights and n = m, certified in float64: the column prices of the auction
    on −Γ (run in ``dtype``, one launch for all pairs) are the potential g.

    Parameters
    ----------
    Sa, Sb : LayerData of the two sides' stacks; ia, ib : (B,) layer indices of each pair.
    dtype : precision of the auction's benefits; rel : its final ε relative to Γ's range / n.

    Returns
    -------
    (B,) float64 tensor, a lower bound on GW for each pair (clipped at 0).
    """
    B, n = ia.shape[0], Sa.sorted_rows.shape[1]
    step = max(1, EXACT_BYTES // (24 * n * n))
    chunks = [slice(lo, min(B, lo + step)) for lo in range(0, B, step)]
    benefit = torch.empty(B, n, n, dtype=dtype, device=ia.device)
    for c in chunks:
        benefit[c] = _gamma(Sa, Sb, ia[c], ib[c]).neg_()
    _, prices, _, _ = auction(benefit, rel)
    del benefit
    g = -prices
    g -= g.mean(1, keepdim=True)  # (f + c, g − c) are the same duals: keep them small
    lb = []
    for c in chunks:
        f = (_gamma(Sa, Sb, ia[c], ib[c]) - g[c][:, None, :]).amin(dim=2)  # the c-transform
        size = f.abs().sum(1) + g[c].abs().sum(1)
        margin = 2.0 * torch.finfo(torch.float64).eps * (2.0 + math.log2(max(n, 2))) * size
        lb.append((f.sum(1) + g[c].sum(1) - margin) / n)
    return torch.cat(lb).clamp_min(0.0)


def _grid(n: int, m: int, device) -> torch.Tensor:
    """Right ends of the segments of {k/n} ∪ {l/m} in (0, 1], float64."""
    f64 = dict(dtype=torch.float64, device=device)
    g = torch.unique(torch.cat((torch.arange(1, n + 1, **f64) / n, torch.arange(1, m + 1, **f64) / m)))
    g = g[torch.cat((torch.ones(1, dtype=torch.bool, device=device), g.diff() > 1e-12))]
    g[-1] = 1.0
    return g


def w2_rows(C1: torch.Tensor, C2: torch.Tensor) -> torch.Tensor:
    """Γ_ij = W2²(C1[b, i] ~ uniform, C2[b, j] ~ uniform) for every pair b, as one batched matmul.

    Parameters
    ----------
    C1 : (B, n, n), C2 : (B, m, m) float64 tensors.

    Returns
    -------
    (B, n, m) float64 tensor ≥ 0.
    """
    n, m = C1.shape[1], C2.shape[1]
    grid = _grid(n, m, C1.device)
    width = grid.diff(prepend=grid.new_zeros(1))
    pick = lambda k: (torch.ceil(grid * k - 1e-9).long() - 1).clamp(0, k - 1)  # noqa: E731
    U = C1.sort(dim=2).values[:, :, pick(n)]
    V = C2.sort(dim=2).values[:, :, pick(m)]
    G = ((U * U) @ width)[:, :, None] + ((V * V) @ width)[:, None, :] - 2.0 * (U * width) @ V.transpose(1, 2)
    return G.clamp_min(0.0)


def certified_tlb(C1: torch.Tensor, C2: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                  dtype=torch.float32, stages: int = 6, iters: int = 20) -> torch.Tensor:
    """TLB for uniform weights (any n, m), certified by a c-transform in float64.

    The column potential comes from Sinkhorn on Γ with ε annealed from 10 % to 0.01 % of Γ's
    range (``stages`` × ``iters`` sweeps, a fixed amount of dense work and no host read): on
    layer pairs the certified bound is within 0.5 % of the exact TLB (n = 256 to 1,024).

    Parameters
    ----------
    C1 : (B, n, n), C2 : (B, m, m) float64 tensors; p (B, n), q (B, m) uniform float64 weights.
    dtype : the precision of the Sinkhorn sweeps (the certificate is float64).
    stages, iters : the annealing schedule.

    Returns
    -------
    (B,) float64 tensor, a lower bound on GW for each pair (clipped at 0).
    """
    G = w2_rows(C1, C2)
    Gs = G.to(dtype)
    span = (Gs.amax(dim=(1, 2)) - Gs.amin(dim=(1, 2))).clamp_min(torch.finfo(dtype).tiny)
    _, g = sinkhorn(Gs, p.to(dtype), q.to(dtype), 1e-4 * span, iters, stages, 0.1 * span)
    g = g.to(torch.float64)
    f = (G - g[:, None, :]).amin(dim=2)  # the c-transform: f_i + g_j ≤ Γ_ij for every (i, j)
    return ((p * f).sum(1) + (q * g).sum(1)).clamp_min(0.0)


def _quantiles(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Values of the weighted 1-D laws (x, w) (B, k) at levels t (B, G) (left-continuous)."""
    order = x.argsort(dim=1)
    xs, cw = x.gather(1, order), w.gather(1, order).cumsum(1)
    idx = torch.searchsorted(cw, t.contiguous(), right=False).clamp_max(x.shape[1] - 1)
    return xs.gather(1, idx)


def slb(C1: torch.Tensor, C2: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Second lower bound: W2² between the laws of C1's entries (p⊗p) and C2's (q⊗q), float64.

    Parameters
    ----------
    C1 : (B, n, n), C2 : (B, m, m) float64 tensors; p (B, n), q (B, m) float64 weights.

    Returns
    -------
    (B,) float64 tensor ≤ GW of each pair.
    """
    B = C1.shape[0]
    x, y = C1.reshape(B, -1), C2.reshape(B, -1)
    wx, wy = (p[:, :, None] * p[:, None, :]).reshape(B, -1), (q[:, :, None] * q[:, None, :]).reshape(B, -1)
    cx = wx.gather(1, x.argsort(dim=1)).cumsum(1)
    cy = wy.gather(1, y.argsort(dim=1)).cumsum(1)
    levels = torch.cat((cx, cy), 1).clamp(0.0, 1.0).sort(dim=1).values
    width = levels.diff(dim=1, prepend=torch.zeros_like(levels[:, :1]))
    mid = levels - 0.5 * width  # the middle of each segment: both quantile functions are constant
    d = _quantiles(x, wx, mid) - _quantiles(y, wy, mid)
    return (width * d * d).sum(1)
