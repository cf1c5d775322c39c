"""Small versions of the paper experiments: planted structure is recovered, the job runs end to end."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gwray.models.toy import ResidualMLP

REPO = Path(__file__).resolve().parents[1]


def _planted(depth=8, switch=4, seed=0):
    """Blocks < ``switch`` and > ``switch`` nudge the stream slightly; block ``switch`` rewrites it.

    Two regimes of layers: embed .. blocks.{switch-1} and blocks.{switch} .. blocks.{depth-1}.
    """
    torch.manual_seed(seed)
    model = ResidualMLP(n_inputs=16, n_classes=2, width=16, depth=depth, hidden=64)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            if i == switch:
                block.fc1.weight.mul_(8.0)
                block.fc2.weight.normal_(0.0, 3.0)
            else:
                block.fc2.weight.mul_(0.05)
                block.fc2.bias.zero_()
    return model.eval()


def test_two_planted_regimes_give_two_groups():
    pairwise_gw = pytest.importorskip("gwray.gw.pairwise").pairwise_gw
    find_subnetworks = pytest.importorskip("gwray.graph.communities").find_subnetworks
    model = _planted()
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    with torch.no_grad():
        layers = [h.numpy() for h in model.hidden_states(x)]
    D = np.asarray(pairwise_gw(layers))
    names = model.layer_names
    result = find_subnetworks(D, method="contiguous", k="auto", names=names)
    assert result.groups == [names[:5], names[5:]]


def test_baselines_also_see_the_planted_switch():
    from gwray.gw.baselines import baseline_matrices

    model = _planted()
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32))
    with torch.no_grad():
        layers = [h.numpy() for h in model.hidden_states(x)]
    cka = baseline_matrices(layers, kinds=["cka"])["cka"]
    assert cka[0, 4] > 0.9 and cka[5, 8] > 0.9 and cka[4, 5] < cka[0, 4]


@pytest.mark.slow
def test_quick_experiments_job_writes_results(tmp_path):
    pytest.importorskip("gwray.gw.pairwise")
    pytest.importorskip("gwray.graph.communities")
    out = tmp_path / "paper"
    spec = importlib.util.spec_from_file_location("experiments", REPO / "jobs" / "experiments.py")
    experiments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiments)
    assert experiments.main(["--quick", "--out", str(out), "--only", "digits"]) == 0
    digits = json.loads((out / "results" / "digits.json").read_text())
    assert digits["test_accuracy"] > 0.8
    assert set(digits["matrices"]) == {"gw", "cka", "rsa", "identity"}
    curves = digits["compression"]
    assert {r["method"] for r in curves} == {"groups", "random", "bi", "angular"}
    base = [r["accuracy"] for r in curves if r["k"] == 0]
    assert len(set(base)) == 1 and base[0] == pytest.approx(digits["test_accuracy"])
    assert (out / "figures" / "digits_matrices.png").is_file()
    assert (out / "figures" / "digits_compression.png").is_file()
    assert "digits: test accuracy after dropping k blocks" in (out / "tables.md").read_text()
