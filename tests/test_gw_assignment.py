"""The warm-started exact assignment against scipy's linear_sum_assignment."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from gwray.gw.assignment import linear_assignment


def best(A):
    r, c = linear_sum_assignment(A, maximize=True)
    return A[r, c].sum()


def total(A, cols):
    return A[np.arange(A.shape[0]), cols].sum()


@pytest.mark.parametrize("n", [1, 2, 7, 60, 200])
def test_cold_start_is_exact(n):
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    cols, _ = linear_assignment(A, np.zeros(n))
    assert sorted(cols) == list(range(n))
    assert total(A, cols) == pytest.approx(best(A), rel=1e-12, abs=1e-12)


def test_ties_and_integer_weights_are_exact():
    rng = np.random.default_rng(1)
    A = rng.integers(0, 3, size=(80, 80)).astype(float)  # many optimal assignments
    cols, _ = linear_assignment(A, np.zeros(80))
    assert sorted(cols) == list(range(80)) and total(A, cols) == best(A)
    cols, _ = linear_assignment(np.ones((30, 30)), np.zeros(30))
    assert sorted(cols) == list(range(30))


def test_warm_start_along_a_cg_path_is_exact_and_keeps_duals_feasible():
    """The sequence CG produces: A ← (1 − α) A + α B; each call warm from the previous duals."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 5))
    C1 = np.linalg.norm(X[:, None] - X[None], axis=-1)
    C2 = np.linalg.norm((X + 0.3 * rng.normal(size=X.shape))[:, None] - X[None], axis=-1)
    C2 = (C2 + C2.T) / 2
    A = C1 @ C2
    cols, v = linear_assignment(A, np.zeros(150))
    for alpha in (0.5, 0.3, 0.9, 0.1):
        A = (1 - alpha) * A + alpha * (C1 @ C2[cols])
        cols, v = linear_assignment(A, v, cols)
        assert total(A, cols) == pytest.approx(best(A), rel=1e-12)
        u = (-A - v[None, :]).min(axis=1)
        reduced = -A - u[:, None] - v[None, :]
        assert reduced.min() >= -1e-9 * np.abs(A).max()
        assert np.abs(reduced[np.arange(150), cols]).max() <= 1e-9 * np.abs(A).max()


def test_arbitrary_duals_and_a_stale_permutation_still_give_the_optimum():
    rng = np.random.default_rng(3)
    A = rng.random((120, 120))
    cols, _ = linear_assignment(A, 100 * rng.normal(size=120), rng.permutation(120))
    assert total(A, cols) == pytest.approx(best(A), rel=1e-12)


def test_non_finite_weights_are_an_error():
    A = np.full((3, 3), -np.inf)
    with pytest.raises(ValueError, match="no perfect assignment"):
        linear_assignment(A, np.zeros(3))


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """numba refuses cache=True at decoration when no cache location is writable: the kernel
    must then compile per process instead of breaking the import."""
    import numba

    from gwray.gw import jit

    real = numba.njit

    def strict(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(jit.nb, "njit", strict)

    def double(x):
        return 2 * x

    assert jit.njit(double)(21) == 42
