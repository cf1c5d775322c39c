"""Which blocks to drop: the four selection rules, as plain functions over arrays.

A network of ``L`` blocks has ``L + 1`` residual-stream states: ``h_0`` (the embedding output, the
input of block 0) and ``h_{i+1}`` (the raw output of block ``i``, *before* any final norm). Block
``i`` maps ``h_i`` to ``h_{i+1}``.

- ``groups`` (gwray; :func:`group_order`): blocks whose input and output layers fall in the same GW
  group only move the representation inside that group, so they go first, smallest
  GW(h_i, h_{i+1}) first; each group's entry block (input in the previous group) is kept until
  every such block is gone, then the entry blocks follow by the same score.
- ``bi`` (ShortGPT, Men et al. 2024, arXiv 2403.03853, eq. 1; :func:`block_influence`):
  BI_i = 1 − E_{x,t} [ h_{i,t} · h_{i+1,t} / (‖h_{i,t}‖ ‖h_{i+1,t}‖) ], the expectation over every
  (non-padding) token t of every probe text x; the K blocks with the lowest BI are dropped.
- ``angular`` (Gromov et al. 2024, arXiv 2403.17887, eq. 7; :func:`angular_distances`):
  d(h_ℓ, h_{ℓ+n}) = (1/π) arccos( h_{ℓ,T} · h_{ℓ+n,T} / (‖h_{ℓ,T}‖ ‖h_{ℓ+n,T}‖) ) at the last token
  T of each text, averaged over the texts; the n contiguous blocks ℓ*, …, ℓ* + n − 1 with
  ℓ* = argmin_ℓ d are dropped.
- ``random`` (:func:`random_choice`): K distinct blocks drawn uniformly; callers average seeds.
"""
from __future__ import annotations

import warnings

import numpy as np

from gwray.errors import GwrayInputError

METHODS = ("groups", "bi", "angular", "random")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, (N, d) × (N, d) → (N,) float64 (a zero row gives 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("nd,nd->n", a, b) / np.maximum(norms, 1e-300)


def block_influence(states) -> np.ndarray:
    """ShortGPT Block Influence of each block.

    Parameters
    ----------
    states : list of L + 1 arrays, each (N, d)
        Row r of every array is the same token; ``states[i]`` is block i's input, ``states[i+1]``
        its output.

    Returns
    -------
    ndarray, shape (L,)
        BI_i = 1 − mean_r cos(states[i][r], states[i+1][r]); small = the block barely turns the stream.
    """
    return np.array([1.0 - float(cosine_rows(states[i], states[i + 1]).mean()) for i in range(len(states) - 1)])


def angular_distances(last, n: int) -> np.ndarray:
    """Mean angular distance between the stream before block ℓ and after block ℓ + n − 1.

    Parameters
    ----------
    last : list of L + 1 arrays, each (m, d)
        The states at each text's last token (row r = text r).
    n : int
        Number of contiguous blocks, 1 ≤ n ≤ L.

    Returns
    -------
    ndarray, shape (L − n + 1,)
        Entry ℓ = mean_r arccos(cos(last[ℓ][r], last[ℓ+n][r])) / π, in [0, 1].
    """
    depth = len(last) - 1
    if not 1 <= n <= depth:
        raise GwrayInputError(f"n: must be in [1, {depth}] for a model with {depth} blocks, got {n}")
    return np.array([float(np.arccos(np.clip(cosine_rows(last[l], last[l + n]), -1.0, 1.0)).mean()) / np.pi
                     for l in range(depth - n + 1)])


def angular_choice(last, k: int) -> list[int]:
    """The k contiguous blocks ℓ*, …, ℓ* + k − 1 with ℓ* = argmin of :func:`angular_distances` (k = 0: none)."""
    if k == 0:
        return []
    start = int(np.argmin(angular_distances(last, k)))
    return list(range(start, start + k))


def bi_order(bi) -> list[int]:
    """Block indices by increasing Block Influence (ShortGPT's drop order; ties keep depth order)."""
    return [int(i) for i in np.argsort(np.asarray(bi), kind="stable")]


def group_order(groups, D, names) -> list[int]:
    """Drop order from gwray's layer groups (see the module docstring).

    Parameters
    ----------
    groups : list of list of str
        Layer groups, e.g. ``find_subnetworks(D, names=names).groups``.
    D : array_like, shape (L + 1, L + 1)
        GW distances between the layers ``names`` (stream after the embeddings and after each block).
    names : list of str
        Layer names in depth order; block i has input layer ``names[i]``, output ``names[i + 1]``.

    Returns
    -------
    list of int
        All L block indices: within-group blocks first, then entry blocks, each part by increasing
        D[i, i + 1].
    """
    D = np.asarray(D, dtype=np.float64)
    if D.shape != (len(names), len(names)):
        raise GwrayInputError(f"D: shape {D.shape} does not match {len(names)} layer names")
    label = {name: g for g, members in enumerate(groups) for name in members}
    missing = [n for n in names if n not in label]
    if missing:
        raise GwrayInputError(f"groups: layer {missing[0]!r} is in no group")
    blocks = range(len(names) - 1)
    redundancy = {i: D[i, i + 1] for i in blocks}
    within = sorted((i for i in blocks if label[names[i]] == label[names[i + 1]]), key=redundancy.get)
    rest = sorted((i for i in blocks if i not in set(within)), key=redundancy.get)
    return within + rest


def pruning_groups(result: dict) -> tuple[list[list[str]], str]:
    """The partition the ``groups`` rule uses, from one method's entry of ``communities.json``.

    With k ≥ 2 groups that is the groups themselves. With k = 1 (no significant block structure)
    every block is "within" its group, so :func:`group_order` would rank all blocks by
    GW(input, output) alone; when the entry keeps a ``candidate`` partition (the best grouping
    that did not pass the significance test) that partition is used instead, with a warning.

    Parameters
    ----------
    result : dict
        ``SubnetworkResult.to_dict()``: ``groups``, ``k`` and optionally ``candidate`` (a dict
        with ``groups``).

    Returns
    -------
    (groups, note)
        ``note`` says which partition was used ("" for the plain groups).
    """
    groups = result["groups"]
    if len(groups) > 1:
        return groups, ""
    candidate = result.get("candidate")
    if isinstance(candidate, dict) and len(candidate.get("groups") or []) > 1:
        note = (f"the run found no significant groups (k = 1); the groups rule uses the candidate "
                f"partition ({len(candidate['groups'])} groups) that did not pass the test")
        warnings.warn(note, stacklevel=2)
        return candidate["groups"], note
    note = "the run found one group (k = 1): the groups rule ranks blocks by GW(input, output) alone"
    warnings.warn(note, stacklevel=2)
    return groups, note


def random_choice(depth: int, k: int, seed: int) -> list[int]:
    """k distinct block indices in [0, depth) drawn uniformly with ``seed``, sorted."""
    return sorted(np.random.default_rng(seed).choice(depth, size=k, replace=False).tolist())
