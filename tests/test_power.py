"""What a k = 1 answer could have seen: the smallest boundary jump the test detects on the observed
matrix, and how the summary and the report word a rejected candidate."""
import numpy as np
import pytest

from gwray import find_subnetworks
from gwray.graph.power import detectable_jump
from gwray.report.summary import format_summary, headline, power_sentence
from test_null_model import drift_matrix, planted

SPLIT = np.repeat([0, 1], [5, 5])


def test_drift_without_blocks_needs_a_finite_jump():
    D = drift_matrix(10, "concave", 0.1, seed=2)
    assert not find_subnetworks(D, n_null=19).significant  # nothing to find in drift alone
    pw = detectable_jump(D, SPLIT, n_null=19)
    assert pw["jump"] is not None and pw["jump"] > 0.5 and pw["boundaries"] == [4]
    assert pw["unit"] == pytest.approx(np.median(np.diag(D, 1)))
    assert pw["tried"][-1] == pw["jump"] and pw["tried"] == sorted(pw["tried"])
    # the planted jump it reports is really detected, the one below is not
    cross = SPLIT[:, None] != SPLIT[None, :]
    assert find_subnetworks(D + pw["jump"] * pw["unit"] * cross, n_null=19).significant
    below = pw["tried"][-2]
    assert not find_subnetworks(D + below * pw["unit"] * cross, n_null=19).significant


def test_more_noise_needs_a_larger_jump():
    quiet = detectable_jump(drift_matrix(10, "concave", 0.05, seed=3), SPLIT, n_null=19)["jump"]
    noisy = detectable_jump(drift_matrix(10, "concave", 0.3, seed=3), SPLIT, n_null=19)["jump"]
    assert quiet is not None and (noisy is None or noisy > quiet)


def test_structure_already_there_is_detected_at_the_smallest_jump():
    lab = np.repeat([0, 1, 2], 4)
    pw = detectable_jump(planted(lab, noise=0.05), lab, n_null=19)
    assert pw["jump"] == 0.5 and pw["tried"] == [0.5]


def test_too_shallow_to_test():
    D = drift_matrix(3, "linear", 0.01, seed=0)
    assert detectable_jump(D, n_null=19) | {"unit": None} == {
        "jump": None, "unit": None, "boundaries": [0], "tried": [], "alpha": 0.05, "n_null": 19, "method": "contiguous"}


def _entry(k, power=None, candidate=True):
    names = [f"l{i}" for i in range(7)]
    res = {"k": k, "names": names, "groups": [names] if k == 1 else [names[:3], names[3:]],
           "k_reason": "auto", "test": {"p_value": 0.24, "alpha": 0.05}, "significant": k > 1,
           "boundaries": [] if k == 1 else [{"after": "l2", "index": 2, "confidence": 1.0}],
           "candidate": {"k": 4, "groups": [names[:2], names[2:4], names[4:5], names[5:]], "labels": [0, 0, 1, 1, 2, 3, 3],
                         "boundaries": [{"after": "l1", "index": 1, "confidence": 1.0}]} if candidate else None}
    if power is not None:
        res["power"] = power
    return res


def test_power_sentence_says_what_the_test_could_have_seen():
    pw = {"jump": 3.0, "unit": 0.002, "tried": [0.5, 1, 2, 3], "alpha": 0.05}
    text = power_sentence(_entry(1, pw))
    assert "≥ 3× the median layer-to-layer distance (0.006)" in text and "7 layers" in text
    weak = power_sentence(_entry(1, {"jump": None, "unit": 0.002, "tried": [0.5, 20.0], "alpha": 0.05}))
    assert "little power" in weak and "20×" in weak
    assert power_sentence(_entry(2, pw)) == "" and power_sentence(_entry(1)) == ""
    assert headline(_entry(1, pw)).startswith("no significant sub-network structure (p = 0.24")
    summary = {"run_directory": "r", "report": None, "method": "contiguous", "checkpoints": [
        {"id": "main", "layers": 7, "k": 1, "headline": "h", "groups": [], "power": text,
         "solver": {"pairs": 0}}]}
    assert f"  {text}" in format_summary(summary).splitlines()


def test_stability_section_names_the_rejected_candidate():
    from gwray.report.html import _stability

    st = {"resamples": 5, "fraction": 0.8, "n_rows": 400, "mean_ari": 1.0, "min_ari": 1.0}
    rejected = _stability(st, _entry(1))
    assert "rejected candidate" in rejected and "4 groups" in rejected and "not whether the cuts are real" in rejected
    found = _stability(st, _entry(2, candidate=False))
    assert "the grouping matched the full-data one" in found and "rejected" not in found
