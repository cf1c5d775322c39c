"""Statistics across seeds on hand-made inputs with known answers: the structure verdict (significant
on ≥ 4 of 5 seeds), the between-seed ARI and its bootstrap interval, paired rule differences with
t intervals over model seeds."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from gwray.errors import GwrayInputError
from gwray.graph.seeds import cross_agreement, seed_agreement, structure_verdict
from gwray.prune.paired import mean_interval, paired_difference, unit_means


@pytest.mark.parametrize("p_values, hits, established", [
    ([0.01, 0.01, 0.02, 0.04, 0.3], 4, True),         # 4 of 5: established
    ([0.01, 0.01, 0.02, 0.3, 0.3], 3, False),         # 3 of 5: not
    ([0.05, 0.05, 0.05, 0.05, 0.06], 4, True),        # p = α counts, as the test's own rule (p ≤ α)
    ([None, 0.01, 0.01, 0.01, 0.01], 4, True),        # None (nothing to test) counts as not significant
    ([None] * 5, 0, False),
])
def test_structure_verdict_counts_significant_seeds(p_values, hits, established):
    v = structure_verdict(p_values, alpha=0.05)
    assert v["significant"] == hits and v["needed"] == 4 and v["established"] is established


def test_structure_verdict_share_rounds_up():
    assert structure_verdict([0.01, 0.01, 0.5], min_share=0.8)["needed"] == 3  # ceil(2.4)
    with pytest.raises(GwrayInputError):
        structure_verdict([])


def test_identical_partitions_agree_perfectly():
    lab = [0, 0, 0, 1, 1, 2, 2]
    a = seed_agreement([lab] * 5)
    assert a.mean == 1.0 and a.interval == (1.0, 1.0)
    assert np.array_equal(a.ari, np.ones((5, 5)))


def test_agreement_is_the_mean_over_pairs_of_distinct_seeds():
    p = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
    a = seed_agreement(p, draws=500)
    pairs = [adjusted_rand_score(p[i], p[j]) for i in range(4) for j in range(i + 1, 4)]
    assert a.mean == pytest.approx(np.mean(pairs))
    assert a.ari[0, 3] == pytest.approx(1.0) and a.ari[1, 2] == pytest.approx(adjusted_rand_score(p[1], p[2]))
    low, high = a.interval
    assert min(pairs) <= low <= a.mean <= high <= max(pairs)  # a bootstrap of pair means stays in their range


def test_two_camps_of_seeds_give_a_wide_interval():
    # 3 seeds cut after layer 2, 2 after layer 5: pairs across the camps disagree
    p = [[0] * 3 + [1] * 6] * 3 + [[0] * 6 + [1] * 3] * 2
    a = seed_agreement(p)
    across = adjusted_rand_score(p[0], p[3])
    assert a.mean == pytest.approx((3 * 1 + 1 * 1 + 6 * across) / 10)
    assert a.interval[0] < a.mean < a.interval[1] and a.interval[1] - a.interval[0] > 0.2


def test_cross_agreement_of_two_strategies():
    same = cross_agreement([[0, 0, 1, 1]] * 3, [[0, 0, 1, 1]] * 2)
    assert same["mean"] == 1.0 and same["interval"] == [1.0, 1.0]
    other = cross_agreement([[0, 0, 1, 1]], [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert other["mean"] == pytest.approx(adjusted_rand_score([0, 0, 1, 1], [0, 1, 1, 1]))


def test_agreement_needs_two_seeds_of_the_same_layers():
    with pytest.raises(GwrayInputError):
        seed_agreement([[0, 1]])
    with pytest.raises(GwrayInputError):
        seed_agreement([[0, 1], [0, 1, 1]])


def test_paired_difference_equals_student_t_on_model_means():
    # 5 models × 3 healing seeds; B's replicates shift A's by a per-model amount d_m
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3))
    d = np.array([0.1, 0.3, -0.05, 0.2, 0.15])
    b = a - d[:, None]
    r = paired_difference(list(a), list(b))
    want = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert r["mean"] == pytest.approx(d.mean()) and r["n"] == 5
    assert (r["low"], r["high"]) == pytest.approx(want)
    assert r["excludes_zero"] == bool(want[0] > 0 or want[1] < 0)


def test_constant_difference_has_a_zero_width_interval_and_excludes_zero():
    r = paired_difference([[1.0, 1.2], [0.5, 0.7], [0.9, 0.9]], [[0.8, 1.0], [0.3, 0.5], [0.7, 0.7]])
    assert r["mean"] == pytest.approx(0.2) and r["low"] == pytest.approx(0.2) and r["high"] == pytest.approx(0.2)
    assert r["excludes_zero"]


def test_random_draws_are_averaged_per_model_before_pairing():
    # rule A: one value per model; random: 10 draws per model, whose mean is what A is compared with
    a = [[0.9], [0.8]]
    rnd = [[0.5] * 5 + [0.7] * 5, [0.6] * 10]
    assert np.allclose(unit_means(rnd), [0.6, 0.6])
    r = paired_difference(a, rnd)
    assert r["mean"] == pytest.approx(0.25)


def test_intervals_of_a_mean_and_bad_input():
    r = mean_interval([2.0, 4.0, 6.0])
    assert (r["mean"], r["sd"]) == (4.0, 2.0)
    assert r["high"] - r["mean"] == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / np.sqrt(3))
    clipped = mean_interval([0.9, 1.0, 1.0, 0.5], bounds=(-1.0, 1.0))
    assert clipped["high"] == 1.0 and clipped["low"] == mean_interval([0.9, 1.0, 1.0, 0.5])["low"]
    one = mean_interval([3.0])
    assert one["low"] == one["high"] == 3.0 and not one["excludes_zero"]
    with pytest.raises(GwrayInputError):
        paired_difference([[1.0]], [[1.0], [2.0]])
    with pytest.raises(GwrayInputError):
        unit_means([[1.0], []])
