"""The linear step of conditional gradient on the device, for B problems at once.

Uniform weights, n = m (the step is an assignment problem): a batched ε-scaling forward auction
(Bertsekas 1988, Jacobi variant: up to K unassigned rows bid at once, each column goes to its
highest bidder). At termination every row is within ε of its best column at the final prices
(ε-complementary slackness), so the permutation's total benefit is within n·ε of the optimum
(Bertsekas, "Linear network optimization", Prop. 7.1). ε is scaled down from a coarse value to
the final one, prices carried over; a later, nearby problem (CG's next gradient) starts from the
previous prices and keeps the previous edges that are still ε-optimal.

Other weights or n ≠ m: log-domain Sinkhorn on the benefit, rounded to an exactly feasible plan
(Altschuler, Weed and Rigollet 2017, Algorithm 2), batched.

Everything stays on the device; the only host reads are the ``read`` callback's (one boolean every
``check_every`` rounds).
"""
from __future__ import annotations

import torch

# ε of the first phase relative to the benefit's range, and the factor between phases
_EPS_START, _EPS_STEP = 0.125, 6.0


def final_epsilon(A: torch.Tensor, rel: float) -> torch.Tensor:
    """Per problem, the auction's final ε: ``rel`` × range(A) / n, but never so small that a bid
    increment vanishes in the auction's float64 prices (64 ulps of max |A| + range).

    Parameters
    ----------
    A : (B, n, n) tensor of benefits.
    rel : float, the wanted suboptimality of the permutation's mean benefit, relative to the range.

    Returns
    -------
    (B,) float64 tensor; the permutation's total benefit is within n·ε of the optimum.
    """
    hi, lo = A.amax(dim=(1, 2)).double(), A.amin(dim=(1, 2)).double()
    span = (hi - lo).clamp_min(torch.finfo(A.dtype).tiny)
    floor = 64.0 * torch.finfo(torch.float64).eps * (hi.abs().maximum(lo.abs()) + span)
    return torch.maximum(rel * span / A.shape[1], floor)


def _complete(col_of: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Give the still unassigned rows the free columns in index order (a feasible permutation
    when the round budget ran out; never needed when the auction finished)."""
    B, n = col_of.shape
    free_row = col_of < 0
    free_col = owner < 0
    rank_row = torch.cumsum(free_row, dim=1) - 1
    # the k-th free column, as a (B, n) table indexed by rank (unused ranks point past the end)
    by_rank = torch.full((B, n + 1), n, dtype=torch.long, device=col_of.device)
    idx = torch.where(free_col, torch.cumsum(free_col, dim=1) - 1, n)
    by_rank.scatter_(1, idx, torch.arange(n, device=col_of.device).expand(B, n))
    fill = by_rank.gather(1, rank_row.clamp_min(0))
    return torch.where(free_row, fill, col_of)


def auction(A: torch.Tensor, eps_final: torch.Tensor, prices: torch.Tensor | None = None,
            prev: torch.Tensor | None = None, active: torch.Tensor | None = None,
            warm_phases: int = 1, bidders: int | None = None, max_rounds: int = 50_000,
            check_every: int = 8, read=bool):
    """Maximum-benefit assignment of B square problems by ε-scaling auction.

    Parameters
    ----------
    A : (B, n, n) float tensor
        Benefits; row i of problem b is assigned column cols[b, i], maximising Σ_i A[b, i, cols].
    eps_final : (B,) tensor
        Final ε per problem (see :func:`final_epsilon`): the result is within n·ε of the optimum.
    prices : (B, n) tensor, optional
        Column prices of a nearby problem (a warm start); without them the prices start at 0 and
        ε at 1/8 of the benefit's range.
    prev : (B, n) long tensor, optional
        A previous assignment: its edges that are ε-optimal at ``prices`` are kept.
    active : (B,) bool tensor, optional
        Only these problems are solved; the others keep their prices (their columns are any
        permutation).
    warm_phases : int
        With ``prices``, start ε at ``eps_final`` × 6^warm_phases.
    bidders : int, optional
        At most this many unassigned rows bid per round (default max(32, n / 8)), so that a round
        costs O(K n) per problem instead of O(n²): late in a phase few rows are unassigned.
    max_rounds, check_every : int
        Bidding rounds at most (then the unassigned rows get the free columns, see
        :func:`_complete`), and how often ``read`` is asked whether all problems are done.
    read : callable
        Turns a 0-d boolean tensor into a Python bool (the caller's counted host read).

    Returns
    -------
    cols : (B, n) long tensor, the permutations.
    prices : (B, n) float64 tensor, the final prices (to warm-start the next call).
    done : (B,) bool tensor, False where the round budget ran out (the bound n·ε then fails).
    """
    B, n, _ = A.shape
    # prices and bids in float64 whatever A's precision: ε can then go far below A's ulp, so the
    # assignment is as good on a float32 gradient as on a float64 one (only the K bidders' rows
    # are widened per round)
    dev, dt = A.device, torch.float64
    eps_final = eps_final.to(dt)
    ar = torch.arange(n, device=dev).expand(B, n)
    if prices is None:
        prices = torch.zeros(B, n, dtype=dt, device=dev)
        span = (A.amax(dim=(1, 2)) - A.amin(dim=(1, 2))).to(dt)
        eps = torch.maximum(_EPS_START * span, eps_final)
    else:
        prices = prices.to(dt, copy=True)
        eps = eps_final * _EPS_STEP ** warm_phases
    col_of = torch.full((B, n + 1), -1, dtype=torch.long, device=dev)  # slot n: a dump
    owner = torch.full((B, n + 1), -1, dtype=torch.long, device=dev)
    if prev is not None:
        V = A.to(dt) - prices[:, None, :]
        kept = V.gather(2, prev[:, :, None])[..., 0] >= V.amax(dim=2) - eps[:, None]
        col_of[:, :n] = torch.where(kept, prev, -1)
        owner.scatter_(1, torch.where(kept, prev, n), ar)
        owner[:, n] = -1
    done = torch.zeros(B, dtype=torch.bool, device=dev) if active is None else ~active
    K = min(n, bidders or max(32, n // 8))
    slots = torch.full((B, K + 1), n, dtype=torch.long, device=dev)  # slot K: a dump
    for r in range(max_rounds):
        if r % check_every == 0:
            # phases end only here, where one full pass over A finds the rows that a lower ε
            # makes loose; the other rounds touch the K bidders' rows only
            assigned = col_of[:, :n] >= 0
            full = assigned.all(dim=1)
            done |= full & (eps <= eps_final)
            step = full & ~done
            eps = torch.where(step, torch.maximum(eps / _EPS_STEP, eps_final), eps)
            V = A.to(dt) - prices[:, None, :]
            mine = V.gather(2, col_of[:, :n].clamp_min(0)[:, :, None])[..., 0]
            loose = assigned & step[:, None] & (mine < V.amax(dim=2) - eps[:, None])
            del V
            owner.scatter_(1, torch.where(loose, col_of[:, :n], n), -1)
            owner[:, n] = -1
            col_of[:, :n] = torch.where(loose, -1, col_of[:, :n])
            if read(done.all()):
                break
        # up to K unassigned rows bid this round (the first K in index order)
        bidding = (col_of[:, :n] < 0) & ~done[:, None]
        rank = torch.cumsum(bidding, dim=1) - 1
        rows = slots.fill_(n).scatter(1, torch.where(bidding & (rank < K), rank, K), ar)[:, :K]
        valid = rows < n
        rows = rows.clamp_max(n - 1)
        V = A.gather(1, rows[:, :, None].expand(-1, -1, n)).to(dt) - prices[:, None, :]
        v1, j1 = V.max(dim=2)  # two max passes: faster than topk(2) on CPUs, the same on GPUs
        v2 = V.scatter(2, j1[:, :, None], -torch.inf).amax(dim=2) if n > 1 else v1
        bid = torch.where(valid, prices.gather(1, j1) + (v1 - v2) + eps[:, None], -torch.inf)
        best = torch.full((B, n + 1), -torch.inf, dtype=dt, device=dev)
        best.scatter_reduce_(1, torch.where(valid, j1, n), bid, "amax")
        won = valid & (bid == best.gather(1, j1))
        winner = torch.full((B, n + 1), n, dtype=torch.long, device=dev)
        winner.scatter_reduce_(1, torch.where(won, j1, n), torch.where(won, rows, n), "amin")
        winner = winner[:, :n]
        got = winner < n
        # the previous owners of the columns that got a bid lose them
        col_of.scatter_(1, torch.where(got & (owner[:, :n] >= 0), owner[:, :n], n), -1)
        col_of.scatter_(1, torch.where(got, winner, n), ar)
        col_of[:, n] = -1
        owner[:, :n] = torch.where(got, winner, owner[:, :n])
        prices = torch.where(got, best[:, :n], prices)
    return _complete(col_of[:, :n], owner[:, :n]), prices, done


def round_plan(T: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Batched nearest-feasible rounding (Altschuler et al. 2017): (B, n, m) → row sums p, column
    sums q (up to float rounding), entries ≥ 0; shapes p (B, n), q (B, m)."""
    r = T.sum(2)
    T = T * torch.clamp(p / torch.where(r > 0, r, 1.0), max=1.0)[:, :, None]
    c = T.sum(1)
    T = T * torch.clamp(q / torch.where(c > 0, c, 1.0), max=1.0)[:, None, :]
    er, ec = (p - T.sum(2)).clamp_min(0), (q - T.sum(1)).clamp_min(0)
    s = er.sum(1).clamp_min(torch.finfo(T.dtype).tiny)
    return T + er[:, :, None] * ec[:, None, :] / s[:, None, None]


def sinkhorn(M: torch.Tensor, p: torch.Tensor, q: torch.Tensor, eps: torch.Tensor, iters: int,
             stages: int = 1, eps_start: torch.Tensor | None = None):
    """Log-domain Sinkhorn for min ⟨M, T⟩ + ε KL over couplings of (p, q), batched, with
    potentials in cost units (so ε can be annealed without rescaling them).

    Parameters
    ----------
    M : (B, n, m) costs; p (B, n), q (B, m) positive weights; eps (B,) final regularisation.
    iters : (row, column) sweeps per stage.
    stages, eps_start : ε goes geometrically from ``eps_start`` (B,) to ``eps`` over ``stages``
        stages (one stage at ``eps`` when ``eps_start`` is None).

    Returns
    -------
    T : (B, n, m) plan at the last ε (column sums exact, row sums approximate),
    g : (B, m) column potentials (cost units).
    """
    logp, logq = p.log(), q.log()
    f, g = torch.zeros_like(p), torch.zeros_like(q)
    for s in range(stages):
        e = eps if eps_start is None or stages == 1 else eps_start * (eps / eps_start) ** (s / (stages - 1))
        e = e[:, None]
        for _ in range(iters):
            f = e * (logp - torch.logsumexp((g[:, None, :] - M) / e[:, :, None], dim=2))
            g = e * (logq - torch.logsumexp((f[:, :, None] - M) / e[:, :, None], dim=1))
    return ((f[:, :, None] + g[:, None, :] - M) / e[:, :, None]).exp(), g


def transport_vertex(A: torch.Tensor, p: torch.Tensor, q: torch.Tensor, rel: float = 1e-3,
                     stages: int = 4, iters: int = 50) -> torch.Tensor:
    """An exactly feasible, near-maximal plan for ⟨A, S⟩ over couplings of (p, q), batched:
    Sinkhorn with ε annealed from 10 % to ``rel`` × range(A), then :func:`round_plan`.
    (B, n, m) → (B, n, m)."""
    span = (A.amax(dim=(1, 2)) - A.amin(dim=(1, 2))).clamp_min(torch.finfo(A.dtype).tiny)
    M = A.amax(dim=(1, 2), keepdim=True) - A
    T, _ = sinkhorn(M, p, q, rel * span, iters, stages, 0.1 * span)
    return round_plan(T, p, q)
