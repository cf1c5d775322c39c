"""Baselines (CKA, RSA, identity distortion) against direct implementations and known cases."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import spearmanr

from gwray.errors import GwrayInputError
from gwray.gw.baselines import baseline_matrices, identity_distortion, linear_cka, rsa


def _hsic_unbiased_song(K, L):
    """Song et al. (2012), eq. 5, written out term by term."""
    n = K.shape[0]
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ K @ L @ one)) / (n * (n - 3))


def _cka_direct(X, Y, debiased):
    if debiased:
        K, L = X @ X.T, Y @ Y.T
        return _hsic_unbiased_song(K, L) / np.sqrt(_hsic_unbiased_song(K, K) * _hsic_unbiased_song(L, L))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


@pytest.fixture
def reps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 7))
    Y = np.tanh(X @ rng.normal(size=(7, 5))) + 0.3 * rng.normal(size=(40, 5))
    return X, Y


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_matches_direct_formula(reps, debiased):
    X, Y = reps
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(_cka_direct(X, Y, debiased), rel=1e-10)


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_identical_rotation_and_scale(reps, debiased):
    X, _ = reps
    Q, _r = np.linalg.qr(np.random.default_rng(1).normal(size=(7, 7)))
    assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, 3.0 * X @ Q + 5.0, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


def test_cka_known_values():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 200))
    # One feature each: biased linear CKA is the squared Pearson correlation.
    r = np.corrcoef(x, y)[0, 1]
    assert linear_cka(x[:, None], y[:, None], debiased=False) == pytest.approx(r ** 2, rel=1e-10)
    # Independent wide representations: biased CKA is far from 0, the debiased one is near 0.
    A, B = rng.normal(size=(2, 60, 200))
    assert linear_cka(A, B, debiased=False) > 0.5
    assert abs(linear_cka(A, B, debiased=True)) < 0.15


def test_rsa_matches_scipy_and_is_rank_invariant(reps):
    X, Y = reps
    C1, C2 = cdist(X, X), cdist(Y, Y)
    iu = np.triu_indices(40, 1)
    assert rsa(C1, C2) == pytest.approx(spearmanr(C1[iu], C2[iu]).statistic, rel=1e-10)
    assert rsa(C1, C1 ** 2 + 1) == pytest.approx(1.0)
    assert rsa(C1, -C1) == pytest.approx(-1.0)
    assert np.isnan(rsa(C1, np.ones_like(C1)))


def test_identity_distortion_known_value():
    pytest.importorskip("gwray.gw.bounds")
    n = 10
    C = cdist(np.arange(n)[:, None], np.arange(n)[:, None])
    shifted = C + (1 - np.eye(n))
    assert identity_distortion(C, C) == pytest.approx(0.0)
    assert identity_distortion(C, shifted) == pytest.approx((n * n - n) / n ** 2)


def test_baseline_matrices_match_pairwise(reps):
    pytest.importorskip("gwray.gw.costs")
    X, Y = reps
    Z = X[:, :3] ** 2
    kinds = ["cka", "rsa"] + (["identity"] if _has("gwray.gw.bounds") else [])
    M = baseline_matrices([X, Y, Z], kinds=kinds)
    from gwray.gw.costs import cost_matrix

    assert M["cka"][0, 1] == pytest.approx(linear_cka(X, Y))
    assert M["cka"][2, 1] == pytest.approx(linear_cka(Z, Y))
    assert np.allclose(np.diag(M["rsa"]), 1.0)
    assert M["rsa"][0, 2] == pytest.approx(rsa(cost_matrix(X), cost_matrix(Z)))
    if "identity" in M:
        assert M["identity"][1, 2] == pytest.approx(identity_distortion(cost_matrix(Y), cost_matrix(Z)))
        assert np.allclose(np.diag(M["identity"]), 0.0)


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("call, message", [
    (lambda: linear_cka(np.ones((5, 2)), np.ones((6, 2))), "Y: has 6 samples"),
    (lambda: linear_cka(np.ones(5), np.ones((5, 2))), "X: expected an (n, d) array"),
    (lambda: linear_cka(np.full((5, 2), np.nan), np.ones((5, 2))), "X: contains NaN"),
    (lambda: rsa(np.ones((4, 4)), np.ones((5, 5))), "C2: shape"),
    (lambda: rsa(np.ones((4, 3)), np.ones((4, 3))), "C1: expected a square"),
    (lambda: baseline_matrices([np.ones((5, 2))], kinds=["svcca"]), "baselines: unknown kind 'svcca'"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(GwrayInputError, match=None) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)
