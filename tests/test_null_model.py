"""gwray.graph.null_model: calibrated on drift-only matrices, powerful on blocks, k = 1 as an answer."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from gwray import find_subnetworks
from gwray.graph.build import check_distances
from gwray.graph.communities import METHODS, MIN_SAMPLES
from gwray.graph.null_model import (STEP_SD_GAIN, block_statistic, drift_basis, fit_drift,
                                    null_matrices, step_spread)
from gwray.models.toy import ResidualMLP

ALPHA = 0.05


def drift_matrix(L, shape, noise, seed, hetero=False):
    """Distances that depend smoothly on depth only, + symmetric Gaussian noise (relative to the
    mean distance, or to each distance when ``hetero``)."""
    rng = np.random.default_rng(seed)
    x = np.arange(L) / (L - 1)
    lag = np.abs(x[:, None] - x[None])
    h = {"linear": x, "concave": np.log1p(4 * x) / np.log(5), "convex": x**2}.get(shape)
    D = {"saturating": 1 - np.exp(-4 * lag), "sqrtlag": np.sqrt(lag),
         "flat": np.ones((L, L))}.get(shape, np.abs(h[:, None] - h[None]) if h is not None else None)
    N = rng.normal(size=(L, L))
    N = (N + N.T) / np.sqrt(2)
    D = np.abs(D + noise * (D if hetero else D[np.triu_indices(L, 1)].mean()) * N)
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    return D


def planted(labels, within=0.2, between=1.0, noise=0.5, seed=0, drift=0.0):
    lab = np.asarray(labels)
    x = np.arange(lab.size) / (lab.size - 1)
    D = np.where(lab[:, None] == lab[None, :], within, between) + drift * np.abs(x[:, None] - x[None])
    N = np.random.default_rng(seed).uniform(0, noise, D.shape)
    D = D + (N + N.T) / 2
    np.fill_diagonal(D, 0.0)
    return D


def max_false_positives(n: int) -> int:
    """The 99.9 % binomial quantile of rejections among n null cases at level ALPHA: a calibrated
    test exceeds it once in a thousand runs, a test with twice the level almost always."""
    from scipy.stats import binom

    return int(binom.ppf(0.999, n, ALPHA))


# -- calibration: drift without blocks is k = 1 (FPR <= alpha up to the binomial margin) --------

def test_drift_families_are_calibrated_for_contiguous():
    cases = [(L, shape, noise, het, seed) for L in (8, 16, 40) for shape in
             ("linear", "concave", "convex", "saturating", "sqrtlag", "flat")
             for noise, het in ((0.01, False), (0.1, True)) for seed in range(4 if L < 40 else 1)]
    # L = 64: the shapes the even-step null failed on (concave, saturating), ~1.7 s CPU each
    cases += [(64, shape, noise, het, 0) for shape in ("linear", "concave", "saturating")
              for noise, het in ((0.01, False), (0.1, True))]
    rejected = [c for c in cases if find_subnetworks(drift_matrix(*c[:3], c[4], c[3]), n_null=19,
                                                     seed=c[4]).k > 1]
    assert len(rejected) <= max_false_positives(len(cases)), rejected


@pytest.mark.parametrize("method", ["louvain", "greedy", "spectral"])
def test_drift_families_are_calibrated_for_graph_methods(method):
    cases = [(L, shape, noise, seed) for L in (8, 14) for shape in ("linear", "concave", "saturating")
             for noise in (0.02, 0.2) for seed in range(2)]
    rejected = [c for c in cases if find_subnetworks(drift_matrix(*c[:3], c[3]), method=method,
                                                     n_null=19, seed=c[3]).k > 1]
    assert len(rejected) <= max_false_positives(len(cases)), rejected


def _drift_net_layers(seed, depth=8, n=96):
    """A residual MLP whose every block is the same kind of small update: no groups by design.
    (n = 96: with 32 samples the GW solver's gaps reach 60 % and its local optima read as steps.)"""
    torch.manual_seed(seed)
    model = ResidualMLP(n_inputs=12, n_classes=2, width=12, depth=depth, hidden=48)
    with torch.no_grad():
        for block in model.blocks:
            block.fc2.weight.mul_(0.3)
        x = torch.as_tensor(np.random.default_rng(seed).normal(size=(n, 12)).astype(np.float32))
        return [h.numpy() for h in model.eval().hidden_states(x)]


@pytest.fixture(scope="module")
def drift_net_matrices():
    """GW matrices of 24 random residual nets (seeds 200-223: not the nets STEP_SD_GAIN was
    calibrated on, seeds 0-47)."""
    from gwray.gw.pairwise import pairwise_gw

    return [np.asarray(pairwise_gw(_drift_net_layers(s))) for s in range(200, 224)]


@pytest.mark.parametrize("method", ["contiguous", "spectral", "greedy", "louvain"])
def test_gw_matrices_of_drift_nets_are_calibrated_where_untested_methods_always_split(
        drift_net_matrices, method):
    """GW matrices of nets built without groups. Untested, every method splits them; tested,
    false positives stay within the binomial margin of alpha (an even-step null, the previous
    one, rejected 4-7 of these 24 per method: the bound is 5)."""
    mats = drift_net_matrices
    assert all(find_subnetworks(D, method=method, n_null=0).k > 1 for D in mats)
    found = [find_subnetworks(D, method=method, n_null=19, seed=s) for s, D in enumerate(mats)]
    rejected = [(s, r.test.p_value) for s, r in enumerate(found) if r.k > 1]
    assert len(rejected) <= max_false_positives(len(found)), rejected
    assert all(r.candidate is not None for r in found if r.k == 1)  # the split is kept aside


# -- power: blocks are still found --------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_planted_blocks_found_by_every_method(seed):
    lab = np.repeat([0, 1, 2], [4, 4, 4])
    D = planted(lab, seed=seed)
    for m in METHODS:
        r = find_subnetworks(D, method=m, seed=seed, n_null=39)
        assert r.significant, (m, r.k_reason)
        assert adjusted_rand_score(lab, r.labels) >= 0.95, m


@pytest.mark.parametrize("seed", range(3))
def test_blocks_with_drift_inside_are_found(seed):
    lab = np.repeat([0, 1, 2], [5, 6, 5])
    D = planted(lab, within=0.0, between=0.6, noise=0.2, drift=0.8, seed=seed)
    r = find_subnetworks(D, n_null=39, seed=seed)
    assert r.significant and adjusted_rand_score(lab, r.labels) >= 0.95, r.k_reason


# -- the contract ------------------------------------------------------------------------------

def test_given_k_is_answered_on_a_null_matrix_with_the_p_value():
    D = drift_matrix(12, "linear", 0.05, 0)
    r = find_subnetworks(D, k=3, n_null=19)
    assert r.k == 3 and r.test is not None and 0 < r.test.p_value <= 1
    assert r.k_reason.startswith("given k=3") and f"p = {r.test.p_value:.3g}" in r.k_reason
    d = r.to_dict()
    assert d["test"]["p_value"] == r.test.p_value and d["test"]["alpha"] == ALPHA
    assert d["significant"] is r.significant and len(d["boundaries"]) == 2


def test_k1_answer_keeps_the_candidate_and_says_why():
    D = drift_matrix(16, "linear", 0.01, 3)
    r = find_subnetworks(D, names=[f"l{i}" for i in range(16)], n_null=19)
    assert r.k == 1 and r.groups == [[f"l{i}" for i in range(16)]] and not r.significant
    assert "no significant block structure" in r.k_reason and r.test.p_value > ALPHA
    assert r.candidate.k >= 2 and r.candidate.test is r.test
    d = r.to_dict()
    assert d["boundaries"] == [] and d["candidate"]["k"] == r.candidate.k
    assert d["candidate"]["boundaries"][0]["after"].startswith("l")
    assert set(d["test"]) == {"statistic", "p_value", "alpha", "null", "n_null"}
    untested = find_subnetworks(D, n_null=0)  # the method's own partition, no test
    assert untested.k == r.candidate.k and untested.test is None


def test_too_few_samples_is_k1_with_the_reason():
    D = planted(np.repeat([0, 1], [4, 4]), noise=0.0)
    r = find_subnetworks(D, n_samples=3, n_null=19)
    assert r.k == 1 and "too few probe samples (3 < 16)" in r.k_reason and r.candidate.k == 2
    assert find_subnetworks(D, n_samples=MIN_SAMPLES, n_null=19).k == 2


def test_null_steps_are_even_for_a_clean_split_and_uneven_for_a_drift_net(drift_net_matrices):
    clean = planted(np.repeat([0, 1, 2, 3], [2, 3, 4, 3]), noise=0.0)
    assert step_spread(clean) == 0.0 and fit_drift(clean).step_sd == 0.0  # jumps are not spread
    assert step_spread(drift_matrix(16, "linear", 0.0, 0)) < 1e-9  # even steps
    spreads = [step_spread(D) for D in drift_net_matrices]
    assert min(spreads) > 0.02 and np.median(spreads) > 0.08, spreads
    # the null's layers sit at uneven depths: its neighbour distances vary like the net's and more
    D = drift_net_matrices[0]
    fit = fit_drift(D)
    assert fit.step_sd == pytest.approx(STEP_SD_GAIN * step_spread(D))
    M = next(null_matrices(fit, 1, np.random.default_rng(0)))
    assert M.shape == D.shape and np.allclose(M, M.T) and np.all(np.diag(M) == 0)
    assert step_spread(M) > step_spread(D)


def test_f_ratio_is_not_capped_by_the_blocks_it_explains():
    """The denominator is what is left after the blocks: a strong split scores far above
    (n - p) / m, the cap of a ratio over the drift residual."""
    lab = np.repeat([0, 1, 2, 3], 3)
    D, _ = check_distances(planted(lab, within=0.2, noise=0.4, seed=0))
    n, p = 66, drift_basis(12).shape[1]
    assert block_statistic(D, lab) > 5 * (n - p) / 6


def test_statistic_prefers_true_blocks_and_ignores_drift():
    lab = np.repeat([0, 1, 2], [5, 6, 5])
    D, _ = check_distances(planted(lab, noise=0.05, drift=1.0))
    assert block_statistic(D, lab) > 20 * block_statistic(D, np.repeat([0, 1], [8, 8]))
    flat, _ = check_distances(drift_matrix(16, "convex", 0.0, 0))
    assert block_statistic(flat, lab) == 0.0  # the drift basis holds a smooth drift exactly
    assert drift_basis(8).shape == (28, 7) and fit_drift(flat).residual.std() < 1e-8


@pytest.mark.parametrize("kwargs, match", [(dict(alpha=0.0), "alpha: must be in"),
                                           (dict(n_null=-1), "n_null: must be an integer")])
def test_bad_test_settings(kwargs, match):
    from gwray.errors import GwrayInputError

    with pytest.raises(GwrayInputError, match=match):
        find_subnetworks(planted([0, 0, 1, 1]), **kwargs)


# -- end to end: a drift net through the pipeline, the CLI's summary --------------------------

@pytest.mark.slow
def test_pipeline_on_a_drift_net_writes_k1_and_says_so(ray_local, tmp_path, capsys):
    import json

    from gwray.cli import main
    from gwray.models.toy import build_model, default_meta, save_toy

    # the net and probe of _drift_net_layers(0) (a null case whose test is not significant: this
    # checks what the pipeline writes and says; calibration is measured above)
    meta = default_meta("digits", depth=8, width=12, hidden=48, n_inputs=12, seed=0)
    model = build_model(meta)
    with torch.no_grad():
        for block in model.blocks:  # every block the same kind of small update: no groups
            block.fc2.weight.mul_(0.3)
    ckpt = save_toy(model, meta, tmp_path / "drift-net")
    np.save(tmp_path / "probe.npy", np.random.default_rng(0).normal(size=(96, 12)).astype(np.float32))
    cfg = {"name": "drift", "model": {"source": "toy", "path": str(ckpt)},
           "probe": {"source": str(tmp_path / "probe.npy"), "n_samples": 96},
           "resources": {"workers": 2, "batch_pairs": 8}}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "main (9 layers, contiguous): no significant sub-network structure (p = " in text
    assert f"run directory: {out}" in text and f"report: {out / 'report.html'}" in text
    comm = json.loads((out / "communities.json").read_text())
    res = comm["checkpoints"]["main"]["methods"]["contiguous"]
    assert res["k"] == 1 and res["significant"] is False and res["boundaries"] == []
    assert res["test"]["p_value"] > 0.05 and res["test"]["null"].startswith("depth drift")
    assert res["candidate"]["k"] >= 2 and comm["boundaries"]["main"] == []
    # stability is on by default for a run this small: candidate boundaries carry confidences
    st = comm["stability"]["main"]
    assert st["resamples"] == 5 and all(0 <= b["confidence"] <= 1 for b in res["candidate"]["boundaries"])
    low, high = np.array(st["gw_interval"]["low"]), np.array(st["gw_interval"]["high"])
    assert low.shape == (9, 9) and (low <= high + 1e-12).all()
    html = (out / "report.html").read_text()
    assert "no significant sub-network structure" in html and "Test of block structure" in html
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "-q", "--json"]) == 0  # a rerun
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoints"][0]["k"] == 1 and summary["report"] == str(out / "report.html")
    assert summary["checkpoints"][0]["candidate"]["boundaries"] == res["candidate"]["boundaries"]
