"""Pair plans and batching: counts per compare.cross mode, no pair twice, batches of equal n."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.errors import GwrayInputError
from gwray.scheduler import plan_for
from gwray.scheduler.batches import make_batches
from gwray.scheduler.plan import checkpoint_pairs, plan_pairs


def _layers(counts):
    return {f"ckpt{c}": [f"L{i}" for i in range(n)] for c, n in enumerate(counts)}


def _expected(counts, cross):
    within = sum(n * (n - 1) // 2 for n in counts)
    k = len(counts)
    if cross == "consecutive":
        pairs = [(a, a + 1) for a in range(k - 1)]
    elif cross == "all":
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    elif cross == "final":
        pairs = [(a, k - 1) for a in range(k - 1)]
    else:
        pairs = []
    return within + sum(counts[a] * counts[b] for a, b in pairs)


@pytest.mark.parametrize("cross", ["none", "consecutive", "all", "final"])
@pytest.mark.parametrize("counts", [[1], [2], [5], [12], [4, 4], [3, 3, 3], [6, 6, 6, 6], [2, 5, 3]])
def test_plan_counts_and_uniqueness(counts, cross):
    plan = plan_pairs(_layers(counts), cross)
    assert len(plan) == _expected(counts, cross)
    keys = [t.key for t in plan]
    assert len(set(keys)) == len(keys), "a pair planned twice"
    # symmetric within-checkpoint pairs appear once, as i < j, never on the diagonal
    unordered = {(t.checkpoint_a, frozenset((t.layer_a, t.layer_b))) for t in plan if t.within}
    assert len(unordered) == sum(t.within for t in plan)
    assert all(t.i < t.j for t in plan if t.within)
    assert plan.layers == _layers(counts) and plan.cross == cross


def test_eighty_layers_is_3160_pairs():
    assert len(plan_pairs(_layers([80]), "all")) == 3160
    assert len(plan_pairs(_layers([80, 80, 80]), "final")) == 3 * 3160 + 2 * 6400


def test_checkpoint_pairs_modes():
    ids = ["a", "b", "c", "d"]
    assert checkpoint_pairs(ids, "none") == []
    assert checkpoint_pairs(ids, "consecutive") == [("a", "b"), ("b", "c"), ("c", "d")]
    assert checkpoint_pairs(ids, "final") == [("a", "d"), ("b", "d"), ("c", "d")]
    assert len(checkpoint_pairs(ids, "all")) == 6
    assert checkpoint_pairs(["a"], "all") == []


def test_cross_pairs_cover_every_layer_combination():
    plan = plan_pairs({"a": ["x", "y"], "b": ["x", "y", "z"]}, "consecutive")
    cross = {(t.layer_a, t.layer_b) for t in plan if not t.within}
    assert cross == {(x, y) for x in ["x", "y"] for y in ["x", "y", "z"]}


def test_plan_for_follows_the_given_checkpoints_not_the_disk(tmp_path):
    """Training order, not name order (which puts 1000 before 200 before 30); stale ids dropped."""
    for ckpt in ("checkpoint-1000", "checkpoint-200", "checkpoint-30", "old-config"):
        writer = ActivationWriter(tmp_path, ckpt, ["a", "b"])
        for name in ("a", "b"):
            writer.write(name, np.arange(3), np.ones((3, 2)))
        writer.commit({})
    store = ActivationStore(tmp_path)
    run = ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    plan = plan_for(store, "consecutive", checkpoints=run)
    assert plan.checkpoint_pairs() == [("checkpoint-30", "checkpoint-200"),
                                       ("checkpoint-200", "checkpoint-1000")]
    assert {(t.checkpoint_a, t.checkpoint_b) for t in plan if not t.within} == set(plan.checkpoint_pairs())
    assert list(plan.layers) == run and "old-config" not in {t.checkpoint_a for t in plan}
    assert len(plan) == 3 * 1 + 2 * 4
    assert list(plan_for(store, "none").layers) == sorted(run + ["old-config"])  # default: the store's
    with pytest.raises(GwrayInputError, match=r"^checkpoint 'checkpoint-5': no complete activations in "):
        plan_for(store, "consecutive", checkpoints=["checkpoint-5", *run])


def test_bad_inputs_name_the_thing():
    with pytest.raises(GwrayInputError, match="compare.cross"):
        plan_pairs(_layers([3]), "sometimes")
    with pytest.raises(GwrayInputError, match="layer 'L0' listed twice"):
        plan_pairs({"c": ["L0", "L1", "L0"]}, "none")
    plan = plan_pairs(_layers([3]), "none")
    with pytest.raises(GwrayInputError, match="resources.batch_pairs"):
        make_batches(plan, {}, 0)
    with pytest.raises(GwrayInputError, match="layer 'L0' has no activations"):
        make_batches(plan, {}, 4)


@pytest.mark.parametrize("batch_pairs", [1, 3, 8, 16])
def test_batches_partition_the_plan_with_equal_n(batch_pairs):
    layers = {"a": [f"L{i}" for i in range(10)], "b": [f"L{i}" for i in range(10)],
              "c": [f"L{i}" for i in range(4)]}
    n = {"a": 32, "b": 32, "c": 16}
    sizes = {(c, layer): n[c] for c, names in layers.items() for layer in names}
    plan = plan_pairs(layers, "all")
    batches = make_batches(plan, sizes, batch_pairs)
    flat = [t.key for b in batches for t in b.tasks]
    assert sorted(flat) == sorted(t.key for t in plan) and len(flat) == len(set(flat))
    assert [b.index for b in batches] == list(range(len(batches)))
    for b in batches:
        assert 1 <= len(b) <= batch_pairs
        assert {(sizes[t.cost_keys[0]], sizes[t.cost_keys[1]]) for t in b.tasks} == {b.n}


def test_batch_order_reuses_cost_matrices():
    """Tiles need ~2√B matrices per batch, far fewer than the 2B of an unordered batch."""
    plan = plan_pairs(_layers([40]), "none")
    sizes = {("ckpt0", f"L{i}"): 64 for i in range(40)}
    batches = make_batches(plan, sizes, 16)
    full = [b for b in batches if len(b) == 16]
    mean_keys = sum(len(b.cost_keys) for b in full) / len(full)
    assert mean_keys <= 2 * math.sqrt(16) + 2
    # consecutive batches share matrices, so a worker running them in order reuses what it holds
    shared = [len(a.cost_keys & b.cost_keys) for a, b in zip(batches, batches[1:])]
    assert sum(s > 0 for s in shared) >= 0.8 * len(shared)


@pytest.mark.parametrize("cross", ["none", "consecutive", "all", "final"])
def test_positions_invert_the_plan(cross):
    """Every planned key maps to its own position; keys the plan does not hold map to -1."""
    plan = plan_pairs({"a": ["x", "y", "z"], "b": ["x", "y"], "c": ["x", "y", "z", "w"]}, cross)
    tasks = list(plan)
    cols = [[t.key[k] for t in tasks] for k in range(4)]
    np.testing.assert_array_equal(plan.positions(*cols), np.arange(len(plan)))
    assert [plan[k].key for k in (0, len(plan) - 1, -1)] == [tasks[0].key, tasks[-1].key, tasks[-1].key]
    stray = [("a", "y", "a", "x"), ("a", "x", "a", "x"), ("a", "x", "zz", "y"), ("a", "w", "a", "z"),
             ("c", "x", "a", "x")]  # j <= i within, unknown checkpoint / layer, the wrong direction
    np.testing.assert_array_equal(plan.positions(*zip(*stray)), [-1] * len(stray))
    assert plan.within_pairs == 3 + 1 + 6


@pytest.mark.parametrize("batch_pairs", [1, 5, 16])
def test_plan_batches_walk_what_is_left(batch_pairs):
    """The lazy batches of a plan equal make_batches of the same pairs, also for a remainder."""
    from gwray.scheduler.batches import plan_batches

    layers = _layers([9, 9, 9])
    sizes = {(c, layer): 16 for c, names in layers.items() for layer in names}
    plan = plan_pairs(layers, "consecutive")
    todo = np.random.default_rng(0).uniform(size=len(plan)) < 0.6
    left = [t for t, keep in zip(plan, todo) if keep]
    lazy, eager = list(plan_batches(plan, todo, sizes, batch_pairs)), make_batches(left, sizes, batch_pairs)
    assert [[t.key for t in b.tasks] for b in lazy] == [[t.key for t in b.tasks] for b in eager]
    assert sum(len(b) for b in lazy) == todo.sum() and all(len(b) == batch_pairs for b in lazy[:-1])
