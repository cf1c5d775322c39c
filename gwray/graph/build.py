"""Layer-distance matrices → checked arrays, similarities and a weighted networkx graph of layers.

The similarity kernel is stated once here and used by every graph method:

    S_ij = exp(-D_ij² / σ²),   σ = median of the off-diagonal entries of D (i ≠ j)

so that a pair at the typical distance has similarity e⁻¹ ≈ 0.37, closer pairs tend to 1 and far
pairs to 0, whatever the unit of D (GW values vary by orders of magnitude between cost
normalisations). Pure math: no Ray, no I/O.
"""
from __future__ import annotations

import numbers

import networkx as nx
import numpy as np

from gwray.errors import GwrayInputError

#: relative tolerance on asymmetry and negativity (GW values of a pair solved twice differ by
#: solver noise; anything larger is a caller's mistake, e.g. a matrix of another quantity).
REL_TOL = 1e-6


def check_distances(D, names=None, *, arg: str = "D") -> tuple[np.ndarray, list[str]]:
    """Validate a layer-distance matrix and its layer names.

    Parameters
    ----------
    D : array_like, shape (L, L)
        Distances between layers (e.g. GW values): finite, ≥ 0, symmetric.
    names : sequence of str, length L, optional
        Layer names in depth order; default ``"0" … "L-1"``.
    arg : str
        The argument name used in error messages.

    Returns
    -------
    D : np.ndarray, shape (L, L), float64
        Symmetrised ``(D + Dᵀ)/2`` with a zero diagonal and tiny negatives clipped to 0.
    names : list of str, length L

    Raises
    ------
    GwrayInputError
        Non-square, non-finite, negative or asymmetric beyond ``REL_TOL`` × max|D|, or names of
        the wrong length / duplicated.
    """
    try:
        A = np.array(D, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GwrayInputError(f"{arg}: not a numeric matrix ({exc})") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise GwrayInputError(f"{arg}: must be a non-empty square (L, L) matrix, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        i, j = np.argwhere(~np.isfinite(A))[0]
        raise GwrayInputError(f"{arg}: non-finite entry {A[i, j]} at ({i}, {j})")
    tol = REL_TOL * max(1.0, float(np.abs(A).max()))
    if A.min() < -tol:
        i, j = np.unravel_index(int(np.argmin(A)), A.shape)
        raise GwrayInputError(f"{arg}: negative distance {A[i, j]:.3g} at ({i}, {j})")
    asym = np.abs(A - A.T)
    if asym.max() > tol:
        i, j = np.unravel_index(int(np.argmax(asym)), A.shape)
        raise GwrayInputError(f"{arg}: not symmetric: D[{i},{j}]={A[i, j]:.6g} vs D[{j},{i}]={A[j, i]:.6g}")
    A = np.clip((A + A.T) / 2.0, 0.0, None)
    np.fill_diagonal(A, 0.0)
    L = A.shape[0]
    if names is None:
        names = [str(i) for i in range(L)]
    else:
        if isinstance(names, str):
            raise GwrayInputError("names: must be a list of L layer names, got a string")
        names = [str(n) for n in names]
        if len(names) != L:
            raise GwrayInputError(f"names: {len(names)} names for a {L}×{L} matrix {arg}")
        if len(set(names)) != L:
            dup = next(n for n in names if names.count(n) > 1)
            raise GwrayInputError(f"names: duplicated layer name {dup!r}")
    return A, names


def kernel_sigma(D: np.ndarray) -> float:
    """The kernel width σ: median of the off-diagonal distances (positive ones if the median is 0).

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances (see :func:`check_distances`).

    Returns
    -------
    float
        σ > 0 in the units of D (1.0 when every off-diagonal distance is 0 or L = 1).
    """
    off = D[~np.eye(D.shape[0], dtype=bool)]
    sigma = float(np.median(off)) if off.size else 0.0
    if sigma <= 0.0:
        pos = off[off > 0]
        sigma = float(np.median(pos)) if pos.size else 1.0
    return sigma


def similarity(D: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian similarity ``exp(-D²/σ²)``.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances.
    sigma : float, optional
        Kernel width; default :func:`kernel_sigma` (off-diagonal median).

    Returns
    -------
    np.ndarray, shape (L, L)
        Similarities in (0, 1], 1 on the diagonal.
    """
    s = kernel_sigma(D) if sigma is None else float(sigma)
    if not s > 0:
        raise GwrayInputError(f"sigma: must be > 0, got {sigma}")
    return np.exp(-(D / s) ** 2)


def knn_mask(D: np.ndarray, knn: int) -> np.ndarray:
    """Symmetric k-nearest-neighbour mask: keep (i, j) when j is among i's knn nearest or vice versa.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
    knn : int
        Neighbours per layer, 1 ≤ knn ≤ L - 1.

    Returns
    -------
    np.ndarray, shape (L, L), bool
        False on the diagonal.
    """
    L = D.shape[0]
    if not isinstance(knn, numbers.Integral) or not 1 <= knn <= L - 1:
        raise GwrayInputError(f"knn: must be an integer in [1, {L - 1}], got {knn!r}")
    order = np.argsort(D + np.diag(np.full(L, np.inf)), axis=1, kind="stable")[:, :knn]
    mask = np.zeros((L, L), dtype=bool)
    mask[np.repeat(np.arange(L), knn), order.ravel()] = True
    return mask | mask.T


def build_graph(D, names=None, *, sigma: float | None = None, knn: int | None = None) -> nx.Graph:
    """The weighted similarity graph of layers.

    Parameters
    ----------
    D : array_like, shape (L, L)
        Layer distances (validated with :func:`check_distances`).
    names : sequence of str, length L, optional
        Layer names, stored as the node attribute ``name``.
    sigma : float, optional
        Kernel width (default: off-diagonal median of D).
    knn : int, optional
        Keep only each layer's ``knn`` nearest neighbours (symmetrised); default: complete graph.

    Returns
    -------
    networkx.Graph
        Nodes ``0 … L-1`` in depth order with attributes ``name`` and ``depth``; edges (i ≠ j)
        with ``weight`` = similarity and ``distance`` = D_ij. ``G.graph`` holds ``sigma``,
        ``kernel`` and ``knn``.
    """
    A, names = check_distances(D, names)
    s = kernel_sigma(A) if sigma is None else float(sigma)
    S = similarity(A, s)
    L = A.shape[0]
    keep = knn_mask(A, knn) if knn is not None else ~np.eye(L, dtype=bool)
    G = nx.Graph(kernel="exp(-D^2/sigma^2)", sigma=s, knn=knn)
    G.add_nodes_from((i, {"name": names[i], "depth": i}) for i in range(L))
    iu, ju = np.nonzero(np.triu(keep, 1))
    G.add_edges_from((int(i), int(j), {"weight": float(S[i, j]), "distance": float(A[i, j])})
                     for i, j in zip(iu, ju))
    return G
