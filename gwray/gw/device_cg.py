"""Conditional gradient for many GW problems at once, every step on the device (the serial
:mod:`gwray.gw.problem`'s steps, batched).

Same objective, carried gradient and exact line search as the serial solver: with A = C1 T C2,
GW(T) = const − 2⟨T, A⟩; the linear step maximises ⟨A, S⟩; B = C1 S C2 is the iteration's one
batched matmul (for a permutation S = P/n a gather of C2's rows, then C1 @ C2[σ] / n); the step α
solves a quadratic from ⟨T, A⟩, ⟨S, A⟩ and ⟨S, B⟩; then A ← A + α(B − A). Uniform weights and
n = m: the linear step is the auction of :mod:`gwray.gw.device_assignment` (one kernel launch for
every problem), warm-started from the previous iteration's prices and permutation. Otherwise:
Sinkhorn rounded to a feasible plan.

A batch holds K·B *problems*: K blocks (one per start, or the polish) of the same B pairs, so
that every start of every pair advances in the same launches. Costs are never copied per
problem: each side is a stack of per-layer cost matrices and a pair is two indices into them.
Permutation plans stay implicit: a problem keeps its start plan, the vertices it stepped to and
the step sizes, and its dense plan is built (in float64) only where an end is not a permutation.

The search runs in the precision of the stacks' search copy (float32 in the engine); the caller
recomputes every reported value in float64 from the final plan. The loops read one boolean every
``check_every`` iterations through ``P.read`` and nothing else.
"""
from __future__ import annotations

import torch

from gwray.gw.device_assignment import auction, transport_vertex

# start plans kept implicit: a permutation (the identity's, a polished end's), ½ I/n + ½ 11ᵀ/n²
# (mixed), 11ᵀ/n² (product)
PERMUTATION, MIXED, PRODUCT = 0, 1, 2


class Pairs:
    """B pairs on the device, as indices into two stacks of per-layer cost matrices.

    Parameters
    ----------
    Xa, Xb : (La, n, n), (Lb, m, m) tensors, the stacks in the search precision.
    Ca, Cb : the same stacks in float64 (exact values, the swap search's acceptance test).
    ia, ib : (B,) long tensors: pair b is (Ca[ia[b]], Cb[ib[b]]).
    p : (B, n), q : (B, m) float64 weights.
    uniform : bool, p and q uniform; lap : bool, uniform and n = m (permutation vertices).
    read : callable, the counted host read (0-d bool tensor → bool).
    assignment_eps : float, the auction's final ε relative to the gradient's range / n.
    """

    def __init__(self, Xa, Xb, Ca, Cb, ia, ib, p, q, uniform: bool, lap: bool, read,
                 assignment_eps: float = 1e-5):
        self.Xa, self.Xb, self.Ca, self.Cb, self.ia, self.ib = Xa, Xb, Ca, Cb, ia, ib
        self.p, self.q, self.lap, self.read, self.rel = p, q, lap, read, assignment_eps
        self.B, self.n, self.m = ia.shape[0], Xa.shape[1], Xb.shape[1]
        self.dt = Xa.dtype
        self.C1 = Xa[ia]  # (B, n, n): the one per-pair copy, the left factor of every matmul
        self.const = _quadratic(Ca, ia, p, uniform) + _quadratic(Cb, ib, q, uniform)

    def blocks(self, k: int) -> torch.Tensor:
        """(k·B,) the layer of side b of every problem of k blocks."""
        return self.ib.repeat(k)

    def times_c(self, cols: torch.Tensor, pair: torch.Tensor | None = None) -> torch.Tensor:
        """C1 @ C2[σ] / n for the permutations cols: (k·B, n) for k whole blocks of B pairs (per
        block a gather of C2's rows from the stack, then one batched matmul, one block's rows
        alive at a time), or (P, n) problems of the pairs ``pair`` (P,) (C1 gathered too)."""
        out = torch.empty(cols.shape[0], self.n, self.n, dtype=self.dt, device=cols.device)
        if pair is not None:
            rows = self.Xb[self.ib[pair][:, None], cols]
            return torch.baddbmm(rows, self.C1[pair], rows, beta=0.0, alpha=1.0 / self.n, out=out)
        for s in range(cols.shape[0] // self.B):
            sl = slice(s * self.B, (s + 1) * self.B)
            rows = self.Xb[self.ib[:, None], cols[sl]]
            torch.baddbmm(rows, self.C1, rows, beta=0.0, alpha=1.0 / self.n, out=out[sl])
        return out

    def times_dense(self, S: torch.Tensor, pair: torch.Tensor | None = None) -> torch.Tensor:
        """C1 S C2 for dense plans S: k whole blocks of B pairs, or the pairs ``pair``."""
        if pair is not None:
            return torch.bmm(self.C1[pair], torch.bmm(S, self.Xb[self.ib[pair]]))
        k = S.shape[0] // self.B
        C2 = self.Xb[self.ib]
        return torch.cat([torch.bmm(self.C1, torch.bmm(S[s * self.B:(s + 1) * self.B], C2))
                          for s in range(k)])

    def subset(self, idx: torch.Tensor) -> "Pairs":
        """The pairs ``idx`` (C1 copied; the stacks shared)."""
        sub = Pairs.__new__(Pairs)
        sub.__dict__.update(self.__dict__)
        sub.C1, sub.ia, sub.ib, sub.p, sub.q, sub.const = (t[idx] for t in (self.C1, self.ia, self.ib, self.p,
                                                                            self.q, self.const))
        sub.B = int(idx.shape[0])
        return sub


def _quadratic(C: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, uniform: bool) -> torch.Tensor:
    """wᵀ (C[idx[b]] ∘ C[idx[b]]) w per pair, float64 (per layer when the weights are uniform)."""
    if uniform:
        return (C * C).mean(dim=(1, 2))[idx]
    return torch.einsum("bi,bik,bk->b", w, C[idx] ** 2, w)


def line_search(tA, sA, sB):
    """The serial solver's exact step, per problem: α in [0, 1], ⟨S − T, A⟩, ⟨S − T, C1(S − T)C2⟩."""
    dA = sA - tA
    dBA = sB - 2.0 * sA + tA
    a, b = -2.0 * dBA, -4.0 * dA  # value(α) = value + b α + a α²
    vertex = torch.where(a + b < 0, 1.0, 0.0).to(tA.dtype)
    alpha = torch.where(a > 0, (-b / (2.0 * a).clamp_min(1e-300)).clamp(0.0, 1.0), vertex)
    return alpha, dA, dBA


class State:
    """Problems' plans: A = C1 T C2 (search precision), ⟨T, A⟩ (float64), the iteration counts,
    and T itself — dense for Sinkhorn problems; for assignment problems implicit: the start plan
    (``kind``, ``perm0``), the vertices stepped to and the step sizes (``steps``), the permutation
    when T is one (``perm``, ``is_perm``), and the auction's prices for the next linear step."""

    # what a problem carries out of a CG run (A itself is only needed during it)
    CARRIED = ("tA", "perm", "is_perm", "prices", "last", "priced", "iters", "linear", "bids", "T")

    def __init__(self, A, kind, perm0=None, T=None, first=None, has_first=None):
        P = A.shape[0]
        dev = A.device
        self.A, self.T, self.first, self.has_first = A, T, first, has_first
        self.kind = kind
        self.perm0 = perm0
        self.is_perm = kind == PERMUTATION
        self.perm = perm0 if perm0 is not None else torch.zeros(P, A.shape[1], dtype=torch.long, device=dev)
        self.tA = None
        self.last = perm0  # the last linear step's vertex (the auction's warm start)
        self.prices, self.steps = None, []
        self.iters = torch.zeros(P, dtype=torch.long, device=dev)
        self.linear = torch.zeros(P, dtype=torch.long, device=dev)  # auction calls per problem
        self.bids = torch.zeros(P, dtype=torch.long, device=dev)  # and the bids they made
        self.priced = torch.zeros(P, dtype=torch.bool, device=dev)  # prices from a finished auction

    def subset(self, idx: torch.Tensor) -> "State":
        """The problems ``idx`` (copies; ``steps`` stay with the full state)."""
        sub = State.__new__(State)
        for name in self.CARRIED + ("A", "kind", "perm0", "first", "has_first"):
            value = getattr(self, name)
            setattr(sub, name, None if value is None else value[idx])
        sub.steps = []
        return sub

    def put(self, idx: torch.Tensor, sub: "State") -> None:
        """Write back what the problems ``idx`` carry out of a CG run from ``sub``."""
        for name in self.CARRIED:
            value = getattr(sub, name)
            if value is None:
                continue
            if getattr(self, name) is None:  # e.g. the first prices: zeros elsewhere
                setattr(self, name, torch.zeros((self.A.shape[0],) + value.shape[1:], dtype=value.dtype,
                                                device=value.device))
            getattr(self, name)[idx] = value

    def dense(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The float64 plans (P, n, m): T itself, or the start plan and its steps composed."""
        if self.T is not None:
            return self.T.double()
        P, n = self.kind.shape[0], p.shape[1]
        T = torch.where((self.kind == MIXED)[:, None, None], 0.5, 1.0) * (p[:, :, None] * q[:, None, :])
        T = torch.where((self.kind == PERMUTATION)[:, None, None], 0.0, T)
        T.diagonal(dim1=1, dim2=2).add_(torch.where(self.kind == MIXED, 0.5, 0.0)[:, None] * p)
        if self.perm0 is not None:
            w = torch.where(self.kind == PERMUTATION, 1.0 / n, 0.0).to(T.dtype)
            T.scatter_add_(2, self.perm0[:, :, None], w[:, None, None].expand(P, n, 1))
        for cols, alpha in self.steps:
            T.mul_((1.0 - alpha)[:, None, None])
            T.scatter_add_(2, cols[:, :, None], (alpha / n)[:, None, None].expand(P, n, 1))
        return T


def cg(P: Pairs, S: State, active: torch.Tensor, max_iter: int, tol: float, cutoff=None,
       check_every: int = 1) -> State:
    """Conditional gradient on the ``active`` problems of ``S`` (updated in place and returned).

    A problem stops when its step is 0, its objective moves by less than ``tol`` (absolute or
    relative, as the serial solver) or exceeds ``cutoff`` ((K·B,) tensor: the start is abandoned).
    ``S.first``, when set, is the first iteration's vertex where ``S.has_first`` (the product
    start's sorted pairing, or the screen's assignment); it is used once. Counts the linear steps
    and the auction's bids per problem in ``S.linear`` and ``S.bids``.

    Every ``check_every`` iterations the host reads which problems are still active; once half
    of them (and 8 at least) have converged the run continues on the others alone (their rows copied out of ``S``
    and what they carry written back), so the matmuls and auctions shrink with the batch instead
    of running for the slowest pair, at O(log P) compactions."""
    Ptot, n = S.A.shape[0], P.n
    where = torch.arange(Ptot, device=S.A.device)
    work, pair = S, None  # pair: each working problem's pair (None: K whole blocks of B)
    const = P.const.repeat(Ptot // P.B)
    value = const - 2.0 * S.tA
    active = active.clone()
    for it in range(max_iter):
        if it % check_every == 0:
            keep = P.read(active.nonzero())[:, 0]
            if keep.size == 0:
                break
            # compact once half the problems converged, 8 at least (smaller sets are not worth it)
            if 2 * keep.size <= active.shape[0] and active.shape[0] - keep.size >= 8:
                keep = torch.as_tensor(keep, device=S.A.device)
                if work is not S:
                    S.put(where, work)
                work, where = work.subset(keep), where[keep]
                pair, const, value, active = where % P.B, const[keep], value[keep], active[keep]
                cutoff = None if cutoff is None else cutoff[keep]
        if P.lap:
            # a known first vertex (the product start's sorted pairing) replaces the auction once
            known = work.first is not None and it == 0
            ask = active & ~work.has_first if known else active
            cols, work.prices, _, bids = auction(work.A, P.rel, work.prices, work.last,
                                                 active=ask, warm=work.priced)
            work.priced = work.priced | ask
            work.linear += ask
            work.bids += bids
            if known:
                cols = torch.where(work.has_first[:, None], work.first, cols)
            # the linear step returned the current vertex: CG is stationary, whatever tiny
            # step float noise in ⟨S − T, A⟩ might suggest (TF32 matmuls)
            active &= ~(work.is_perm & (cols == work.perm).all(dim=1))
            work.last = cols
            Bm = P.times_c(cols, pair)
            idx = cols[:, :, None]
            sA = work.A.gather(2, idx).sum(dim=(1, 2), dtype=torch.float64) / n
            sB = Bm.gather(2, idx).sum(dim=(1, 2), dtype=torch.float64) / n
        else:
            pp = P.p[where % P.B].to(P.dt), P.q[where % P.B].to(P.dt)
            Sv = transport_vertex(work.A, *pp)
            Bm = P.times_dense(Sv, pair)
            sA = (Sv * work.A).sum(dim=(1, 2), dtype=torch.float64)
            sB = (Sv * Bm).sum(dim=(1, 2), dtype=torch.float64)
        alpha, dA, dBA = line_search(work.tA, sA, sB)
        alpha = torch.where(active, alpha, 0.0)
        work.iters += active
        if P.lap:
            if work is S:
                S.steps.append((cols, alpha))
            else:  # steps are kept for the full state (inactive problems step by 0)
                full_cols = torch.zeros(Ptot, n, dtype=cols.dtype, device=cols.device)
                full_alpha = torch.zeros(Ptot, dtype=alpha.dtype, device=alpha.device)
                S.steps.append((full_cols.index_copy_(0, where, cols), full_alpha.index_copy_(0, where, alpha)))
            full = alpha >= 1.0
            work.perm = torch.where(full[:, None], cols, work.perm)
            work.is_perm = torch.where(full, True, torch.where(alpha > 0, False, work.is_perm))
        else:
            work.T = torch.lerp(work.T, Sv, alpha.to(P.dt)[:, None, None])
        work.A.lerp_(Bm, alpha.to(P.dt)[:, None, None])
        work.tA = work.tA + 2.0 * alpha * dA + alpha * alpha * dBA
        new = const - 2.0 * work.tA
        delta = (value - new).abs()
        value = new
        active &= (alpha > 0) & (delta >= tol) & (delta >= tol * value.abs())
        if cutoff is not None:
            active &= value <= cutoff
    if work is not S:
        S.put(where, work)
    S.first = None
    return S
