"""Is there block structure beyond depth drift? A parametric-bootstrap test.

Layer representations drift with depth in every network, so "no sub-networks" does not mean
"random matrix": it means *distances grow with depth, layers moving by uneven but unclustered
steps, with no blocks*. The test:

1. **Drift fit.** Over the pairs i < j, the distances d_ij are regressed on a smooth basis of
   the pair's position u = (i + j) / 2 and lag v = j − i (both scaled to [0, 1]): additive drift
   h(x_j) − h(x_i) and Legendre polynomials in u times {√v, v², v³} (at most a quarter of the
   pairs as parameters). This holds linear, concave, saturating and accelerating drift, and drift
   whose rate changes along depth, but not a jump.
2. **Statistic.** For a partition (labels), the block model adds one mean per pair of groups on
   top of the drift. The statistic is an F ratio (:func:`block_statistic`): the variance the
   blocks explain per block parameter over the variance left after drift and blocks per degree
   of freedom — ≈ 1 for blocks that only fit noise, ≫ 1 for real blocks.
3. **Null.** Real layers do not move by even steps: a residual net whose every block is the same
   kind of random update moves 0.5-1.7x its mean step from layer to layer, and a method finds
   "groups" in that unevenness. So the B null matrices put the layers at *random uneven depths*
   — steps exp(σ z), z standard normal, rescaled to [0, 1] — evaluate the fitted drift there,
   and add wild-bootstrap noise (each drift residual, leverage-corrected, times a random sign:
   heteroscedastic noise is kept); clipped at 0. σ = ``STEP_SD_GAIN`` × the robust spread of the
   observed log neighbour distances (:func:`step_spread`; the median ignores the few large jumps
   at block boundaries). On each null matrix *the same method with the same settings* picks its
   partition and T is computed for it, so the null holds everything the method can find in
   uneven drift and noise.
4. **p-value** = (1 + #{T_null ≥ T_obs}) / (1 + B); drawing stops early once ``STOP_AFTER``
   null statistics reach T_obs (then p = STOP_AFTER / draws, Besag & Clifford's sequential
   p-value, also valid), so a clearly non-significant partition costs a fraction of B draws.

Calibration of ``STEP_SD_GAIN`` (B = 39, α = 0.05; GW matrices of random residual nets, 9 layers,
96 probe samples, ``tests/test_null_model.py::_drift_net_layers``): significant in 22 / 20 / 16 of
48 nets (contiguous / spectral / greedy) with even steps, 12 / 7 / 8 at gain 1, 5 / 3 / 3 at 2.5,
3 / 2 / 2 at 3 (≈ α); checked on 48 other nets (1 / 1 / 1 / 1 of 48 with louvain) and 24 nets of
17 layers (1 / 0 / 1). The planted-block tests keep ARI ≥ 0.95 at gain 3 because the F ratio's
denominator is the variance left after the blocks (T = 63 for a noisy 3-3-3-3 split, null ≤ 21).

Pure math: no Ray, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.polynomial import legendre
from scipy.stats import theilslopes

#: human-readable description of the null (stored with every test result)
NULL_DESCRIPTION = ("depth drift with uneven steps: distances over pairs i<j regressed on additive "
                    "drift h(x_j) − h(x_i) and lag terms (√v, v², v³); null matrices evaluate that "
                    "drift at random uneven layer depths (log-normal steps, 3× the robust spread of "
                    "the log neighbour distances) plus wild-bootstrap residual noise; the same "
                    "method reruns on every null matrix; F ratio of the blocks beyond the drift")
#: highest degree of the additive drift h(x) (higher degrees start to draw steps, i.e. blocks)
ADDITIVE_DEGREE = 8
#: the drift has at most n / BUDGET_DIV parameters (n = pairs)
BUDGET_DIV = 4
#: null statistics at or above the observed one after which drawing stops (p = h / draws so far;
#: Besag & Clifford 1991): a clearly non-significant test costs ~h / p draws instead of B
STOP_AFTER = 10
#: log-step spread of the null's layer depths = this × :func:`step_spread` (calibrated on GW
#: matrices of random residual nets, see the module docstring)
STEP_SD_GAIN = 3.0
#: T ≤ this, or a drift fit with (numerically) no residual, is no evidence of blocks (p = 1)
TINY = 1e-12


def pair_index(L: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the pairs i < j, each shape (L(L−1)/2,)."""
    return np.triu_indices(L, 1)


def drift_basis(L: int, x: np.ndarray | None = None) -> np.ndarray:
    """The smooth-drift design over the pairs i < j.

    Parameters
    ----------
    L : int
        Number of layers, ≥ 2.
    x : np.ndarray, shape (L,), optional
        Increasing layer positions in [0, 1]; default evenly spaced, depth / (L − 1).

    Returns
    -------
    np.ndarray, shape (L(L−1)/2, p), float64
        With x = depth / (L − 1), s = x_i < t = x_j, u = (s + t)/2, v = t − s: the constant, v,
        *additive* drift P_a(t) − P_a(s) (a layer position h(x) that moves smoothly with depth, a
        = 2 … 8) and *lag* drift P_c(u)·q(v) for q in (√v, v², v³), c = 0 … 3 (saturation whose
        rate changes along depth); P = Legendre polynomials on [0, 1]. Terms enter simplest
        first, as many as p ≤ max(2, n/4) allows (n = L(L − 1)/2 pairs).
    """
    iu, ju = pair_index(L)
    n = iu.size
    x = np.arange(L) / float(max(L - 1, 1)) if x is None else np.asarray(x, dtype=float)
    s, t = x[iu], x[ju]
    u, v = (s + t) / 2.0, t - s

    def leg(a, z):
        return legendre.legval(2.0 * z - 1.0, np.eye(a + 1)[a])

    cols = [(0, np.ones(n)), (0, v)]
    cols += [(a - 1, leg(a, t) - leg(a, s)) for a in range(2, ADDITIVE_DEGREE + 1)]
    cols += [(c + b, leg(c, u) * q) for c in range(4) for b, q in enumerate((np.sqrt(v), v**2, v**3), 1)]
    cols.sort(key=lambda col: col[0])  # stable: simplest terms first
    budget = max(2, n // BUDGET_DIV)
    return np.column_stack([col for _, col in cols[:budget]])


@dataclass
class DriftFit:
    """The drift fit of one matrix.

    Attributes
    ----------
    L : int
    Q : np.ndarray, shape (n, r)
        Orthonormal basis of the drift design's column space (n = L(L−1)/2 pairs).
    fitted : np.ndarray, shape (n,)
        Fitted drift at each pair i < j.
    residual : np.ndarray, shape (n,)
        d_ij − fitted.
    scale : np.ndarray, shape (n,)
        Leverage-corrected residual r / √(1 − h): the noise of the null draws.
    coef : np.ndarray, shape (p,)
        Drift coefficients on :func:`drift_basis` (so the drift can be evaluated at other positions).
    step_sd : float
        Log-step spread of the null's layer depths: ``STEP_SD_GAIN`` × :func:`step_spread` (how
        unevenly the layers move; 0 gives even steps).
    """

    L: int
    Q: np.ndarray
    fitted: np.ndarray
    residual: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    step_sd: float


def _orthonormal(X: np.ndarray) -> np.ndarray:
    Q, R = np.linalg.qr(X)
    keep = np.abs(np.diag(R)) > 1e-10 * max(1.0, float(np.abs(np.diag(R)).max()))
    return Q[:, keep]


def fit_drift(D: np.ndarray) -> DriftFit:
    """Least-squares fit of the drift model to a checked (L, L) distance matrix, with the
    unevenness of its steps (``step_sd``) for the null draws."""
    L = D.shape[0]
    iu, ju = pair_index(L)
    y = D[iu, ju]
    X = drift_basis(L)
    Q = _orthonormal(X)
    fitted = Q @ (Q.T @ y)
    resid = y - fitted
    lev = np.minimum((Q**2).sum(axis=1), 0.99)
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return DriftFit(L, Q, fitted, resid, resid / np.sqrt(1.0 - lev), coef,
                    STEP_SD_GAIN * step_spread(D))


def step_spread(D: np.ndarray) -> float:
    """Robust spread of the log neighbour distances d(i, i+1) around their trend along depth.

    σ = 1.4826 · MAD of log d(i, i+1) around a Theil–Sen line in i (a steady trend along depth is
    not unevenness): the medians ignore the few large jumps at block boundaries, so a noise-free
    block split has σ = 0, while a net whose layers move by uneven steps has σ ≈ their log spread.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances.

    Returns
    -------
    float ≥ 0; 0 for L < 4.
    """
    nb = np.diag(D, 1)
    if nb.size < 3:
        return 0.0
    k = np.arange(nb.size, dtype=float)
    logd = np.log(np.maximum(nb, 1e-12 * max(float(nb.max()), 1e-300)))
    slope, icpt = theilslopes(logd, k)[:2]
    g = logd - slope * k - icpt
    return float(1.4826 * np.median(np.abs(g - np.median(g))))


def block_design(labels: np.ndarray) -> np.ndarray:
    """One indicator column per pair of groups (unordered, within included) over the pairs i < j.

    labels : (L,) int → (L(L−1)/2, m) float64, m = number of group pairs present.
    """
    labels = np.asarray(labels)
    iu, ju = pair_index(labels.size)
    a, b = np.minimum(labels[iu], labels[ju]), np.maximum(labels[iu], labels[ju])
    _, cell = np.unique(a * (labels.max() + 1) + b, return_inverse=True)
    X = np.zeros((iu.size, int(cell.max()) + 1 if cell.size else 0))
    X[np.arange(iu.size), cell] = 1.0
    return X


def block_statistic(D: np.ndarray, labels, Q: np.ndarray | None = None) -> float:
    """How much better blocks on top of the drift fit than the drift alone: an F ratio.

    T = [(RSS_drift − RSS_drift+blocks) / m] / [RSS_drift+blocks / (n − p − m)]: the variance each
    of the m block parameters explains beyond the drift, over the variance left after drift and
    blocks per degree of freedom (n pairs, p drift parameters; RSS_drift / (n − p) when no degree
    of freedom is left). Near 1 for a partition unrelated to the residual; real blocks give T ≫ 1
    (unbounded as the noise vanishes: the left-over variance is the noise, not the blocks). Per
    parameter, so that more groups do not win by fitting noise.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances.
    labels : array_like, shape (L,), int
        The partition.
    Q : np.ndarray, optional
        Orthonormal drift basis (``fit_drift(D).Q``; computed when omitted).

    Returns
    -------
    float ≥ 0; 0 when the blocks add nothing the drift cannot express, or the drift leaves no
    residual.
    """
    L = D.shape[0]
    if Q is None:
        Q = _orthonormal(drift_basis(L))
    iu, ju = pair_index(L)
    y = D[iu, ju]
    r0 = y - Q @ (Q.T @ y)
    rss0, dof = float(r0 @ r0), iu.size - Q.shape[1]
    if rss0 <= TINY * max(1.0, float(y @ y)) or dof < 1:
        return 0.0
    Xb = block_design(labels)
    Xb = Xb - Q @ (Q.T @ Xb)  # the blocks' part that the drift cannot already express
    Qb = _orthonormal(Xb) if Xb.shape[1] else Xb
    if Qb.shape[1] == 0:
        return 0.0
    explained = Qb.T @ r0
    e = float(explained @ explained)
    m = Qb.shape[1]
    if dof - m < 1:
        return float(e / m / (rss0 / dof))
    return float(e / m / (max(rss0 - e, TINY * rss0) / (dof - m)))


def null_matrices(fit: DriftFit, draws: int, rng: np.random.Generator):
    """Yield ``draws`` null matrices (L, L): drift at uneven layer positions + random-sign residuals.

    The positions have steps exp(step_sd · z) (z standard normal), rescaled to span [0, 1]; the
    drift is evaluated there, the wild-bootstrap noise added, the result clipped at 0.
    """
    iu, ju = pair_index(fit.L)
    for _ in range(draws):
        fitted = fit.fitted
        if fit.step_sd > 0:
            x = np.concatenate([[0.0], np.cumsum(np.exp(fit.step_sd * rng.standard_normal(fit.L - 1)))])
            fitted = drift_basis(fit.L, x / x[-1]) @ fit.coef
        y = np.maximum(fitted + fit.scale * rng.choice((-1.0, 1.0), size=fit.scale.size), 0.0)
        M = np.zeros((fit.L, fit.L))
        M[iu, ju] = y
        yield M + M.T


@dataclass
class BlockTest:
    """The test of one partition against depth drift with uneven steps.

    Attributes
    ----------
    statistic : float or None
        T of the observed partition (None when the test does not apply: k = 1, L < 4, no draws).
    p_value : float or None
        (1 + #{T_null ≥ T}) / (1 + n_null), or h / n_null when stopped early at h exceedances.
    alpha : float
        Level; ``significant`` = p ≤ alpha.
    null : str
        What the null is (:data:`NULL_DESCRIPTION`).
    n_null : int
        Null matrices drawn (fewer than asked when stopped early).
    null_statistics : np.ndarray, shape (n_null,)
    """

    statistic: float | None
    p_value: float | None
    alpha: float
    null: str
    n_null: int
    null_statistics: np.ndarray

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value <= self.alpha

    def to_dict(self) -> dict:
        """JSON-ready ``{statistic, p_value, alpha, null, n_null}``."""
        return {"statistic": self.statistic, "p_value": self.p_value, "alpha": float(self.alpha),
                "null": self.null, "n_null": int(self.n_null)}


def block_test(D: np.ndarray, labels, partition: Callable[[np.ndarray], np.ndarray], *,
               n_null: int = 99, alpha: float = 0.05, seed: int = 0) -> BlockTest:
    """Test a partition found by ``partition`` against the depth-drift null (uneven steps).

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances.
    labels : array_like, shape (L,), int
        ``partition(D)``, the observed partition.
    partition : callable
        ``partition(M) -> labels (L,)``: the same method and settings, rerun on each null matrix.
    n_null : int
        Null matrices B (the smallest p-value is 1 / (B + 1)).
    alpha : float
        Level in (0, 1).
    seed : int
        Seed of the null draws.

    Returns
    -------
    BlockTest
    """
    L, labels = D.shape[0], np.asarray(labels)
    if int(labels.max()) + 1 <= 1 or L < 4 or n_null < 1:
        return BlockTest(None, None, float(alpha), NULL_DESCRIPTION, 0, np.zeros(0))
    fit = fit_drift(D)
    t_obs = block_statistic(D, labels, fit.Q)
    if t_obs <= TINY:
        return BlockTest(t_obs, 1.0, float(alpha), NULL_DESCRIPTION, 0, np.zeros(0))
    rng = np.random.default_rng([int(seed), 13])
    null, above = [], 0
    for M in null_matrices(fit, int(n_null), rng):
        null.append(block_statistic(M, partition(M), fit.Q))
        above += null[-1] >= t_obs - 1e-12
        if above >= STOP_AFTER:  # Besag & Clifford's sequential p-value: clearly not significant
            p = above / len(null)
            break
    else:
        p = (1.0 + above) / (1.0 + n_null)
    return BlockTest(t_obs, float(p), float(alpha), NULL_DESCRIPTION, len(null), np.array(null))
