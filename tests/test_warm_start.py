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
