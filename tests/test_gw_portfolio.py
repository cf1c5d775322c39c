"""The solver's portfolio rule on real layer pairs: the default against a wide search, every end
polished, the entropic start without alignment, ``random:auto``, and the quality signal
(``runner_up_gap``) through ``pairs/``, ``load_records`` and the report's solver sentence."""
import numpy as np
import pytest
import torch

from gwray.gw.costs import cost_matrix
from gwray.gw.problem import permutation_value
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.starts import auto_random, expand_auto

N = 96


@pytest.fixture(scope="module")
def toy_costs():
    """Costs of the 7 residual-stream states of a small toy net trained on the digits task."""
    from gwray.models import toy

    torch.manual_seed(0)
    torch.set_num_threads(1)
    meta = toy.default_meta("digits", depth=6, width=32, hidden=64, steps=300)
    data = toy.task_data(meta)
    model = toy.fit(toy.build_model(meta), data["x_train"], data["y_train"], steps=meta["steps"],
                    lr=meta["lr"], weight_decay=meta["weight_decay"], batch_size=meta["batch_size"])
    with torch.no_grad():
        states = model.hidden_states(torch.as_tensor(data["x_test"][:N]))
    return [np.asarray(cost_matrix(h.double())) for h in states]


def _wide(C1, C2):
    """The lowest value of a wider search: the default starts plus 24 random ones (other seeds),
    aligned, and the pair with C2's samples shuffled, unaligned, from product, entropic and 24
    random starts; every end polished (the default)."""
    al = gromov_wasserstein(C1, C2, aligned=True, seed=1, keep_coupling=False, bound=False,
                            starts=["identity", "mixed", "product", "entropic", "random:24"])
    s = np.random.default_rng(0).permutation(len(C2))
    un = gromov_wasserstein(C1, C2[np.ix_(s, s)], seed=2, keep_coupling=False, bound=False,
                            starts=["product", "entropic", "random:24"])
    return min(al.value, un.value)


@pytest.mark.parametrize("which", ["minilm", "toy"])
def test_default_within_one_percent_of_a_wide_search(which, request):
    """Neighbouring, middle and distant layer pairs: the default value is at most 1 % above the
    lowest value of a search with 48 more starts, half of them on shuffled samples."""
    costs = request.getfixturevalue(f"{which}_costs")
    L = len(costs)
    for i, j in [(0, 1), (1, 3), (2, 5), (L - 2, L - 1), (0, L - 1)]:
        r = gromov_wasserstein(costs[i], costs[j], aligned=True)
        wide = _wide(costs[i], costs[j])
        assert r.value <= 1.01 * wide, (which, i, j, r.value / wide)
        # the value is the exact float64 objective of the returned permutation plan
        assert r.value == permutation_value(costs[i], costs[j], r.permutation.astype(np.int64))


def test_every_end_is_polished_and_the_runner_up_gap_is_the_second_end(minilm_costs):
    C1, C2 = minilm_costs[1], minilm_costs[5]
    r = gromov_wasserstein(C1, C2, aligned=True)
    assert set(r.polished) == set(r.start_values)  # every start's end went through the swap search
    assert len(r.start_values) == 4 + auto_random(N)
    others = sorted(v for k, v in r.start_values.items() if k != r.init)
    assert r.runner_up_gap == pytest.approx((others[0] - r.value) / r.value, rel=1e-12)
    assert r.record()["runner_up_gap"] == r.runner_up_gap
    # polishing only the best CG end can do no better than polishing every end
    one = gromov_wasserstein(C1, C2, aligned=True, polish=1)
    assert len(one.polished) == 1 and r.value <= one.value * (1 + 1e-12)
    assert np.isnan(gromov_wasserstein(C1, C2, aligned=True, starts=["identity"]).runner_up_gap)


def test_entropic_start_finds_neighbours_without_alignment(minilm_costs):
    """Exact GW ignores the samples' order: solved unaligned on shuffled samples (no identity or
    mixed start), the entropic start alone brings neighbouring layers to the aligned value where
    the product start stays far above it."""
    for i in (2, 3):
        C1, C2 = minilm_costs[i], minilm_costs[i + 1]
        aligned = gromov_wasserstein(C1, C2, aligned=True).value
        s = np.random.default_rng(i).permutation(N)
        shuffled = C2[np.ix_(s, s)]
        assert gromov_wasserstein(C1, shuffled, starts=["entropic"]).value <= 1.01 * aligned
        assert gromov_wasserstein(C1, shuffled, starts=["product"]).value > 1.5 * aligned


def test_random_auto_follows_the_size():
    from gwray.config import GWConfig
    from gwray.gw.starts import DEFAULT_STARTS

    assert GWConfig().starts == list(DEFAULT_STARTS)  # gw.starts defaults to the solver's
    assert [auto_random(n) for n in (64, 256, 384, 512, 724, 1024, 4096)] == [24, 24, 7, 3, 1, 0, 0]
    assert expand_auto(["identity", "random:auto"], 512) == ["identity", "random:3"]
    assert expand_auto(["identity", "random:auto"], 2048) == ["identity"]
    rng = np.random.default_rng(3)
    C1, C2 = cost_matrix(rng.normal(size=(40, 3))), cost_matrix(rng.normal(size=(40, 3)))
    r = gromov_wasserstein(C1, C2, starts=["random:auto"], keep_coupling=False)
    assert sorted(r.start_values) == sorted(f"random:{k}" for k in range(24))


def test_runner_up_gap_round_trips_through_pairs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gwray.scheduler.results import PAIR_SCHEMA, load_records, write_records

    rng = np.random.default_rng(4)
    C1, C2 = cost_matrix(rng.normal(size=(30, 3))), cost_matrix(rng.normal(size=(30, 4)))
    r = gromov_wasserstein(C1, C2, aligned=True)
    key = {"checkpoint_a": "main", "layer_a": "a", "checkpoint_b": "main", "layer_b": "b"}
    write_records(tmp_path, [{**key, **r.record()}])
    back = load_records(tmp_path).to_pylist()
    assert back[0]["runner_up_gap"] == r.runner_up_gap and np.isfinite(r.runner_up_gap)
    # a pairs/ file written before the column existed reads back with it unknown (null)
    old = pa.Table.from_pylist([{**key, **r.record(), "layer_b": "c"}], schema=PAIR_SCHEMA)
    pq.write_table(old.drop_columns(["runner_up_gap"]), tmp_path / "pairs" / "part-old.parquet")
    gaps = {row["layer_b"]: row["runner_up_gap"] for row in load_records(tmp_path).to_pylist()}
    assert gaps == {"b": r.runner_up_gap, "c": None}


def test_solver_sentence_counts_settled_pairs():
    from gwray.report.html import _certainty_sentence
    from gwray.report.summary import solver_line

    recs = [{"gw": 1.0, "lower_bound": 0.3, "runner_up_gap": 0.0},
            {"gw": 2.0, "lower_bound": 0.8, "runner_up_gap": 0.005},
            {"gw": 1.0, "lower_bound": 0.5, "runner_up_gap": 0.07},
            {"gw": 1.0, "lower_bound": 0.6, "runner_up_gap": None}]  # an older file: unknown
    line = solver_line(recs)
    assert (line["pairs"], line["known"], line["settled"]) == (4, 3, 2)
    assert line["bound_median"] == pytest.approx(0.5)
    assert line["text"] == ("solver: 4 pairs, a second start reached the value within 1 % on 2 "
                            "of 3, lower bound at 50% of the value (median)")
    q = {"max_gap": 0.7, "median_gap": 0.5, "runner_up_known": 3, "settled": 2, "runner_up_max": 0.07}
    text = _certainty_sentence(q)
    assert "On 2 of 3 pairs a second solver start reached the value within 1 %" in text
    assert "up to 7% above" in text
