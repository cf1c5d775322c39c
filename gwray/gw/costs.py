"""Intra-layer cost matrices: exact pairwise distances between the samples of one layer.

A layer's activations are an (n, d) array (row = probe sample). Its cost matrix is the (n, n)
matrix of distances between rows, normalised so that layers of different width and scale are
comparable. Everything is computed in float64 with torch (numpy in → numpy out, torch in → torch
out on the same device).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from gwray.errors import GwrayInputError

METRICS = ("euclidean", "sqeuclidean", "cosine", "correlation")
NORMALIZATIONS = ("mean", "max", "median", "none")


class ConstantLayerWarning(UserWarning):
    """A layer whose cost matrix is all zeros (every sample has the same representation)."""


def _describe_bad(t: torch.Tensor, name: str) -> str:
    """One line naming the first non-finite entry of a 2-D tensor, e.g. ``X row 3 col 7 is nan``."""
    bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
    value = t[bad[0], bad[1]].item()
    kind = "nan" if value != value else ("inf" if value > 0 else "-inf")
    return f"{name} row {bad[0]} col {bad[1]} is {kind}"


def _as_tensor(X, name: str) -> tuple[torch.Tensor, bool]:
    """Validated float64 tensor view of X and whether the caller gave numpy (not torch)."""
    is_torch = isinstance(X, torch.Tensor)
    if not is_torch:
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise GwrayInputError(f"{name} is not an array: {exc}") from None
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise GwrayInputError(f"{name} has non-numeric dtype {X.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(X))
    if X.ndim != 2:
        raise GwrayInputError(f"{name} must be 2-D (n, d), got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise GwrayInputError(f"{name} is empty: shape {tuple(X.shape)}")
    if X.is_complex():
        raise GwrayInputError(f"{name} is complex; real activations expected")
    X = X.detach().to(torch.float64)
    # numpy's isfinite: torch's thread pool is slow to wake on a busy machine for this O(n²) check
    finite = np.isfinite(X.numpy()).all() if X.device.type == "cpu" else bool(torch.isfinite(X).all())
    if not finite:
        raise GwrayInputError(_describe_bad(X, name))
    return X, is_torch


def _sq_euclidean(X: torch.Tensor) -> torch.Tensor:
    """Squared distances via the Gram matrix, with cancellation-prone entries recomputed exactly."""
    X = X - X.mean(dim=0, keepdim=True)  # translation does not change distances; centring helps
    sq = (X * X).sum(dim=1)
    D = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    # Where ||xi - xj||^2 is tiny next to ||xi||^2 + ||xj||^2, the Gram formula lost its digits:
    # recompute those pairs directly (rare: near-duplicate samples).
    bad = D < 1e-8 * (sq[:, None] + sq[None, :])
    bad.fill_diagonal_(False)
    if bool(bad.any()):
        i, j = torch.nonzero(bad, as_tuple=True)
        D[i, j] = ((X[i] - X[j]) ** 2).sum(dim=1)
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return 0.5 * (D + D.T)


def _cosine(X: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity; a zero row is at distance 1 from every other row (as in scikit-learn)."""
    norms = torch.linalg.vector_norm(X, dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    U = X / safe[:, None]
    D = (1.0 - U @ U.T).clamp_(0.0, 2.0)
    D.fill_diagonal_(0.0)
    return 0.5 * (D + D.T)


def _off_diagonal(D: torch.Tensor) -> torch.Tensor:
    n = D.shape[0]
    mask = ~torch.eye(n, dtype=torch.bool, device=D.device)
    return D[mask]


def _scale(D: torch.Tensor, normalize: str) -> float:
    """The normaliser of a distance matrix (0.0 when it has no off-diagonal entries)."""
    if normalize == "none":
        return 1.0
    off = _off_diagonal(D)
    if off.numel() == 0:
        return 0.0
    if normalize == "mean":
        return float(off.mean())
    if normalize == "max":
        return float(off.max())
    # median of an even count = mean of the two middle values (numpy's convention)
    k = off.numel()
    lo = torch.kthvalue(off, (k + 1) // 2).values
    hi = torch.kthvalue(off, k // 2 + 1).values
    return float(0.5 * (lo + hi))


def cost_matrix(X, metric: str = "euclidean", normalize: str = "mean", *, name: str = "X"):
    """Pairwise distances between the rows of one layer's activations.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor, shape (n, d)
        Activations, one row per probe sample. Any real dtype; computed in float64.
    metric : {"euclidean", "sqeuclidean", "cosine", "correlation"}
        Distance between rows. ``cosine`` is 1 - cosine similarity (a zero row is at distance 1
        from the others); ``correlation`` is the cosine distance of the row-centred vectors.
    normalize : {"mean", "max", "median", "none"}
        Divide by the mean, max or median of the off-diagonal entries (so that scaling X does not
        change the result for the euclidean metrics), or leave the distances as they are.
    name : str
        How error messages refer to X (e.g. ``"layer 'block.3'"``).

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (n, n), float64
        Symmetric, non-negative, exact zero diagonal. A tensor on X's device when X is a tensor.
        A constant layer (all distances zero) gives the all-zero matrix and a
        :class:`ConstantLayerWarning`; test for it with ``not C.any()``.

    Raises
    ------
    GwrayInputError
        X is not 2-D, is empty, or holds NaN/inf (the message names the row and column), or an
        unknown metric / normalisation is asked for.
    """
    if metric not in METRICS:
        raise GwrayInputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if normalize not in NORMALIZATIONS:
        raise GwrayInputError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    T, is_torch = _as_tensor(X, name)
    if metric in ("euclidean", "sqeuclidean"):
        D = _sq_euclidean(T)
        if metric == "euclidean":
            D = D.sqrt_()
    else:
        if metric == "correlation":
            T = T - T.mean(dim=1, keepdim=True)
        D = _cosine(T)
    if not bool(D.any()):
        warnings.warn(f"{name} is a constant layer: its cost matrix is all zeros",
                      ConstantLayerWarning, stacklevel=2)
        return D if is_torch else D.cpu().numpy()
    scale = _scale(D, normalize)
    if scale == 0.0:  # median of a layer where most samples coincide: the mean is still > 0
        warnings.warn(f"{name}: median distance is 0, normalising by the mean instead", stacklevel=2)
        scale = _scale(D, "mean")
    D = D / scale
    return D if is_torch else D.cpu().numpy()


def check_cost(C, name: str = "C", *, rtol: float = 1e-8) -> np.ndarray:
    """Validate a precomputed cost matrix and return it as a symmetric float64 numpy array.

    Parameters
    ----------
    C : array-like or torch.Tensor, shape (n, n)
        Intra-layer costs (e.g. from :func:`cost_matrix` or the user's own distances).
    name : str
        How error messages refer to C.
    rtol : float
        Largest tolerated asymmetry ``max|C - C.T|``, relative to ``max(1, max|C|)``.

    Returns
    -------
    numpy.ndarray, shape (n, n), float64
        ``(C + C.T) / 2`` (exactly symmetric, which the solver relies on); an exactly symmetric
        float64 C comes back uncopied (treat it as read-only).

    Raises
    ------
    GwrayInputError
        C is not a non-empty square 2-D array, holds NaN/inf (position named) or is not symmetric.
    """
    T, _ = _as_tensor(C, name)
    if T.shape[0] != T.shape[1]:
        raise GwrayInputError(f"{name} must be square, got shape {tuple(T.shape)}")
    A = T.cpu().numpy()
    asym = A - A.T
    if not asym.any():  # exactly symmetric (cost_matrix's output): nothing to average
        return A
    np.abs(asym, out=asym)
    worst = float(asym.max())
    if worst > rtol * max(1.0, float(np.abs(A).max())):
        i, j = np.unravel_index(int(asym.argmax()), asym.shape)
        raise GwrayInputError(f"{name} is not symmetric: {name}[{i},{j}] - {name}[{j},{i}] = "
                              f"{A[i, j] - A[j, i]:.3g}")
    return 0.5 * (A + A.T)
