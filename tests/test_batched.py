"""The batched torch GW path: agreement with serial CG, feasibility, bounds, devices, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.gw.batched import _prox_loop, batched_gw
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein

N = 64


def deep_net_pairs(n=N, depth=5, seed=0):
    """(C1, C2) of shape (B, n, n): all layer pairs of a random residual tanh MLP on shared inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    costs = [cost_matrix(x)]
    for _ in range(depth):
        x = x + np.tanh(x @ rng.normal(size=(16, 16)) * (2.0 / 4.0))
        costs.append(cost_matrix(x))
    pairs = [(i, j) for i in range(len(costs)) for j in range(i + 1, len(costs))]
    return np.stack([costs[i] for i, _ in pairs]), np.stack([costs[j] for _, j in pairs])


def random_pairs(B=4, n=N, seed=1):
    """Random aligned clouds: Y is a random linear map of X plus noise of growing size."""
    rng = np.random.default_rng(seed)
    C1, C2 = [], []
    for b in range(B):
        X = rng.normal(size=(n, 3 + b))
        Y = X @ rng.normal(size=(X.shape[1], 6)) + (0.2 + 0.3 * b) * rng.normal(size=(n, 6))
        C1.append(cost_matrix(X))
        C2.append(cost_matrix(Y))
    return np.stack(C1), np.stack(C2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: on a loaded 2-core machine OpenMP's thread hand-offs cost more
    than the work (logsumexp on 16k entries: 0.3 ms with 1 thread, up to 17 ms with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def deep():
    C1, C2 = deep_net_pairs()
    return C1, C2, batched_gw(C1, C2)


def assert_agrees(C1, C2, results, p=None):
    """Every pair within 1 % of serial CG with default starts (aligned=True)."""
    for b, r in enumerate(results):
        pb = None if p is None else p[b]
        ref = gromov_wasserstein(C1[b], C2[b], pb, pb, aligned=True)
        assert abs(r.value - ref.value) <= 0.01 * ref.value + 1e-12, (b, r.value, ref.value)


def test_agrees_with_cg_on_deep_net_layers(deep):
    C1, C2, results = deep
    assert len(results) == C1.shape[0] == 15
    assert_agrees(C1, C2, results)


def test_agrees_with_cg_on_random_clouds_and_weights():
    C1, C2 = random_pairs()
    assert_agrees(C1, C2, batched_gw(C1, C2))
    p = np.random.default_rng(3).uniform(0.5, 1.5, size=(C1.shape[0], N))
    p /= p.sum(axis=1, keepdims=True)
    results = batched_gw(C1, C2, p=p, q=p)
    assert_agrees(C1, C2, results, p=p)
    assert all(r.solver == "batched-prox+cg-emd" for r in results)


def test_unaligned_start_from_product():
    C1, C2 = random_pairs(B=2, seed=4)
    results = batched_gw(C1, C2, aligned=False)
    assert {r.init for r in results} == {"batched-product"}
    for b, r in enumerate(results):  # a CG local minimum from its own start: never above product
        product = gromov_wasserstein(C1[b], C2[b], starts=["product"], max_iter=0)
        assert r.value <= product.value + 1e-12


def test_plans_feasible_and_bounded(deep):
    _, _, results = deep
    for r in results:
        T = r.coupling
        assert T.shape == (N, N) and T.min() >= 0
        assert np.abs(T.sum(1) - 1 / N).sum() <= 1e-8 and np.abs(T.sum(0) - 1 / N).sum() <= 1e-8
        assert r.marginal_error <= 1e-8
        assert 0.0 <= r.lower_bound <= r.value
        assert r.init in ("batched-identity", "batched-product")
        assert r.solver.startswith("batched-prox+") and set(r.start_values) == {
            "batched-identity", "batched-product"} and r.value == min(r.start_values.values())
        assert r.iterations >= 1 and r.seconds > 0
        rec = r.record()
        assert rec["gw"] == r.value and rec["n"] == N


def test_identical_layers_give_zero():
    C, _ = deep_net_pairs(depth=2)
    results = batched_gw(C, C, keep_coupling=False)
    assert all(r.value <= 1e-12 and r.coupling is None for r in results)


def test_torch_input_and_float32_match_numpy(deep):
    C1, C2, ref = deep
    C1, C2 = C1[:3], C2[:3]
    from_torch = batched_gw(torch.from_numpy(C1), torch.from_numpy(C2))
    single = batched_gw(C1, C2, dtype=torch.float32)
    for a, b, c in zip(ref, from_torch, single):
        assert b.value == pytest.approx(a.value, rel=1e-9)
        assert c.value == pytest.approx(a.value, rel=1e-2) and c.marginal_error <= 1e-8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(deep):
    C1, C2, ref = deep
    gpu = batched_gw(torch.from_numpy(C1[:3]).cuda(), torch.from_numpy(C2[:3]).cuda())
    for a, b in zip(ref, gpu):
        assert b.value == pytest.approx(a.value, rel=1e-6)


def test_loop_reads_device_only_at_checks(monkeypatch):
    """At most one boolean read every ``check_every`` iterations; no .item()/.cpu()/.tolist()."""
    C1, C2 = (torch.from_numpy(c[:2]) for c in deep_net_pairs(n=16, depth=2))
    p = torch.full((1, 16), 1 / 16, dtype=torch.float64).expand(2, -1)
    reads = []
    for name in ("__bool__", "item", "cpu", "tolist", "numpy"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=orig, _n=name, **k: reads.append(_n) or _o(self, *a, **k))
    T0 = (p.unsqueeze(2) * p.unsqueeze(1)).log()
    _, iters = _prox_loop(C1, C2, p, p, T0, 1.0, 30, 3, 10, 1e-30)
    monkeypatch.undo()
    assert reads == ["__bool__"] * 3 and iters.tolist() == [30, 30]


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((2, 4, 4)), np.zeros((2, 5, 5))), {}, "C2: shape"),
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
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"epsilon": 0.0}, "epsilon: must be a positive"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"max_iter": 0}, "max_iter: must be a positive"),
    ((np.zeros((1, 3, 3)), [[["a"]]]), {}, "C2: not a numeric array"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"device": "gpu7"}, "device: 'gpu7'"),
    ((np.zeros((1, 3, 3)), np.zeros((1, 3, 3))), {"starts": ["random:3"]}, "starts: "),
])
def test_bad_input_one_line_error(args, kwargs, match):
    with pytest.raises(GwrayInputError, match=match) as info:
        batched_gw(*args, **kwargs)
    assert "\n" not in str(info.value)
