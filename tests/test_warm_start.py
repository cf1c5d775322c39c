"""Warm starts: permutation starts in the solver, warm plans across checkpoints in the scheduler."""
import numpy as np
import ot
import pytest

from gwray.errors import GwrayInputError
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein


def _layers(n=48, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    Y = np.tanh(X @ rng.normal(size=(6, 9))) + 0.3 * rng.normal(size=(n, 9))
    return cost_matrix(X), cost_matrix(Y)


def test_permutation_result_restarts_at_its_own_value():
    C1, C2 = _layers()
    r = gromov_wasserstein(C1, C2, aligned=True)
    assert r.permutation is not None and r.permutation.dtype == np.int32
    T = np.zeros((len(C1), len(C1)))
    T[np.arange(len(C1)), r.permutation] = 1.0 / len(C1)
    assert np.allclose(T, r.coupling)
    p = np.full(len(C1), 1.0 / len(C1))
    assert r.value == pytest.approx(ot.gromov.gwloss(*ot.gromov.init_matrix(C1, C2, p, p)[:3], T))
    again = gromov_wasserstein(C1, C2, starts=[r.permutation])
    assert again.init == "given" and again.value <= r.value * (1 + 1e-12)


def test_permutation_start_matches_its_dense_plan():
    C1, C2 = _layers(seed=1)
    sigma = np.random.default_rng(3).permutation(len(C1))
    T = np.zeros((len(C1), len(C1)))
    T[np.arange(len(C1)), sigma] = 1.0 / len(C1)
    a = gromov_wasserstein(C1, C2, starts=[sigma], swap_rounds=0, max_iter=0)
    b = gromov_wasserstein(C1, C2, starts=[T], swap_rounds=0, max_iter=0)
    assert a.value == pytest.approx(b.value, rel=1e-12)
    assert np.array_equal(a.permutation, sigma)


@pytest.mark.parametrize("bad", [np.zeros(48, int), np.arange(47), np.arange(48.0)])
def test_bad_permutation_start_is_an_input_error(bad):
    C1, C2 = _layers()
    with pytest.raises(GwrayInputError, match="permutation"):
        gromov_wasserstein(C1, C2, starts=[bad])


# -- warm starts across the checkpoints of a sweep (run_pairs on the embedded Ray) ----------------

N, LAYERS, STEPS = 16, 3, 3


def _training_run(root, steps=STEPS, layers=LAYERS, n=N, move=0.01, seed=0):
    """Activations of a "training run": every checkpoint's weights move a little from the last."""
    from gwray.activations.store import ActivationWriter

    rng = np.random.default_rng(seed)
    base, weights = rng.normal(size=(n, 6)), [rng.normal(size=(6, 6)) for _ in range(layers)]
    names = [f"block{i}" for i in range(layers)]
    for k in range(steps):
        writer, X = ActivationWriter(root, f"step-{k}", names), base
        for i, name in enumerate(names):
            weights[i] = weights[i] + move * rng.normal(size=(6, 6))
            X = np.tanh(X @ weights[i])
            writer.write(name, np.arange(n), X)
        writer.commit({})


def _cfg(warm: bool):
    from gwray.config import load_config

    return load_config({"resources": {"workers": 2, "batch_pairs": 4},
                        "compare": {"cross": "consecutive"}, "gw": {"warm_start": warm}})


def _values(table):
    from gwray.scheduler.results import row_keys

    return dict(zip(row_keys(table), table.column("gw").to_pylist()))


@pytest.fixture(scope="module")
def sweeps(ray_local, tmp_path_factory):
    from gwray.activations.store import ActivationStore
    from gwray.scheduler import run_pairs

    root = tmp_path_factory.mktemp("sweep")
    _training_run(root / "acts")
    store = ActivationStore(root / "acts")
    warm = run_pairs(_cfg(True), store, root / "warm", progress=False)
    cold = run_pairs(_cfg(False), store, root / "cold", progress=False)
    return root, store, warm, cold


def test_warm_and_cold_sweeps_agree_and_plans_are_reused(sweeps):
    from gwray.scheduler import plan_for
    from gwray.scheduler.plan import warm_sources
    from gwray.scheduler.results import load_plans

    root, store, warm, cold = sweeps
    w, c = _values(warm), _values(cold)
    within = LAYERS * (LAYERS - 1) // 2
    assert set(w) == set(c) and len(w) == STEPS * within + (STEPS - 1) * LAYERS ** 2
    for key, value in w.items():  # the cold starts run unchanged first: never above cold
        assert value <= c[key] * (1 + 1e-3), key  # (float32 search: runs may differ by ~1e-7)
    meta = {k.decode(): float(v) for k, v in warm.schema.metadata.items()}
    sources = warm_sources(plan_for(store, "consecutive"))
    # every pair but the first checkpoint's and the first cross pairs of a layer with itself
    assert meta["warm_starts"] == len(sources) == (STEPS - 1) * (within + LAYERS ** 2) - LAYERS
    assert meta["warm_won"] > 0  # plans of the previous checkpoint won some pairs
    assert sum(i == "warm" for i in warm.column("init").to_pylist()) == meta["warm_won"]
    cold_meta = {k.decode(): float(v) for k, v in cold.schema.metadata.items()}
    assert cold_meta["warm_starts"] == 0 and "warm" not in cold.column("init").to_pylist()
    plans = load_plans(root / "warm", set(w))
    assert len(plans) == len(w) and all(sorted(p.tolist()) == list(range(N)) for p in plans.values())
    assert not load_plans(root / "cold", set(c))  # no plan columns without warm starts


def test_resume_after_a_kill_mid_sweep_gives_the_same_matrices(sweeps, tmp_path):
    import shutil

    from gwray.scheduler import run_pairs

    root, store, warm, _ = sweeps
    out = tmp_path / "resumed"
    shutil.copytree(root / "warm", out)
    files = sorted((out / "pairs").glob("*.parquet"), key=lambda f: f.stat().st_mtime_ns)
    for f in files[len(files) // 3:]:  # the driver died after a third of the batch files
        f.unlink()
    kept = sum(__import__("pyarrow.parquet").parquet.read_table(f).num_rows for f in files[:len(files) // 3])
    again = run_pairs(_cfg(True), store, out, progress=False)
    meta = {k.decode(): float(v) for k, v in again.schema.metadata.items()}
    assert meta["resumed"] == kept and meta["solved"] == warm.num_rows - kept
    assert meta["warm_starts"] > 0  # plans of the pairs kept on disk start their successors
    assert _values(again) == _values(warm)
    np.testing.assert_array_equal(np.load(out / "gw_matrix.npy"), np.load(root / "warm" / "gw_matrix.npy"))


def test_warm_sources_follow_training_order():
    from gwray.scheduler.plan import plan_pairs, warm_sources

    plan = plan_pairs({"s0": ["a", "b"], "s1": ["a", "b"], "s2": ["a", "b", "c"]}, "consecutive")
    order = {t.key: k for k, t in enumerate(plan)}
    src = warm_sources(plan)
    assert src[("s1", "a", "s1", "b")] == (("s0", "a", "s0", "b"), False)
    assert src[("s0", "b", "s1", "a")] == (("s0", "a", "s0", "b"), True)  # transposed within pair
    assert ("s0", "a", "s1", "a") not in src  # a layer with itself: the identity start is there
    assert src[("s1", "b", "s2", "a")] == (("s0", "b", "s1", "a"), False)
    assert ("s2", "a", "s2", "c") not in src  # layer c is new at s2
    assert all(order[s] < order[k] for k, (s, _) in src.items())
