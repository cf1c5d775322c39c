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
from gwray.gw.solver import gromov_wasserstein

N = 96
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: hand-offs cost more than the work


def _pairs(costs, pairs):
    return np.stack([costs[i] for i, _ in pairs]), np.stack([costs[j] for _, j in pairs])


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
