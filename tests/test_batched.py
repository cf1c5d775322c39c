"""The device engine (batched_gw): agreement with the serial solver on real layer pairs, no host
solver, feasible plans, certified bounds, bounded device reads, float32 search with float64 values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import ot
import pytest
import torch

import gwray.gw.assignment
import gwray.gw.bounds
import gwray.gw.local_search
import gwray.gw.problem
import gwray.gw.solver
from gwray.errors import GwrayInputError
from gwray.gw import batched
from gwray.gw.batched import batched_gw, device_costs, plan_batch
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein

N = 96


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: on a loaded 2-core machine OpenMP hand-offs cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(costs, pairs):
    return np.stack([costs[i] for i, _ in pairs]), np.stack([costs[j] for _, j in pairs])


@pytest.fixture(scope="module")
def minilm_costs(minilm_dir):
    """Cost matrices of all 7 hidden states of the packaged all-MiniLM-L6-v2 on N sentences
    (mean-pooled over tokens)."""
    import transformers as tf

    text = (Path(batched.__file__).parents[1] / "data" / "english.txt").read_text().splitlines()
    tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
    model = tf.AutoModel.from_pretrained(minilm_dir).eval()
    enc = tok(text[:N], padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"][:, :, None].double()
    return [cost_matrix((h.double() * mask).sum(1) / mask.sum(1)) for h in states]


@pytest.fixture(scope="module")
def toy_costs():
    """Cost matrices of the 7 residual-stream layers of an untrained toy digits net on N images."""
    from gwray.models.toy import build_model, default_meta, task_data

    meta = default_meta("digits", depth=6)
    x = torch.as_tensor(task_data(meta)["x_test"][:N])
    with torch.no_grad():
        return [cost_matrix(h.double()) for h in build_model(meta).hidden_states(x)]


@pytest.fixture
def no_host_solver(monkeypatch):
    """Every host solver the engine must not call raises (POT's EMD, scipy's and our assignment,
    the serial CG, swap search and bound)."""
    import scipy.optimize

    def boom(*a, **k):
        raise AssertionError("a host solver was called")

    for mod, names in ((ot, ("emd", "emd2")), (ot.lp, ("emd", "emd2")),
                       (scipy.optimize, ("linear_sum_assignment",)),
                       (gwray.gw.assignment, ("linear_assignment", "_assign")),
                       (gwray.gw.solver, ("gromov_wasserstein",)),
                       (gwray.gw.problem, ("cg", "first_step_value")),
                       (gwray.gw.local_search, ("swap_search", "best_swaps")),
                       (gwray.gw.bounds, ("ot_value", "tlb", "w2_cost", "round_to_coupling",
                                          "eigen_bound"))):
        for name in names:
            monkeypatch.setattr(mod, name, boom)
    yield
    monkeypatch.undo()


def _check_against_serial(C1, C2, results, pot_subset=()):
    for b, r in enumerate(results):
        ref = gromov_wasserstein(C1[b], C2[b], aligned=True)
        assert r.value <= 1.01 * ref.value + 1e-12, (b, r.value, ref.value)
        assert 0.0 <= r.lower_bound <= r.value
        others = [v for k, v in r.start_values.items() if k != r.init]  # the serial solver's signal
        gap = (min(others) - r.value) / r.value if r.value > 0 else 0.0
        assert len(others) >= 3 and r.runner_up_gap == pytest.approx(gap)
        assert r.lower_bound >= 0.98 * gwray.gw.bounds.tlb(C1[b], C2[b]) - 1e-12  # near the TLB
        T = r.coupling
        n = T.shape[0]
        assert T.min() >= 0 and r.marginal_error <= 1e-12
        assert np.array_equal(np.sort(r.permutation), np.arange(n)) and r.permutation.dtype == np.int32
        assert np.all(T[np.arange(n), r.permutation] == 1.0 / n) and np.count_nonzero(T) == n
        # the reported value is the float64 objective of the returned plan
        assert r.value == pytest.approx(_dense_value(C1[b], C2[b], T), rel=1e-12, abs=1e-15)
        if b in pot_subset:
            pot = ot.gromov.gromov_wasserstein2(C1[b], C2[b], ot.unif(n), ot.unif(n), "square_loss")
            assert r.value <= pot + 1e-12


def test_minilm_pairs_agree_with_serial_without_host_solvers(minilm_costs, no_host_solver, monkeypatch):
    """All 21 layer pairs (adjacent = easy, far apart = hard) in one batch."""
    C1, C2 = _pairs(minilm_costs, [(i, j) for i in range(7) for j in range(i + 1, 7)])
    results = batched_gw(C1, C2)
    monkeypatch.undo()
    assert {r.solver for r in results} == {"batched-cg-lap"}
    _check_against_serial(C1, C2, results, pot_subset=(0, 5, 20))


def test_toy_and_minilm_mixed_batch_in_chunks(minilm_costs, toy_costs, no_host_solver, monkeypatch):
    """Toy-net pairs, MiniLM pairs and identical layers (GW = 0) mixed, split in chunks of 3."""
    C1 = np.stack([toy_costs[0], toy_costs[1], minilm_costs[2], toy_costs[3], toy_costs[0], minilm_costs[0]])
    C2 = np.stack([toy_costs[6], toy_costs[2], minilm_costs[2], toy_costs[4], toy_costs[0], minilm_costs[6]])
    results = batched_gw(C1, C2, batch_size=3)
    pruned = batched_gw(C1, C2, prune=1.0)  # the screen drops later starts that start above
    monkeypatch.undo()
    assert any(len(r.start_values) < 3 for r in pruned)
    assert all(r.value <= r.start_values["identity"] + 1e-15 and r.lower_bound <= r.value for r in pruned)
    assert results[2].value <= 1e-12 and results[4].value <= 1e-12
    _check_against_serial(C1, C2, results)


def _dense_value(C1, C2, T):
    p, q = T.sum(1), T.sum(0)
    return float(p @ C1**2 @ p + q @ C2**2 @ q - 2 * np.vdot(T, C1 @ T @ C2))


def test_weights_and_unequal_sizes_feasible_and_bounded(toy_costs, no_host_solver, monkeypatch):
    """Non-uniform weights (SLB) and n != m (TLB by Sinkhorn duals): exactly feasible plans, float64
    values of the returned plan, certified lower bounds, never above the product plan."""
    rng = np.random.default_rng(0)
    C1, C2 = _pairs(toy_costs, [(0, 3), (1, 6), (2, 4)])
    p = rng.uniform(0.5, 1.5, size=(3, N))
    p /= p.sum(1, keepdims=True)
    weighted = batched_gw(C1, C2, p=p, q=p)
    m = 64
    unequal = batched_gw(C1, C2[:, :m, :m], aligned=False)
    monkeypatch.undo()
    # the serial solver's random starts here are vertices of a transport polytope (an exact EMD
    # each), which the device engine does not run: compared with the serial solver without them
    named = ("identity", "mixed", "product", "entropic")
    for rs, qs, c2, aligned in ((weighted, p, C2, True), (unequal, np.full((3, m), 1 / m), C2[:, :m, :m], False)):
        for b, r in enumerate(rs):
            T = r.coupling
            assert r.solver == "batched-cg-sinkhorn" and r.marginal_error <= 1e-10
            assert np.abs(T.sum(0) - qs[b]).sum() <= 1e-10 and T.min() >= 0
            assert r.value == pytest.approx(_dense_value(C1[b], c2[b], T), rel=1e-10)
            assert 0 <= r.lower_bound <= r.value
            prod = np.outer(T.sum(1), T.sum(0))
            assert r.value <= _dense_value(C1[b], c2[b], prod) + 1e-12
            ref = gromov_wasserstein(C1[b], c2[b], T.sum(1), qs[b], aligned=aligned, starts=named)
            assert r.value <= 1.05 * ref.value + 1e-12, (b, r.value, ref.value)
            assert r.lower_bound <= ref.value + 1e-12


def test_starts_that_end_at_the_same_permutation_share_one_polish():
    """_twins: per problem (start s of pair b is s·B + b) the first start of the same pair that
    ended at the same permutation; only ends that are permutations count."""
    from gwray.gw.device_portfolio import _twins

    perm = torch.tensor([[0, 1, 2], [0, 1, 2], [1, 0, 2], [0, 1, 2], [2, 1, 0], [0, 1, 2]])  # K = 3, B = 2
    assert _twins(perm, torch.ones(6, dtype=torch.bool), 2).tolist() == [0, 1, 2, 1, 4, 1]
    ok = torch.tensor([True, False, True, True, True, True])
    assert _twins(perm, ok, 2).tolist() == [0, 1, 2, 3, 4, 3]


def test_the_benchs_model_counts_every_kind_of_work(toy_costs):
    """bench/gpu_model.py's Counters wrap the engine's kernels by their signatures: each kind of
    work it prices is counted on a real batch (a wrapper left behind by a changed kernel fails)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from gpu_model import Counters

    C1, C2 = _pairs(toy_costs, [(0, 4), (1, 5)])
    with Counters() as c:
        batched_gw(C1[:, :48, :48], C2[:, :48, :48], keep_coupling=False,
                   starts=("identity", "product", "entropic"))
    parts = c.parts()
    assert c.launches() and all(parts[k] > 0 for k in ("launches", "matmuls", "auction", "swap kernels",
                                                      "gather and Sinkhorn kernels", "spectra")), parts


def test_float32_search_float64_values(toy_costs, monkeypatch):
    """The matmuls of the search run in float32; the values equal a float64 search's."""
    C1, C2 = _pairs(toy_costs, [(0, 2), (1, 5)])
    seen = []
    bmm, baddbmm = torch.bmm, torch.baddbmm
    monkeypatch.setattr(torch, "bmm", lambda a, b, **k: seen.append(a.dtype) or bmm(a, b, **k))
    monkeypatch.setattr(torch, "baddbmm", lambda c, a, b, **k: seen.append(a.dtype) or baddbmm(c, a, b, **k))
    r32 = batched_gw(C1, C2, bound=False)
    monkeypatch.undo()
    assert seen and all(d == torch.float32 for d in seen)
    r64 = batched_gw(C1, C2, bound=False, dtype=torch.float64)
    for a, b in zip(r32, r64):
        assert isinstance(a.value, float)
        assert a.value == pytest.approx(b.value, rel=1e-3)


def test_device_reads_and_ops_go_through_the_counters_and_do_not_grow_with_the_batch(toy_costs, monkeypatch):
    """Every device read is the engine's counted one, and B copies of a pair cost no more reads
    and no more dispatched device operations than one (the loops work on the whole batch: a
    CG step is one auction launch and one matmul per start, whatever B)."""
    from gwray.gw import device_assignment

    C1, C2 = _pairs(toy_costs, [(0, 4)])
    raw, in_kernel = [], []
    for name in ("__bool__", "item", "tolist", "numpy"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=orig, **k: (in_kernel or raw.append(1)) and None
                            or _o(self, *a, **k))
    twin = device_assignment.host_arrays  # the kernels' host twins read their inputs (a launch on a GPU)
    monkeypatch.setattr(device_assignment, "host_arrays",
                        lambda *a: in_kernel.append(1) or [twin(*a), in_kernel.clear()][0])
    counts, ops = [], []
    for B in (1, 16):
        before = batched.HOST_READS["count"]
        raw.clear()
        r = batched_gw(np.repeat(C1, B, 0), np.repeat(C2, B, 0), keep_coupling=False)
        counts.append(batched.HOST_READS["count"] - before)
        ops.append(r[0].device_ops)
        assert len(raw) == counts[-1]  # no read outside host_read
        assert all(x.device_ops == ops[-1] for x in r) and all(x.linear_steps >= 2 for x in r)
    monkeypatch.undo()
    # (the entropic start's Sinkhorn checks take up to 6 of them per ε step, 35 steps)
    assert counts[0] == counts[1] and counts[0] < 400
    # torch's own indexing may take a view more or less for one row: a per-pair loop would be ×16
    assert ops[1] <= 1.01 * ops[0] and ops[0] < 15000, ops


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

    C1, C2 = (torch.from_numpy(c) for c in _pairs(toy_costs, [(0, 6), (2, 3)]))
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


def test_device_costs_and_memory_planner(toy_costs):
    from gwray.models.toy import build_model, default_meta, task_data

    meta = default_meta("digits", depth=6)
    x = torch.as_tensor(task_data(meta)["x_test"][:N])
    with torch.no_grad():
        states = build_model(meta).hidden_states(x)
    C = device_costs(states[:3], "cpu")
    assert C.shape == (3, N, N) and C.dtype == torch.float64
    np.testing.assert_allclose(C.numpy(), np.stack(toy_costs[:3]), rtol=1e-12)
    assert plan_batch(1024, 1024, "cpu", budget_bytes=10 << 30) > plan_batch(2048, 2048, "cpu", budget_bytes=10 << 30) >= 1
    assert plan_batch(4096, 4096, "cpu", budget_bytes=1) == 1


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(toy_costs):
    """The whole engine on CUDA (its kernels) against its CPU run (their twins)."""
    C1, C2 = _pairs(toy_costs, [(0, 3), (1, 5), (2, 6)])
    cpu = batched_gw(C1, C2)
    gpu = batched_gw(torch.from_numpy(C1).cuda(), torch.from_numpy(C2).cuda())
    for a, b in zip(cpu, gpu):
        assert b.value <= 1.01 * a.value + 1e-12 and b.lower_bound <= b.value
        assert b.device_ops == gpu[0].device_ops and b.linear_steps > 0


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((2, 4, 4)), np.zeros((3, 4, 4))), {}, "C2: shape"),
    ((np.zeros((4, 4)), np.zeros((4, 4))), {}, r"C1: expected shape \(B, n, n\)"),
    ((np.zeros((2, 4, 3)), np.zeros((2, 4, 3))), {}, r"C1: expected shape"),
    ((np.zeros((0, 4, 4)), np.zeros((0, 4, 4))), {}, "C1: empty"),
    ((np.full((1, 3, 3), np.nan), np.zeros((1, 3, 3))), {}, r"C1: non-finite .* pair 0, index \(0, 0\)"),
    ((np.zeros((2, 3, 3)), np.array([np.zeros((3, 3)), np.diag([0, 0, np.inf])])), {},
     r"C2: non-finite .* pair 1, index \(2, 2\)"),
    ((np.zeros((1, 3, 3)), np.triu(np.ones((1, 3, 3)))), {}, "C2: pair 0 is not symmetric"),
    ((np.zeros((2, 3, 3)), np.zeros((2, 3, 3))), {"p": np.ones((2, 4)) / 4}, r"p: expected shape \(2, 3\)"),
    ((np.zeros((2, 3, 3)), np.zeros((2, 3, 3))), {"q": np.ones(3) / 2}, "q: weights of pair 0 sum to 1.5"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"p": [[0.5, 0.5, np.nan]]}, "p: non-finite"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"p": [[0.5, 0.5, 0.0]], "aligned": False},
     "p: weights must be positive"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"p": [[0.5, 0.25, 0.25]]}, "aligned: .*p == q"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 4, 4))), {}, "aligned: .*n == m"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"tol": 0.0}, "tol: must be a positive"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"max_iter": -1}, "max_iter: must be an integer"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"batch_size": 0}, "batch_size: must be"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"prune": 0.5}, "prune: None or a number >= 1"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"dtype": torch.float16}, "dtype: "),
    ((np.zeros((1, 3, 3)), [[["a"]]]), {}, "C2: not a numeric array"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"device": "gpu7"}, "device: 'gpu7'"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"starts": ["annealed"]}, "starts: .annealed. is not one of"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"starts": ["random:0"]}, "starts: .random:0. is not"),
])
def test_bad_input_one_line_error(args, kwargs, match):
    with pytest.raises(GwrayInputError, match=match) as info:
        batched_gw(*args, **kwargs)
    assert "\n" not in str(info.value)
