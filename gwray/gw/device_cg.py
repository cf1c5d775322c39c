"""Conditional gradient for B GW pairs at once, every step on the device (the serial
:mod:`gwray.gw.solver`'s algorithm, batched).

Same objective, carried gradient and exact line search as the serial solver: with A = C1 T C2,
GW(T) = const − 2⟨T, A⟩; the linear step maximises ⟨A, S⟩; B = C1 S C2 is the iteration's one
batched matmul (for a permutation S = P/n a gather of C2's rows, then C1 @ C2[σ] / n); the step α
solves a quadratic from ⟨T, A⟩, ⟨S, A⟩ and ⟨S, B⟩; then A ← A + α(B − A). Uniform weights and
n = m: the linear step is the auction of :mod:`gwray.gw.device_assignment`, warm-started from the
previous iteration's prices and permutation, and CG alternates with the swap search of
:mod:`gwray.gw.device_local_search` as the serial solver's ``_polish`` does. Otherwise: Sinkhorn
rounded to a feasible plan.

The search runs in the precision of ``C1`` (float32 in the engine); the caller recomputes every
reported value in float64 from the final plan. The loops read one boolean every ``check_every``
iterations through ``P.read`` and nothing else.
"""
from __future__ import annotations

import torch

from gwray.gw.device_assignment import auction, final_epsilon, transport_vertex
from gwray.gw.device_local_search import swap_search


class Pairs:
    """B pairs on the device: search-precision costs, float64 weights and constants.

    Parameters
    ----------
    C1 : (B, n, n), C2 : (B, m, m) tensors in the search precision.
    p : (B, n), q : (B, m) float64 weights; const : (B,) float64, pᵀ(C1∘C1)p + qᵀ(C2∘C2)q.
    lap : bool, uniform weights and n = m (permutation vertices).
    read : callable, the counted host read (0-d bool tensor → bool).
    assignment_eps : float, the auction's final ε relative to the gradient's range / n.
    exact : (C1, C2) in float64 (the swap search's acceptance test).
    """

    def __init__(self, C1, C2, p, q, const, lap: bool, read, assignment_eps: float = 1e-5,
                 exact: tuple | None = None):
        self.C1, self.C2, self.p, self.q, self.const = C1, C2, p, q, const
        self.exact = exact
        self.B, self.n, self.m = C1.shape[0], C1.shape[1], C2.shape[1]
        self.lap, self.read, self.rel = lap, read, assignment_eps
        self.dt = C1.dtype

    def subset(self, idx: torch.Tensor) -> "Pairs":
        return Pairs(self.C1[idx], self.C2[idx], self.p[idx], self.q[idx], self.const[idx],
                     self.lap, self.read, self.rel, tuple(c[idx] for c in self.exact))

    def perm_plan(self, cols: torch.Tensor):
        """T = P_σ / n and A = C1 T C2 = C1 @ C2[σ] / n for permutations cols (B, n)."""
        n = self.n
        T = torch.zeros(cols.shape[0], n, n, dtype=self.dt, device=cols.device)
        T.scatter_(2, cols[:, :, None], 1.0 / n)
        return T, self.times_c(cols)

    def times_c(self, cols: torch.Tensor) -> torch.Tensor:
        """C1 @ C2[σ] / n: the gather of C2's rows, then one batched matmul."""
        rows = self.C2.gather(1, cols[:, :, None].expand(-1, -1, self.n))
        return torch.bmm(self.C1, rows) / self.n


def line_search(tA, sA, sB):
    """The serial solver's exact step, per pair: α in [0, 1], ⟨S − T, A⟩, ⟨S − T, C1(S − T)C2⟩."""
    dA = sA - tA
    dBA = sB - 2.0 * sA + tA
    a, b = -2.0 * dBA, -4.0 * dA  # value(α) = value + b α + a α²
    vertex = torch.where(a + b < 0, 1.0, 0.0).to(tA.dtype)
    alpha = torch.where(a > 0, (-b / (2.0 * a).clamp_min(1e-300)).clamp(0.0, 1.0), vertex)
    return alpha, dA, dBA


class State:
    """One start's plans for B pairs: T, A = C1 T C2, ⟨T, A⟩ (float64), the permutation when T
    is a permutation plan (``is_perm``), the auction's prices and the iteration counts."""

    def __init__(self, T, A, perm=None, is_perm=None, first=None):
        B = T.shape[0]
        self.T, self.A, self.first = T, A, first
        self.tA = (T * A).sum(dim=(1, 2)).to(torch.float64)
        self.perm, self.prices = perm, None
        self.is_perm = (torch.zeros(B, dtype=torch.bool, device=T.device) if is_perm is None
                        else is_perm)
        self.iters = torch.zeros(B, dtype=torch.long, device=T.device)

    def subset(self, idx):
        s = State.__new__(State)
        s.T, s.A, s.tA, s.iters, s.is_perm = self.T[idx], self.A[idx], self.tA[idx], self.iters[idx], self.is_perm[idx]
        s.perm = None if self.perm is None else self.perm[idx]
        s.first = None if self.first is None else self.first[idx]
        s.prices = None if self.prices is None else self.prices[idx]
        return s


def cg(P: Pairs, S: State, active: torch.Tensor, max_iter: int, tol: float, cutoff=None,
       check_every: int = 4) -> State:
    """Conditional gradient on the ``active`` pairs of ``S`` (updated in place and returned).

    A pair stops when its step is 0, its objective moves by less than ``tol`` (absolute or
    relative, as the serial solver) or exceeds ``cutoff`` ((B,) tensor: the start is abandoned).
    ``S.first``, when set, is the first iteration's vertex (the product start's sorted pairing,
    or the screen's assignment); it is used once."""
    active = active.clone()
    value = P.const - 2.0 * S.tA
    for it in range(max_iter):
        if it % check_every == 0 and not P.read(active.any()):
            break
        if P.lap:
            if S.first is not None:
                cols, S.first = S.first, None
            else:
                eps = final_epsilon(S.A, P.rel)
                cols, S.prices, _ = auction(S.A, eps, S.prices, S.perm, active=active, read=P.read)
                # the linear step returned the current vertex: CG is stationary, whatever tiny
                # step float noise in ⟨S − T, A⟩ might suggest (TF32 matmuls)
                if S.perm is not None:
                    active &= ~(S.is_perm & (cols == S.perm).all(dim=1))
            Bm = P.times_c(cols)
            idx = cols[:, :, None]
            sA = S.A.gather(2, idx).sum(dim=(1, 2)).double() / P.n
            sB = Bm.gather(2, idx).sum(dim=(1, 2)).double() / P.n
        else:
            Sv = transport_vertex(S.A, P.p.to(P.dt), P.q.to(P.dt))
            Bm = torch.bmm(P.C1, torch.bmm(Sv, P.C2))
            sA, sB = (Sv * S.A).sum(dim=(1, 2)).double(), (Sv * Bm).sum(dim=(1, 2)).double()
        alpha, dA, dBA = line_search(S.tA, sA, sB)
        alpha = torch.where(active, alpha, 0.0)
        S.iters += active
        a = alpha.to(P.dt)[:, None, None]
        S.T = S.T * (1.0 - a)
        if P.lap:
            S.T.scatter_add_(2, idx, (a / P.n).expand(-1, P.n, 1))
            full = alpha >= 1.0
            S.perm = cols if S.perm is None else torch.where(full[:, None], cols, S.perm)
            S.is_perm = torch.where(full, True, torch.where(alpha > 0, False, S.is_perm))
        else:
            S.T = S.T + a * Sv
        S.A = S.A * (1.0 - a) + a * Bm
        S.tA = S.tA + 2.0 * alpha * dA + alpha * alpha * dBA
        new = P.const - 2.0 * S.tA
        delta = (value - new).abs()
        value = new
        active &= (alpha > 0) & (delta >= tol) & (delta >= tol * value.abs())
        if cutoff is not None:
            active &= value <= cutoff
    S.first = None
    return S


def polish(P: Pairs, S: State, eligible: torch.Tensor, max_iter: int, tol: float,
           swap_rounds: int, max_alternations: int = 20) -> State:
    """Alternate swap search and CG on the ``eligible`` pairs (permutation plans) while either
    improves: the serial solver's ``_polish``, batched."""
    eligible = eligible & S.is_perm
    for _ in range(max_alternations):
        if not P.read(eligible.any()):
            break
        cols, changed = swap_search(P.C1, P.C2, S.perm, eligible, swap_rounds, P.exact, read=P.read)
        if not P.read(changed.any()):
            break
        T, A = P.perm_plan(cols)
        keep = ~changed[:, None, None]
        S.T, S.A = torch.where(keep, S.T, T), torch.where(keep, S.A, A)
        S.tA = torch.where(changed, (T * A).sum(dim=(1, 2)).double(), S.tA)
        S.perm = torch.where(changed[:, None], cols, S.perm)
        S.is_perm = S.is_perm | changed
        S = cg(P, S, changed, max_iter, tol)
        # a pair polishes again only when CG moved it to another permutation
        eligible = changed & S.is_perm & (S.perm != cols).any(dim=1)
    return S
