"""The device engine's kernels one by one: the auction's ε-optimality (cold and warm), the
certified transport lower bound, the swap round and search against the serial local search, and
each Triton kernel against its host twin (on CUDA, or Triton's CPU interpreter)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gwray.gw import batched
from gwray.gw.costs import cost_matrix

N = 96
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: hand-offs cost more than the work


def _cg_gradients(C1, C2, steps=4):
    """A few consecutive CG gradients A = C1 T C2 of a real pair (the serial solver's path from
    the identity), float32 as the engine's search."""
    from gwray.gw.problem import Problem, cg

    C1, C2 = np.asarray(C1, dtype=np.float64), np.asarray(C2, dtype=np.float64)
    P = Problem(C1, C2, np.full(len(C1), 1 / len(C1)), np.full(len(C1), 1 / len(C1)))
    T, A, perm, out = np.eye(len(C1)) / len(C1), P.X1 @ P.X2 / len(C1), np.arange(len(C1)), []
    for _ in range(steps):
        out.append(A.copy())
        T, A, _, _, perm = cg(P, T, A, 1, 1e-9, perm=perm)
        if perm is None:
            break
    return np.stack(out).astype(np.float32)


def test_auction_within_n_eps_of_optimum_cold_and_warm(minilm_costs, toy_costs):
    """The linear step against scipy's exact assignment on random, tied, degenerate and real CG
    gradients (MiniLM and toy pairs), cold and warm-started from the previous problem's prices:
    a permutation every time, within n·ε of the optimum (its stated bound)."""
    from scipy.optimize import linear_sum_assignment

    from gwray.gw.device_assignment import auction, final_epsilon

    g = torch.Generator().manual_seed(0)
    A = torch.rand(4, N, N, generator=g)
    A[1] = (A[1] * 4).round()  # many ties
    A[2] = A[2][:, :1].expand(N, N) + A[2][:1, :]  # every assignment is optimal
    real = [_cg_gradients(minilm_costs[0], minilm_costs[6]), _cg_gradients(toy_costs[1], toy_costs[5])]
    steps = min(len(r) for r in real)
    seq = [torch.stack([A[0], A[1], A[2], A[3] + 0.05 * k, torch.from_numpy(real[0][k]),
                        torch.from_numpy(real[1][k])]) for k in range(steps)]
    seq.insert(1, seq[0] + 0.05 * torch.rand(seq[0].shape, generator=g))
    prices = cols = None
    for k, bench in enumerate(seq):
        eps = final_epsilon(bench, 1e-5)
        cols, prices, done, bids = auction(bench, 1e-5, prices, cols)
        assert bool(done.all()) and bool((bids > 0).all() if k == 0 else (bids >= 0).all())
        for b in range(bench.shape[0]):
            a = bench[b].double().numpy()
            r, c = linear_sum_assignment(a, maximize=True)
            got = a[np.arange(N), cols[b].numpy()].sum()
            assert np.array_equal(np.sort(cols[b].numpy()), np.arange(N))
            assert got >= a[r, c].sum() - N * float(eps[b]) * (1 + 1e-9), (k, b)


def test_certified_tlb_is_valid_for_any_potential_and_tight_for_sinkhorns(toy_costs):
    from gwray.gw import device_bounds
    from gwray.gw.bounds import tlb

    C1 = torch.from_numpy(np.stack([toy_costs[0], toy_costs[2]]))
    C2 = torch.from_numpy(np.stack([toy_costs[6], toy_costs[3]]))
    u = torch.full((2, N), 1.0 / N, dtype=torch.float64)
    lb = device_bounds.certified_tlb(C1, C2, u, u)
    exact = [tlb(C1[b].numpy(), C2[b].numpy()) for b in range(2)]
    for b in range(2):
        assert exact[b] * 0.995 <= float(lb[b]) <= exact[b] + 1e-12
    # a useless potential (Sinkhorn's replaced by noise) still gives a valid bound
    noisy = device_bounds.sinkhorn
    try:
        device_bounds.sinkhorn = lambda G, *a, **k: (None, torch.randn(G.shape[0], G.shape[2], dtype=G.dtype))
        bad = device_bounds.certified_tlb(C1, C2, u, u)
    finally:
        device_bounds.sinkhorn = noisy
    assert all(float(bad[b]) <= exact[b] + 1e-12 for b in range(2))


def _swap_case(n=40, seed=1):
    """Two pairs (costs with a diagonal, so every term of the gain formula counts) at random
    permutations, with W = C1 C2[σ][:, σ]."""
    from gwray.gw.device_local_search import permuted

    rng = np.random.default_rng(seed)
    C1 = np.stack([cost_matrix(rng.normal(size=(n, 3))) + np.diag(rng.uniform(size=n)) for _ in range(2)])
    C2 = np.stack([cost_matrix(rng.normal(size=(n, 4))) for _ in range(2)])
    cols = torch.stack([torch.from_numpy(rng.permutation(n)) for _ in range(2)])
    C2s = permuted(torch.from_numpy(C2), torch.arange(2), cols)
    return C1, C2, cols, C2s, torch.bmm(torch.from_numpy(C1), C2s)


def test_swap_round_matches_the_serial_search():
    """The device round's pieces against the serial search's: every position's best gain and
    partner, then the round (twin): the serial greedy disjoint swap set applied, Q updated by
    its exact gain (equal to two full float64 objectives)."""
    from gwray.gw.device_local_search import best_swaps, exact_q
    from gwray.gw.local_search import best_swaps as serial_best_swaps
    from gwray.gw.swap_twin import swap_round

    n = 40
    C1, C2, cols, C2s, W = _swap_case(n)
    gain, partner = torch.empty(2, n, dtype=W.dtype), torch.empty(2, n, dtype=torch.long)
    best_swaps(torch.from_numpy(C1), W, C2s, gain, partner)
    ia = torch.arange(2)
    Q = exact_q(torch.from_numpy(C1), torch.from_numpy(C2), ia, ia, cols)
    new, Q_new = cols.clone(), Q.clone()
    active, changed = np.ones(2, np.int32), np.zeros(2, np.int32)
    swap_round(gain.numpy(), partner.numpy(), n // 8, C1, C2, ia.numpy(), ia.numpy(),
               new.numpy(), Q_new.numpy(), active, changed)
    for b in range(2):
        part, g = serial_best_swaps(C1[b], W[b].numpy(), C2s[b].numpy())
        np.testing.assert_allclose(gain[b].numpy(), g, rtol=1e-12, atol=1e-12)
        used, src = np.zeros(n, bool), np.arange(n)  # the serial search's greedy set
        for i in np.argsort(-g, kind="stable")[: n // 8]:
            j = part[i]
            if g[i] > 1e-12 * abs(float(Q[b])) and not (used[i] or used[j]):
                used[i] = used[j] = True
                src[i], src[j] = j, i
        assert (src != np.arange(n)).sum() >= 2
        assert np.array_equal(new[b].numpy(), cols[b].numpy()[src]) and changed[b] == 1 and active[b] == 1
    full = exact_q(torch.from_numpy(C1), torch.from_numpy(C2), ia, ia, new)
    np.testing.assert_allclose(Q_new.numpy(), full.numpy(), rtol=1e-12)
    assert bool((Q_new > Q).all())


def test_swap_search_matches_the_serial_search_pair_by_pair():
    """The whole device search (rounds, pairs stopping at different rounds and leaving the batch)
    against the serial search run on each pair alone: the same final permutations; a pair not
    asked to search is left as it was."""
    from gwray.gw.device_cg import Pairs
    from gwray.gw.device_local_search import swap_search
    from gwray.gw.local_search import swap_search as serial

    rng, n, B = np.random.default_rng(3), 48, 12
    C = np.stack([cost_matrix(rng.normal(size=(n, 2 + k % 5))) for k in range(B + 1)])
    Ct = torch.from_numpy(C)
    ia, ib = torch.arange(B), torch.arange(1, B + 1)
    u = torch.full((B, n), 1.0 / n, dtype=torch.float64)
    P = Pairs(Ct.float(), Ct.float(), Ct, Ct, ia, ib, u, u, True, True, batched.host_read)
    start = torch.stack([torch.from_numpy(rng.permutation(n)) for _ in range(B)])
    active = torch.ones(B, dtype=torch.bool)
    active[4] = False
    for rounds in (5, 30):  # most pairs still moving at the end; most stopped before it
        cols, changed = swap_search(P, start, active, rounds)
        for b in range(B):
            want, moved, _ = serial(C[b].astype(np.float32), C[b + 1].astype(np.float32), start[b].numpy(), rounds)
            if b == 4:
                assert torch.equal(cols[b], start[b]) and not changed[b]
            else:
                assert np.array_equal(cols[b].numpy(), want) and bool(changed[b]) == moved, (rounds, b)



def _kernel_device():
    """CUDA with Triton; or Triton's CPU interpreter when run with TRITON_INTERPRET=1 (a way to
    check the kernels' semantics on a machine without a GPU); else the test skips."""
    import os

    pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA torch)")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    pytest.skip("no CUDA device on this machine (TRITON_INTERPRET=1 runs the kernels on the CPU)")


def test_kernels_equal_their_twins(toy_costs):
    """Each Triton kernel against its host twin on the same inputs: the auction bit for bit
    (permutations, prices, bids; cold, warm, out of bids), the swap round exactly (its moves; Q
    to float rounding), the best swaps to float rounding."""
    dev = _kernel_device()
    from gwray.gw import auction_kernel, swap_kernels, swap_twin
    from gwray.gw.auction_twin import auction_twin
    from gwray.gw.device_local_search import exact_q, permuted, swap_gains

    real = [_cg_gradients(toy_costs[0], toy_costs[6], 2), _cg_gradients(toy_costs[1], toy_costs[5], 2)]
    g = torch.Generator().manual_seed(0)
    A = torch.stack([torch.from_numpy(real[0][0]), torch.from_numpy(real[1][0]), torch.rand(N, N, generator=g),
                     (torch.rand(N, N, generator=g) * 4).round()])
    B = A.shape[0]
    prices, cols = torch.zeros(B, N, dtype=torch.float64), torch.full((B, N), -1, dtype=torch.int32)
    active = torch.tensor([1, 1, 1, 0], dtype=torch.int32)
    params = torch.tensor([1e-5, torch.finfo(torch.float32).tiny, 6.0], dtype=torch.float64)
    # cold, warm from the cold prices on nearby problems, and cold with too few bids (completion)
    for step, (warm, budget) in enumerate([(0, 10 ** 7), (1, 10 ** 7), (0, 2 * N)]):
        if step == 1:
            A = A + 0.01 * torch.rand(A.shape, generator=g)
        lo, hi = torch.aminmax(A.reshape(B, -1), dim=1)
        start = cols if step == 1 else torch.full((B, N), -1, dtype=torch.int32)
        twin = [prices.clone(), start.clone(), torch.zeros(B, dtype=torch.int64), torch.zeros(B, dtype=torch.int32)]
        kern = [t.clone().to(dev) for t in twin]
        flags = torch.full((B,), warm, dtype=torch.int32)
        auction_twin(A.numpy(), twin[0].numpy(), twin[1].numpy(), lo.numpy(), hi.numpy(), params.numpy(),
                     flags.numpy(), active.numpy(), 6.0, budget, twin[2].numpy(), twin[3].numpy())
        auction_kernel.auction_kernel(*(t.to(dev) for t in (A,)), *kern[:2],
                                      *(t.to(dev) for t in (lo, hi, params, flags, active)), 6.0, budget,
                                      *kern[2:], torch.empty(B, N, dtype=torch.int32, device=dev),
                                      torch.empty(B, N, dtype=torch.float64, device=dev))
        for t, k in zip(twin, kern):
            assert torch.equal(t, k.cpu()), step
        assert all(sorted(twin[1][b].tolist()) == list(range(N)) for b in range(3))
        assert twin[3][:3].tolist() == ([0, 0, 0] if step == 2 else [1, 1, 1])
        if step < 2:
            prices, cols = twin[0], twin[1]
    # the swap search's kernels: best swaps on real pairs at the permutations the auction found
    C1 = torch.stack([torch.as_tensor(np.asarray(c)) for c in (toy_costs[0], toy_costs[1])])
    C2 = torch.stack([torch.as_tensor(np.asarray(c)) for c in (toy_costs[6], toy_costs[5])])
    perm, ia = cols[:2].long(), torch.arange(2)
    C2s = permuted(C2, ia, perm).float()
    W = torch.bmm(C1.float(), C2s)
    gain, partner = torch.empty(2, N).to(dev), torch.empty(2, N, dtype=torch.long, device=dev)
    swap_kernels.best_swaps(*(t.contiguous().to(dev) for t in (C1.float(), W, C2s)), gain, partner)
    want, want_partner = swap_gains(C1.float(), W, C2s).max(dim=2)
    np.testing.assert_allclose(gain.cpu().numpy(), want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert (partner.cpu() == want_partner).float().mean() >= 0.95
    # the round, from the twin's gains, on a real pair and on a random one with diagonals
    C1r, C2r, cols_r, C2s_r, W_r = _swap_case(N)
    for c1, c2, cs, c2s, w in ((C1, C2, perm, C2s, W), (torch.from_numpy(C1r), torch.from_numpy(C2r), cols_r,
                                                         C2s_r.float(), torch.bmm(torch.from_numpy(C1r).float(), C2s_r.float()))):
        g, p = swap_gains(c1.float(), w, c2s).max(dim=2)
        Q = exact_q(c1, c2, ia, ia, cs)
        twin = [cs.clone(), Q.clone(), torch.ones(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32)]
        kern = [t.clone().to(dev) for t in twin]
        swap_twin.swap_round(g.numpy(), p.numpy(), N // 8, c1.numpy(), c2.numpy(), ia.numpy(),
                             ia.numpy(), *(t.numpy() for t in twin))
        swap_kernels.swap_round(*(t.to(dev) for t in (g, p)), N // 8,
                                *(t.to(dev) for t in (c1, c2, ia, ia)), *kern, torch.empty_like(kern[0]))
        assert torch.equal(twin[0], kern[0].cpu()) and torch.equal(twin[2], kern[2].cpu())
        assert torch.equal(twin[3], kern[3].cpu()) and bool(twin[3].any())
        np.testing.assert_allclose(kern[1].cpu().numpy(), twin[1].numpy(), rtol=1e-12)
    # the entropic start's log-domain Sinkhorn half-sweeps (n ≠ m, ranges far beyond exp's)
    from gwray.gw import sinkhorn_kernels

    rs = torch.Generator().manual_seed(1)
    E = (-torch.rand(3, N, N - 7, generator=rs) * 3000.0)
    lu, lv = torch.randn(3, N, generator=rs), torch.randn(3, N - 7, generator=rs)
    lp, lq = torch.full((3, N), -np.log(N)), torch.full((3, N - 7), -np.log(N - 7))
    for rows, other, lw, dim, shape in ((True, lv, lp, 2, (3, N)), (False, lu, lq, 1, (3, N - 7))):
        got = torch.empty(shape, device=dev)
        sinkhorn_kernels.half_sweep(E.to(dev), other.to(dev), lw.to(dev), got, rows)
        want = lw - torch.logsumexp(E + (other[:, None, :] if rows else other[:, :, None]), dim=dim)
        np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), rtol=1e-5, atol=1e-3)
    # the gather of C2[σ][:, σ] from a layer stack (n not a multiple of the tiles)
    out = torch.empty(2, N, N, dtype=torch.float64, device=dev)
    swap_kernels.permuted(C2.to(dev), ia.to(dev), perm.to(dev), out)
    assert torch.equal(out.cpu(), permuted(C2, ia, perm))
