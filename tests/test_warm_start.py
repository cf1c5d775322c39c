"""Warm starts: permutation starts in the solver, warm plans across checkpoints in the scheduler."""
import numpy as np
import ot
import pytest

from gwray.errors import GwrayInputError
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.starts import DEFAULT_STARTS


def _layers(n=48, seed=0, moved=0.0):
    """Two layers' costs; ``moved`` > 0: the same layers one checkpoint later (points moved)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    Y = np.tanh(X @ rng.normal(size=(6, 9))) + 0.3 * rng.normal(size=(n, 9))
    move = np.random.default_rng(seed + 1000)
    return (cost_matrix(X + moved * move.normal(size=X.shape)),
            cost_matrix(Y + moved * move.normal(size=Y.shape)))


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


def test_duals_replace_both_emds_and_the_bound_stays_exact(monkeypatch):
    """With a previous solve's duals, neither the first linear step nor the TLB runs an EMD, and
    the lower bound equals the cold solve's (the dual objective of an exact assignment)."""
    from gwray.gw.bounds import assignment_bound

    C1, C2 = _layers(n=64)
    before = gromov_wasserstein(C1, C2, aligned=True, starts=["identity", "product"])
    assert before.duals.shape == before.bound_duals.shape == (64,)
    D1, D2 = _layers(n=64, moved=0.02)
    cold = gromov_wasserstein(D1, D2, aligned=True, starts=["identity", "product"])
    assignment_bound(D1, np.zeros(64))  # compiled before the EMDs are refused

    def no_emd(*args, **kwargs):
        raise AssertionError("an EMD ran despite warm duals")

    monkeypatch.setattr(ot, "emd", no_emd)
    monkeypatch.setattr(ot, "emd2", no_emd)
    warm = gromov_wasserstein(D1, D2, aligned=True, starts=[before.permutation, "identity"],
                              duals=before.duals, bound_duals=before.bound_duals)
    assert warm.lower_bound == pytest.approx(cold.lower_bound, rel=1e-9)
    assert warm.lower_bound <= warm.value and list(warm.start_values) == ["given", "identity"]
    with pytest.raises(AssertionError, match="EMD"):  # no duals: the EMD runs (and is refused)
        gromov_wasserstein(D1, D2, aligned=True, starts=["identity"])
    with pytest.raises(GwrayInputError, match="duals must be"):
        gromov_wasserstein(D1, D2, duals=np.zeros(3))


def test_pruning_rule_skips_far_starts_until_the_pair_drifts():
    from gwray.gw.warm import POLISH_GAIN, WarmState, warm_gw

    C1, C2 = _layers(n=48, seed=4)
    first, state, skipped = warm_gw(C1, C2, None, aligned=True, starts=["identity", "product"])
    assert skipped == 0 and set(state.start_ends) == {"identity", "product"}
    assert min(state.start_ends.values()) == pytest.approx(1.0) and state.value == first.value
    # product ended far above the best: skipped; the layers did not move, so it stays skipped
    far = WarmState(state.plan, state.duals, state.bound_duals, {"identity": 1.0, "product": 1.5},
                    first.value)
    r, again, skipped = warm_gw(C1, C2, far, aligned=True, starts=["identity", "product"], keep=1.03)
    assert skipped == 1 and "product" not in r.start_values and r.value <= first.value * (1 + 1e-9)
    assert again.start_ends["product"] == pytest.approx(1.5)
    assert again.start_ends["identity"] == pytest.approx(r.start_values["identity"] / r.value)
    # the pair moved by 10 % under the plan: the product's gap closes by drift x 10 % per step
    moved = WarmState(state.plan, None, None, {"identity": 1.0, "product": 1.5}, first.value / 1.1)
    _, after, skipped = warm_gw(C1, C2, moved, aligned=True, starts=["identity", "product"],
                                keep=1.03, drift=3.0)
    assert skipped == 1 and after.start_ends["product"] == pytest.approx(1.5 - 3.0 * 0.1)
    after.value = after.value / 1.1  # and again: 1.2 - 0.3 <= keep, so the product runs
    r, last, skipped = warm_gw(C1, C2, after, aligned=True, starts=["identity", "product"],
                               keep=1.03, drift=3.0, polish=1)
    assert skipped == 0 and "product" in r.start_values
    # with polish=1 (the warm plan's end and the best CG end) its end was not polished:
    # credited the most a swap search gains
    assert "product" not in r.polished and "identity" in r.polished
    assert last.start_ends["product"] == pytest.approx(
        r.start_values["product"] / POLISH_GAIN / r.value)
    # by default every end is polished: the product's ratio is its polished end's
    r, last, _ = warm_gw(C1, C2, after, aligned=True, starts=["identity", "product"], keep=1.03,
                         drift=3.0)
    assert "product" in r.polished
    assert last.start_ends["product"] == pytest.approx(r.start_values["product"] / r.value)


def test_duals_are_dropped_once_the_pair_drifted_far(monkeypatch):
    import gwray.gw.warm as warm

    C1, C2 = _layers(n=32, seed=5)
    _, state, _ = warm.warm_gw(C1, C2, None, aligned=True, starts=["identity"])
    given = []
    solve = warm.gromov_wasserstein
    monkeypatch.setattr(warm, "gromov_wasserstein",
                        lambda *a, **k: given.append(k["duals"] is not None) or solve(*a, **k))
    warm.warm_gw(C1, C2, state, aligned=True, starts=["identity"])  # no drift: duals used
    state.value /= 1 + 2 * warm.DUALS_WITHIN  # the pair moved further than DUALS_WITHIN
    warm.warm_gw(C1, C2, state, aligned=True, starts=["identity"])
    assert given == [True, False]


def test_warm_state_round_trips_through_pairs(tmp_path):
    from gwray.gw.warm import WarmState
    from gwray.scheduler.results import load_records, load_states, write_records

    key = {"checkpoint_a": "s1", "layer_a": "a", "checkpoint_b": "s1", "layer_b": "b"}
    rec = {**key, "gw": 0.25, "lower_bound": 0.1, "init": "warm", "iterations": 3,
           "marginal_error": 0.0, "seconds": 0.1, "n": 4, "solver": "cg-lap"}
    state = WarmState(np.array([2, 0, 3, 1], np.int32), np.array([0.5, -1.0, 1e-300, 3.0]),
                      np.array([1.0, 2.0, 3.0, 4.0]), {"identity": 1.0, "product": 1.25}, 0.25)
    write_records(tmp_path, [{**rec, "plan": state.plan, "duals": state.duals,
                              "bound_duals": state.bound_duals, "start_ends": state.start_ends},
                             {**rec, "layer_b": "c"}])  # a pair without a plan (not a permutation)
    loaded = load_states(tmp_path, {tuple(key.values()), ("s1", "a", "s1", "c")})
    assert list(loaded) == [tuple(key.values())]
    got = loaded[tuple(key.values())]
    for f in ("plan", "duals", "bound_duals"):
        np.testing.assert_array_equal(getattr(got, f), getattr(state, f))
    assert got.plan.dtype == np.int32 and got.start_ends == state.start_ends and got.value == 0.25
    assert load_records(tmp_path).num_rows == 2


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
    from gwray.scheduler.results import load_states

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
    assert meta["starts_pruned"] > 0  # the rule skipped configured starts that ended far above
    cold_meta = {k.decode(): float(v) for k, v in cold.schema.metadata.items()}
    assert cold_meta["warm_starts"] == 0 and "warm" not in cold.column("init").to_pylist()
    assert cold_meta["starts_pruned"] == 0
    states = load_states(root / "warm", set(w))
    assert len(states) == len(w)
    for key, st in states.items():
        assert sorted(st.plan.tolist()) == list(range(N)) and st.value == w[key]
        assert st.duals.shape == st.bound_duals.shape == (N,)
        assert set(st.start_ends) <= set(DEFAULT_STARTS) and st.start_ends
    assert not load_states(root / "cold", set(c))  # no state columns without warm starts


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
