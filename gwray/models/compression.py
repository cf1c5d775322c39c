"""Layer dropping for trained residual nets: which blocks to replace by the identity, and what it costs.

Four ways to choose the k blocks to drop, all one-shot (scores are measured once, on the full
model and the probe inputs):

- ``groups``: gwray's layer groups. A block whose input and output layers fall in the same group
  only moves the representation within that group; dropping all such blocks keeps one
  representative (the group's entry) per group. They go first, most redundant first (smallest
  GW distance between the block's input and output layer); then the remaining blocks by the same
  score.
- ``random``: k blocks drawn uniformly (the caller averages several seeds).
- ``bi``: ShortGPT's Block Influence (Men et al., 2024, arXiv 2403.03853),
  BI_i = 1 - mean over samples of cos(input of block i, output of block i); lowest BI first.
- ``angular``: Gromov et al. (2024, arXiv 2403.17887): for a drop of n blocks, the start l*
  minimising the mean angular distance arccos(cos(h_l, h_{l+n})) / pi between the stream before
  block l and after block l + n - 1; blocks l* .. l* + n - 1 are dropped (a contiguous run).

In the toy nets one sample is one vector, so "mean over tokens" of the papers is a mean over
samples here.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from gwray.errors import GwrayInputError
from gwray.models.toy import accuracy, fit

METHODS = ("groups", "random", "bi", "angular")


def _check_blocks(model: nn.Module, blocks) -> list[int]:
    depth = len(model.blocks)
    out = sorted({int(b) for b in blocks})
    bad = [b for b in out if not 0 <= b < depth]
    if bad:
        raise GwrayInputError(f"blocks: index {bad[0]} out of range for a model with {depth} blocks")
    return out


def drop_blocks(model: nn.Module, blocks) -> nn.Module:
    """A copy of ``model`` with ``model.blocks[i]`` replaced by ``nn.Identity()`` for i in ``blocks``.

    Parameters
    ----------
    model : nn.Module
        A residual net with an ``nn.ModuleList`` attribute ``blocks`` (e.g. a toy ``ResidualMLP``).
    blocks : iterable of int
        Block indices in [0, depth).
    """
    blocks = _check_blocks(model, blocks)
    pruned = copy.deepcopy(model)
    for i in blocks:
        pruned.blocks[i] = nn.Identity()
    return pruned.eval()


@torch.no_grad()
def _states(model: nn.Module, x) -> list[torch.Tensor]:
    model.eval()
    return [h.double().flatten(1) for h in model.hidden_states(torch.as_tensor(x))]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


def block_influence(model: nn.Module, x) -> np.ndarray:
    """ShortGPT Block Influence of each block on the probe inputs.

    Parameters
    ----------
    model : nn.Module
        Residual net with ``hidden_states(x) -> [h_0, ..., h_depth]``, each (n, width).
    x : array_like, shape (n, ...)
        Probe inputs.

    Returns
    -------
    ndarray, shape (depth,)
        BI_i = 1 - mean_s cos(h_i[s], h_{i+1}[s]); small = the block barely turns the stream.
    """
    h = _states(model, x)
    return np.array([1.0 - float(_cos(h[i], h[i + 1]).mean()) for i in range(len(h) - 1)])


def angular_distances(model: nn.Module, x, n: int) -> np.ndarray:
    """Mean angular distance between the stream before block l and after block l + n - 1.

    Returns
    -------
    ndarray, shape (depth - n + 1,)
        Entry l = mean_s arccos(cos(h_l[s], h_{l+n}[s])) / pi, in [0, 1].
    """
    h = _states(model, x)
    depth = len(h) - 1
    if not 1 <= n <= depth:
        raise GwrayInputError(f"n: must be in [1, {depth}] for a model with {depth} blocks, got {n}")
    return np.array([float(torch.arccos(_cos(h[l], h[l + n]).clamp(-1, 1)).mean()) / np.pi
                     for l in range(depth - n + 1)])


def angular_choice(model: nn.Module, x, k: int) -> list[int]:
    """The k contiguous blocks l*, ..., l* + k - 1 with l* = argmin of :func:`angular_distances`."""
    if k == 0:
        return []
    start = int(np.argmin(angular_distances(model, x, k)))
    return list(range(start, start + k))


def bi_order(model: nn.Module, x) -> list[int]:
    """Block indices by increasing Block Influence (the drop order of ShortGPT)."""
    return [int(i) for i in np.argsort(block_influence(model, x), kind="stable")]


def group_order(groups, D, names) -> list[int]:
    """Drop order from gwray's layer groups (see the module docstring).

    Parameters
    ----------
    groups : list of list of str
        Layer groups, e.g. ``find_subnetworks(D, names=names).groups``.
    D : array_like, shape (depth + 1, depth + 1)
        GW distances between the layers ``names`` (stream after embed and after each block).
    names : list of str
        Layer names in depth order; block i has input layer ``names[i]``, output ``names[i + 1]``.

    Returns
    -------
    list of int
        All block indices: within-group blocks first, each part by increasing D[i, i + 1].
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


def random_choice(depth: int, k: int, seed: int) -> list[int]:
    """k distinct block indices drawn uniformly with ``seed``."""
    return sorted(np.random.default_rng(seed).choice(depth, size=k, replace=False).tolist())


def evaluate_drop(model: nn.Module, blocks, data: dict, *, heal_steps: int = 0, lr: float = 3e-4,
                  batch_size: int = 256, seed: int = 0) -> dict:
    """Test accuracy after dropping ``blocks``, and after a short healing fine-tune of what is left.

    Parameters
    ----------
    data : dict
        ``x_train``, ``y_train``, ``x_test``, ``y_test`` (as from :func:`gwray.models.toy.task_data`).
    heal_steps : int
        AdamW steps on the training split (no weight decay) after dropping; 0 = no healing.

    Returns
    -------
    dict
        ``k``, ``blocks``, ``accuracy`` (before healing), ``healed`` (after; equals ``accuracy``
        when ``heal_steps`` is 0).
    """
    pruned = drop_blocks(model, blocks)
    acc = accuracy(pruned, data["x_test"], data["y_test"])
    healed = acc
    if heal_steps > 0:
        fit(pruned, data["x_train"], data["y_train"], steps=heal_steps, lr=lr, weight_decay=0.0,
            batch_size=batch_size, seed=seed)
        healed = accuracy(pruned, data["x_test"], data["y_test"])
    return {"k": len(_check_blocks(model, blocks)), "blocks": list(blocks), "accuracy": acc, "healed": healed}


def compression_curves(model: nn.Module, data: dict, ks, *, groups=None, D=None, names=None,
                       random_seeds: int = 5, heal_steps: int = 0, probe=None) -> list[dict]:
    """Accuracy against k for every method (``groups`` only when ``groups``, ``D``, ``names`` given).

    Parameters
    ----------
    ks : iterable of int
        Numbers of blocks to drop, each in [0, depth].
    probe : array_like, optional
        Inputs on which BI and angular distances are measured (default ``data['x_test']``).

    Returns
    -------
    list of dict
        One row per (method, k, seed): :func:`evaluate_drop`'s fields + ``method`` and ``seed``.
    """
    depth = len(model.blocks)
    ks = [int(k) for k in ks]
    if any(not 0 <= k <= depth for k in ks):
        raise GwrayInputError(f"ks: every k must be in [0, {depth}], got {ks}")
    probe = data["x_test"] if probe is None else probe
    orders = {"bi": bi_order(model, probe)}
    if groups is not None:
        orders["groups"] = group_order(groups, D, names)
    rows = []

    def add(method, blocks, seed=0):
        row = evaluate_drop(model, blocks, data, heal_steps=heal_steps, seed=seed)
        rows.append({"method": method, "seed": seed, **row})

    for k in ks:
        for method, order in orders.items():
            add(method, order[:k])
        add("angular", angular_choice(model, probe, k) if k < depth else list(range(depth)))
        for seed in range(random_seeds):
            add("random", random_choice(depth, k, seed), seed)
    return rows
