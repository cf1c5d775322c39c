"""What a k = 1 answer could have seen: the smallest boundary jump the test detects on this matrix.

"No significant structure" is only informative next to the test's power at this depth and noise.
:func:`detectable_jump` adds a jump of δ to every distance across the boundaries of a partition
(the rejected candidate's, or one boundary in the middle) of the *observed* matrix, so the drift,
the uneven steps and the noise stay this matrix's own, and reruns the same method and test for
increasing δ. δ is measured in units of the matrix's median layer-to-layer distance
(median of D[i, i + 1]): "the test would have found these boundaries had each been a jump of at
least 3 ordinary layer steps". Pure math: no I/O.
"""
from __future__ import annotations

import numpy as np

#: jump sizes tried, in median layer-to-layer distances
JUMPS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0)
#: null draws per power test in a run (p ≥ 1/40 < α = 0.05): a fraction of the answer's own cost
POWER_DRAWS = 39


def detectable_jump(D, labels=None, *, method: str = "contiguous", alpha: float = 0.05, n_null: int = 99,
                    seed: int = 0, jumps=JUMPS) -> dict:
    """The smallest jump across ``labels``' boundaries that the block-structure test detects.

    Parameters
    ----------
    D : array_like, shape (L, L)
        The observed layer distances (checked as :func:`~gwray.graph.communities.find_subnetworks`
        does).
    labels : array_like, shape (L,), optional
        The partition whose boundaries get the jump (e.g. the rejected candidate); default one
        boundary in the middle of the depth.
    method, alpha, n_null, seed
        Those of the answer being qualified (``k="auto"`` is used).
    jumps : sequence of float
        Jump sizes to try, increasing, in units of the median of D[i, i + 1].

    Returns
    -------
    dict
        ``jump`` (the smallest detected size in those units, or None when none of ``jumps``
        was), ``unit`` (the median layer-to-layer distance), ``boundaries`` (indices i of the
        planted boundaries, between layers i and i + 1), ``tried`` (the sizes tested, in order,
        up to the first detected), ``alpha``, ``n_null``, ``method``.
    """
    from gwray.graph.build import check_distances
    from gwray.graph.communities import find_subnetworks

    D, _ = check_distances(D, None)
    L = D.shape[0]
    lab = np.asarray(labels) if labels is not None else (np.arange(L) >= L // 2).astype(int)
    unit = float(np.median(np.diag(D, 1)))
    cross = (lab[:, None] != lab[None, :]).astype(float)
    out = {"jump": None, "unit": unit, "boundaries": [int(i) for i in np.flatnonzero(lab[1:] != lab[:-1])],
           "tried": [], "alpha": float(alpha), "n_null": int(n_null), "method": method}
    if L < 4 or unit <= 0 or not cross.any():
        return out
    for jump in jumps:
        out["tried"].append(float(jump))
        r = find_subnetworks(D + jump * unit * cross, method=method, k="auto", alpha=alpha, n_null=n_null, seed=seed)
        if r.significant:
            out["jump"] = float(jump)
            break
    return out
