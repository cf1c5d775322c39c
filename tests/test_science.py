"""Planted structure is recovered by GW groups and seen by the baselines (the control of docs/results.md)."""
import numpy as np
import pytest
import torch

from gwray.models.toy import planted_net


def test_two_planted_regimes_give_two_groups():
    pairwise_gw = pytest.importorskip("gwray.gw.pairwise").pairwise_gw
    find_subnetworks = pytest.importorskip("gwray.graph.communities").find_subnetworks
    model, _ = planted_net()
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    with torch.no_grad():
        layers = [h.numpy() for h in model.hidden_states(x)]
    D = np.asarray(pairwise_gw(layers))
    names = model.layer_names
    result = find_subnetworks(D, method="contiguous", k="auto", names=names)
    assert result.groups == [names[:5], names[5:]]


def test_baselines_also_see_the_planted_switch():
    from gwray.gw.baselines import baseline_matrices

    model, _ = planted_net()
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32))
    with torch.no_grad():
        layers = [h.numpy() for h in model.hidden_states(x)]
    cka = baseline_matrices(layers, kinds=["cka"])["cka"]
    assert cka[0, 4] > 0.9 and cka[5, 8] > 0.9 and cka[4, 5] < cka[0, 4]


def test_planted_structure_holds_across_seeds():
    """The demo's second net: its two regimes are found, significant, on every seed (small probe)."""
    from gwray.gw.pairwise import pairwise_gw
    from gwray.models.toy import planted_probe

    from gwray.graph.communities import find_subnetworks

    for seed in range(3):
        model, names = planted_net(seed)
        with torch.no_grad():
            layers = [h.numpy() for h in model.hidden_states(torch.as_tensor(planted_probe(64, seed=100 + seed)))]
        r = find_subnetworks(np.asarray(pairwise_gw(layers)), names=names, n_null=19)
        assert r.significant and r.groups == [names[:5], names[5:]]


def test_packaged_demo_probe_is_the_planted_probe():
    from pathlib import Path

    import gwray
    from gwray.cli import PLANTED_DEMO_CONFIG
    from gwray.models.toy import planted_probe

    path = Path(gwray.__file__).parent / "data" / "planted_probe.npy"
    assert PLANTED_DEMO_CONFIG["probe"]["source"] == str(path)
    assert np.array_equal(np.load(path), planted_probe(256, seed=0))
