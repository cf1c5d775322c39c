"""Layer dropping for trained residual nets (the toys of ``gwray.models.toy``): which blocks to
replace by the identity, and what it costs.

The four one-shot rules (``groups``, ``random``, ``bi``, ``angular``) are defined in
:mod:`gwray.prune.scores`, which ``gwray prune`` uses for Hugging Face language models; this module
feeds them the toy nets' streams. In the toy nets one sample is one vector, so the papers' "mean
over tokens" is a mean over samples and "the last token" is the sample itself.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from gwray.errors import GwrayInputError
from gwray.models.toy import accuracy, fit
from gwray.prune import scores
from gwray.prune.scores import group_order, random_choice  # noqa: F401 - part of this module's API

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
def _states(model: nn.Module, x) -> list[np.ndarray]:
    """[h_0, ..., h_depth], each (n, width) float64: one vector per sample (the papers' tokens)."""
    model.eval()
    return [h.double().flatten(1).numpy() for h in model.hidden_states(torch.as_tensor(x))]


def block_influence(model: nn.Module, x) -> np.ndarray:
    """ShortGPT Block Influence of each block on the probe inputs x (n, ...) → (depth,)
    (:func:`gwray.prune.scores.block_influence`); model needs ``hidden_states(x)``."""
    return scores.block_influence(_states(model, x))


def angular_distances(model: nn.Module, x, n: int) -> np.ndarray:
    """(depth - n + 1,): :func:`gwray.prune.scores.angular_distances` on the samples' streams."""
    return scores.angular_distances(_states(model, x), n)


def angular_choice(model: nn.Module, x, k: int) -> list[int]:
    """The k contiguous blocks l*, ..., l* + k - 1 with l* = argmin of :func:`angular_distances`."""
    return scores.angular_choice(_states(model, x), k)


def bi_order(model: nn.Module, x) -> list[int]:
    """Block indices by increasing Block Influence (the drop order of ShortGPT)."""
    return scores.bi_order(block_influence(model, x))


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
