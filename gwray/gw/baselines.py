"""Similarity baselines computed on the same activations as GW: linear CKA, RSA, identity distortion.

These are what a reader already trusts, shown beside the GW matrix so that a reader can see where
GW agrees with them and where it does not.

- Linear CKA (Kornblith et al., 2019) with the debiased HSIC estimator (Song et al., 2012; the
  "debiased CKA" of Nguyen et al., 2021), computed through U-centred Gram matrices
  (Szekely & Rizzo, 2014), which give the same unbiased estimator in O(n^2) per pair.
- RSA: Spearman rank correlation of the strict upper triangles of two intra-layer cost matrices.
- Identity distortion: the GW objective of the identity coupling (samples are aligned), i.e. the
  cheap upper bound of GW; it compares layers without any re-matching of samples.

Pure math on arrays: no Ray, no I/O.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from gwray.errors import GwrayInputError

KINDS = ("cka", "rsa", "identity")


def _rows(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise GwrayInputError(f"{name}: expected an (n, d) array with n >= 2, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise GwrayInputError(f"{name}: contains NaN or inf")
    return X


def _square(C, name: str) -> np.ndarray:
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 3:
        raise GwrayInputError(f"{name}: expected a square (n, n) matrix with n >= 3, got shape {C.shape}")
    if not np.isfinite(C).all():
        raise GwrayInputError(f"{name}: contains NaN or inf")
    return C


def _centred_gram(X: np.ndarray, debiased: bool) -> np.ndarray:
    """Centred linear Gram matrix of ``X`` (n, d) -> (n, n).

    ``debiased=False``: H K H with H = I - 11^T/n (the biased HSIC's centring).
    ``debiased=True``: the U-centred Gram (zero diagonal), whose Frobenius inner products are
    (n (n - 3)) times the unbiased HSIC estimator.
    """
    n = X.shape[0]
    K = X @ X.T
    if not debiased:
        Xc = X - X.mean(axis=0)
        return Xc @ Xc.T
    if n < 4:
        raise GwrayInputError(f"debiased CKA: needs n >= 4 samples, got {n}")
    np.fill_diagonal(K, 0.0)
    row = K.sum(axis=0) / (n - 2)
    U = K - row[:, None] - row[None, :] + K.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(U, 0.0)
    return U


def _cka_from_grams(A: np.ndarray, B: np.ndarray) -> float:
    ab = float(np.vdot(A, B))
    aa = float(np.vdot(A, A))
    bb = float(np.vdot(B, B))
    if aa <= 0.0 or bb <= 0.0:
        # The debiased self-similarity can be <= 0 for a near-constant representation: CKA is
        # undefined there; NaN says so rather than a made-up value.
        return float("nan")
    return ab / np.sqrt(aa * bb)


def linear_cka(X, Y, debiased: bool = True) -> float:
    """Linear centred kernel alignment between two representations of the same samples.

    Parameters
    ----------
    X : array_like, shape (n, d1)
        Row i is sample i in the first layer.
    Y : array_like, shape (n, d2)
        Row i is the same sample i in the second layer.
    debiased : bool
        Use the unbiased HSIC estimator (recommended when d is not small against n).

    Returns
    -------
    float
        CKA in [0, 1] for the biased form (debiased values can be slightly negative); 1 for
        identical representations, invariant to orthogonal transforms and isotropic scaling.
        NaN when one representation has no (debiased) variance.
    """
    X = _rows(X, "X")
    Y = _rows(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise GwrayInputError(f"Y: has {Y.shape[0]} samples but X has {X.shape[0]}")
    return _cka_from_grams(_centred_gram(X, debiased), _centred_gram(Y, debiased))


def _upper(C: np.ndarray) -> np.ndarray:
    return C[np.triu_indices(C.shape[0], k=1)]


def _ranks(C: np.ndarray) -> np.ndarray:
    r = rankdata(_upper(C))
    r -= r.mean()
    norm = np.linalg.norm(r)
    return r / norm if norm > 0 else r


def rsa(C1, C2) -> float:
    """Representational similarity: Spearman correlation of the strict upper triangles.

    Parameters
    ----------
    C1, C2 : array_like, shape (n, n)
        Intra-layer cost (dissimilarity) matrices of the same n samples, e.g. from
        :func:`gwray.gw.costs.cost_matrix`.

    Returns
    -------
    float
        Rank correlation in [-1, 1] (ties get average ranks); NaN when one matrix is constant.
    """
    C1 = _square(C1, "C1")
    C2 = _square(C2, "C2")
    if C1.shape != C2.shape:
        raise GwrayInputError(f"C2: shape {C2.shape} differs from C1's {C1.shape}")
    r1, r2 = _ranks(C1), _ranks(C2)
    if not r1.any() or not r2.any():
        return float("nan")
    return float(r1 @ r2)


def identity_distortion(C1, C2) -> float:
    """GW objective of the identity coupling (row i matched to row i), with uniform weights.

    Parameters
    ----------
    C1, C2 : array_like, shape (n, n)
        Cost matrices of the same, aligned samples.

    Returns
    -------
    float
        sum_ij (C1_ij - C2_ij)^2 / n^2, an upper bound of the GW value (POT's convention).
    """
    from gwray.gw.bounds import identity_cost

    return float(identity_cost(_square(C1, "C1"), _square(C2, "C2")))


def baseline_matrices(layers, kinds=KINDS, *, debiased: bool = True, metric: str = "euclidean",
                      normalize: str = "mean") -> dict:
    """All-pairs baseline matrices between layers, each representation processed once.

    Parameters
    ----------
    layers : sequence of array_like, each (n, d_l)
        L layers' activations on the same n samples (rows aligned).
    kinds : iterable of {"cka", "rsa", "identity"}
        Which matrices to compute.
    debiased : bool
        Debiased CKA estimator.
    metric, normalize : str
        Cost matrices for RSA and identity distortion, as in :func:`gwray.gw.costs.cost_matrix`.

    Returns
    -------
    dict
        kind -> (L, L) float64 symmetric matrix. CKA and RSA are similarities (diagonal 1),
        identity distortion is a distance (diagonal 0).
    """
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise GwrayInputError(f"baselines: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    arrays = [_rows(X, f"layer {i}") for i, X in enumerate(layers)]
    if len({X.shape[0] for X in arrays}) > 1:
        raise GwrayInputError("layers: all layers must have the same number of samples")
    L = len(arrays)
    out = {}
    if "cka" in kinds:
        grams = [_centred_gram(X, debiased) for X in arrays]
        out["cka"] = _fill(L, lambda i, j: _cka_from_grams(grams[i], grams[j]), diag=1.0)
    if "rsa" in kinds or "identity" in kinds:
        from gwray.gw.costs import cost_matrix

        costs = [cost_matrix(X, metric=metric, normalize=normalize) for X in arrays]
        if "rsa" in kinds:
            ranks = [_ranks(C) for C in costs]
            out["rsa"] = _fill(L, lambda i, j: float(ranks[i] @ ranks[j]), diag=1.0)
        if "identity" in kinds:
            out["identity"] = _fill(L, lambda i, j: identity_distortion(costs[i], costs[j]), diag=0.0)
    return out


def _fill(L: int, value, diag: float) -> np.ndarray:
    M = np.full((L, L), diag, dtype=np.float64)
    for i in range(L):
        for j in range(i + 1, L):
            M[i, j] = M[j, i] = value(i, j)
    return M
