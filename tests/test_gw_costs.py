"""Cost matrices: exact distances, normalisation, invariances, constant layers, input errors."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from gwray.errors import GwrayInputError
from gwray.gw.costs import ConstantLayerWarning, check_cost, cost_matrix


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(40, 7)) + 3.0


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "correlation"])
def test_metrics_match_scipy(X, metric):
    C = cost_matrix(X, metric, normalize="none")
    assert isinstance(C, np.ndarray) and C.dtype == np.float64
    np.testing.assert_allclose(C, cdist(X, X, metric), atol=1e-12)
    assert np.all(np.diagonal(C) == 0.0) and np.array_equal(C, C.T) and C.min() >= 0.0


@pytest.mark.parametrize("normalize,stat", [("mean", np.mean), ("max", np.max), ("median", np.median)])
def test_normalization(X, normalize, stat):
    C = cost_matrix(X, normalize=normalize)
    off = C[~np.eye(len(C), dtype=bool)]
    assert stat(off) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(C * stat(cdist(X, X)[~np.eye(len(C), dtype=bool)]), cdist(X, X),
                               atol=1e-12)


def test_duplicate_rows_are_exactly_zero():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 5)) * 1e3
    X[7] = X[2]
    X[8] = X[2] + 1e-9
    C = cost_matrix(X, "euclidean", "none")
    assert C[2, 7] == 0.0 and C[7, 2] == 0.0
    assert C[2, 8] == pytest.approx(np.sqrt(5) * 1e-9, rel=1e-3)  # not lost to cancellation


def test_torch_in_torch_out(X):
    t = torch.tensor(X, dtype=torch.float32)
    C = cost_matrix(t, "cosine")
    assert isinstance(C, torch.Tensor) and C.dtype == torch.float64 and C.device == t.device
    np.testing.assert_allclose(C.numpy(), cost_matrix(X.astype(np.float32), "cosine"), atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_invariant_to_rotation_translation_scaling(X, metric):
    rng = np.random.default_rng(2)
    R, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    Y = 3.7 * X @ R + rng.normal(size=7) * 10
    np.testing.assert_allclose(cost_matrix(Y, metric), cost_matrix(X, metric), atol=1e-10)


def test_cosine_invariant_to_rotation_and_scaling(X):
    R, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(7, 7)))
    np.testing.assert_allclose(cost_matrix(2.5 * X @ R, "cosine"), cost_matrix(X, "cosine"), atol=1e-12)


@pytest.mark.parametrize("normalize", ["mean", "none", "median"])
def test_constant_layer_is_all_zero_and_flagged(normalize):
    with pytest.warns(ConstantLayerWarning, match="layer 'b3'"):
        C = cost_matrix(np.ones((6, 4)) * 2.0, normalize=normalize, name="layer 'b3'")
    assert C.shape == (6, 6) and not C.any() and np.all(np.isfinite(C))


def test_zero_row_cosine_is_distance_one():
    X = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    C = cost_matrix(X, "cosine", "none")
    assert C[0, 1] == 1.0 and C[1, 2] == 1.0 and C[0, 2] == pytest.approx(1.0) and C[1, 1] == 0.0


@pytest.mark.parametrize("bad,kind", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_is_named(X, bad, kind):
    X = X.copy()
    X[3, 5] = bad
    with pytest.raises(GwrayInputError, match=f"^X row 3 col 5 is {kind}$"):
        cost_matrix(X)
    with pytest.raises(GwrayInputError, match=f"^layers\\[2\\] row 3 col 5 is {kind}$"):
        cost_matrix(torch.tensor(X), name="layers[2]")


@pytest.mark.parametrize("shape,msg", [((5,), "must be 2-D"), ((2, 3, 4), "must be 2-D"),
                                       ((0, 4), "is empty"), ((4, 0), "is empty")])
def test_bad_shapes(shape, msg):
    with pytest.raises(GwrayInputError, match=f"X {msg}"):
        cost_matrix(np.zeros(shape))


def test_bad_options(X):
    with pytest.raises(GwrayInputError, match="metric"):
        cost_matrix(X, metric="manhattan")
    with pytest.raises(GwrayInputError, match="normalize"):
        cost_matrix(X, normalize="l2")
    with pytest.raises(GwrayInputError, match="non-numeric"):
        cost_matrix(np.array([["a", "b"]]))


def test_check_cost(X):
    C = cost_matrix(X)
    out = check_cost(torch.tensor(C))
    assert isinstance(out, np.ndarray) and np.array_equal(out, out.T)
    with pytest.raises(GwrayInputError, match="^C1 must be square"):
        check_cost(C[:, :5], "C1")
    A = C.copy()
    A[4, 9] += 1e-3
    with pytest.raises(GwrayInputError, match=r"^C2 is not symmetric: C2\[4,9\]"):
        check_cost(A, "C2")
    A = C.copy()
    A[1, 2] = np.nan
    with pytest.raises(GwrayInputError, match="^C row 1 col 2 is nan$"):
        check_cost(A)
    with pytest.raises(GwrayInputError, match="C is empty"):
        check_cost(np.zeros((0, 0)))
    B = C.copy()
    B[0, 1] += 1e-14  # within tolerance: accepted and symmetrised
    assert np.array_equal(check_cost(B), check_cost(B).T)
