"""Layer dropping: exact no-op at k=0, BI and angular distance equal their definitions, drop orders."""
import numpy as np
import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.prune.toy import (angular_choice, angular_distances, bi_order, block_influence,
                             compression_curves, drop_blocks, evaluate_drop, group_order)
from gwray.models.toy import ResidualMLP, accuracy, build_model, default_meta, task_data, train_toy, load_toy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cmp")
    saved = train_toy("digits", out, depth=4, width=32, hidden=64, steps=150, batch_size=128)
    model, names = load_toy(saved[-1])
    return model, names, task_data(model.meta)


def test_dropping_nothing_reproduces_accuracy_exactly(trained):
    model, _, data = trained
    base = accuracy(model, data["x_test"], data["y_test"])
    row = evaluate_drop(model, [], data)
    assert row["accuracy"] == base and row["healed"] == base and row["k"] == 0
    x = torch.as_tensor(data["x_test"][:20])
    with torch.no_grad():
        assert torch.equal(drop_blocks(model, [])(x), model(x))


def test_drop_replaces_blocks_by_identity_and_leaves_original(trained):
    model, _, data = trained
    x = torch.as_tensor(data["x_test"][:20])
    pruned = drop_blocks(model, [1, 3])
    assert isinstance(pruned.blocks[1], torch.nn.Identity) and not isinstance(model.blocks[1], torch.nn.Identity)
    with torch.no_grad():
        h = model.hidden_states(x)
        expected = model.head(model.blocks[2](h[1]))  # skip 1 and 3
        assert torch.allclose(pruned(x), expected)


def _hand_built():
    """Two blocks: block 0 adds a constant vector v (fc2 weight 0, bias v); block 1 adds 0."""
    torch.manual_seed(0)
    model = ResidualMLP(n_inputs=3, n_classes=2, width=3, depth=2, hidden=4)
    with torch.no_grad():
        for i, v in enumerate([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]):
            model.blocks[i].fc2.weight.zero_()
            model.blocks[i].fc2.bias.copy_(torch.tensor(v))
    return model


def test_block_influence_equals_definition():
    model = _hand_built()
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    with torch.no_grad():
        h0 = model.embed(torch.as_tensor(x)).double().numpy()
    v = np.array([1.0, -2.0, 0.5])
    h1 = h0 + v
    cos = (h0 * h1).sum(1) / (np.linalg.norm(h0, axis=1) * np.linalg.norm(h1, axis=1))
    bi = block_influence(model, x)
    assert bi[0] == pytest.approx(1.0 - cos.mean(), rel=1e-6)
    assert bi[1] == pytest.approx(0.0, abs=1e-7)
    assert bi_order(model, x) == [1, 0]
    ang = angular_distances(model, x, 1)
    assert ang[0] == pytest.approx(np.arccos(np.clip(cos, -1, 1)).mean() / np.pi, rel=1e-5)
    assert ang[1] == pytest.approx(0.0, abs=1e-3)  # arccos near 1 is float-sensitive
    assert angular_choice(model, x, 1) == [1]
    assert angular_choice(model, x, 2) == [0, 1] and angular_choice(model, x, 0) == []


def test_group_order_drops_within_group_blocks_first():
    names = ["embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    groups = [["embed", "blocks.0", "blocks.1"], ["blocks.2", "blocks.3"]]
    D = np.zeros((5, 5))
    for i, d in enumerate([0.3, 0.1, 0.9, 0.2]):  # D between layer i and i + 1 (block i)
        D[i, i + 1] = D[i + 1, i] = d
    # Within-group blocks: 0 (embed->b0), 1 (b0->b1), 3 (b2->b3); block 2 enters group 2.
    assert group_order(groups, D, names) == [1, 3, 0, 2]


def test_compression_curves_rows(trained):
    model, names, data = trained
    groups = [names[:3], names[3:]]
    D = np.abs(np.subtract.outer(np.arange(5), np.arange(5))).astype(float)
    rows = compression_curves(model, data, [0, 2], groups=groups, D=D, names=names, random_seeds=2,
                              heal_steps=5)
    methods = {(r["method"], r["k"]) for r in rows}
    assert methods == {(m, k) for m in ("groups", "random", "bi", "angular") for k in (0, 2)}
    base = accuracy(model, data["x_test"], data["y_test"])
    assert all(r["accuracy"] == base for r in rows if r["k"] == 0)
    assert all(len(r["blocks"]) == r["k"] for r in rows)


@pytest.mark.parametrize("call, message", [
    (lambda m: drop_blocks(m, [7]), "blocks: index 7 out of range"),
    (lambda m: angular_distances(m, np.zeros((4, 64), np.float32), 9), "n: must be in [1, 4]"),
    (lambda m: group_order([["embed"]], np.zeros((2, 2)), ["embed", "blocks.0"]), "groups: layer 'blocks.0'"),
    (lambda m: group_order([["a"]], np.zeros((3, 3)), ["a"]), "D: shape (3, 3)"),
])
def test_bad_arguments(call, message):
    model = build_model(default_meta("digits", depth=4, width=8, hidden=8))
    with pytest.raises(GwrayInputError) as info:
        call(model)
    assert message in str(info.value)
