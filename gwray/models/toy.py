"""Toy tasks with known functional structure, their residual MLPs, trainers and checkpoints.

Two tasks train on a CPU in minutes:

- ``modular``: y = ((a + b) mod p) * c mod p from the three tokens (a, b, c), a composition of two
  modular operations, so an inner sub-step ((a + b) mod p) exists. Two strategies: ``joint``
  (the composed target from step 0) and ``curriculum`` (the first part of training targets the
  inner operation (a + b) mod p, then the composed target; ``restart_schedule`` gives each stage
  its own optimiser and learning-rate schedule).
- ``digits``: scikit-learn's bundled 8x8 digits images (offline), 10 classes; ``arch="cnn"``
  trains a residual CNN on them as 8x8 images instead of the MLP.

``val_fraction`` carves a validation split out of the training split (for choosing
hyper-parameters without touching the test split, which probes and reports use).
:func:`planted_net` builds, without training, a net whose layers fall into two known regimes:
the positive control of the block-structure test and the second net of ``gwray demo``.

A checkpoint is a directory with ``toy.json`` (task, architecture, hyper-parameters, step, data
split seed) and ``model.safetensors``. :func:`load_toy` rebuilds the module from it and returns
the layer names that gwray captures: ``embed`` then ``blocks.0`` ... ``blocks.{depth-1}`` (each
the residual stream after that module). Probe inputs are ``.npy`` files, rows = samples
(:func:`write_probe`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from gwray.errors import GwrayInputError
from gwray.models.weights import open_weights
from gwray.models.toy_nets import ResidualCNN, ResidualMLP, planted_net, planted_probe  # noqa: F401 - re-exported

TASKS = ("modular", "digits")
STRATEGIES = ("joint", "curriculum")
ARCHS = ("mlp", "cnn")


def task_data(meta: dict) -> dict:
    """The task's train/test split, reproducible from a checkpoint's ``toy.json``.

    Returns
    -------
    dict
        ``x_train`` (N, 3) int64 or (N, 64) float32, ``y_train`` (N,) int64, ``x_test``, ``y_test``;
        for ``modular`` also ``inner_train`` / ``inner_test`` = (a + b) mod p. With
        ``meta["val_fraction"]`` > 0 (a share of all samples, taken from the training split) also
        ``x_val``, ``y_val`` (and ``inner_val``); the test split does not change.
    """
    rng = np.random.default_rng(meta["data_seed"])
    if meta["task"] == "modular":
        p = meta["p"]
        a, b, c = (g.ravel() for g in np.meshgrid(*(np.arange(p),) * 3, indexing="ij"))
        x = np.stack([a, b, c], axis=1).astype(np.int64)
        inner = (a + b) % p
        y = (inner * c) % p
        extra = {"inner": inner}
    elif meta["task"] == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        extra = {}
    else:
        raise GwrayInputError(f"toy task {meta['task']!r}: unknown (expected one of {', '.join(TASKS)})")
    order = rng.permutation(len(y))
    n_train = int(round(meta["train_fraction"] * len(y)))
    n_val = int(round(meta.get("val_fraction", 0.0) * len(y)))
    splits = {"train": order[:n_train - n_val], "test": order[n_train:]}
    if n_val:
        splits["val"] = order[n_train - n_val:n_train]
    out = {}
    for name, rows in splits.items():
        out[f"x_{name}"], out[f"y_{name}"] = x[rows], y[rows]
        for k, v in extra.items():
            out[f"{k}_{name}"] = v[rows]
    return out


def default_meta(task: str, **overrides) -> dict:
    """Architecture + training hyper-parameters for ``task``; keyword arguments override them."""
    if task not in TASKS:
        raise GwrayInputError(f"toy task {task!r}: unknown (expected one of {', '.join(TASKS)})")
    meta = {"task": task, "strategy": "joint", "depth": 12, "hidden": 256, "seed": 0, "data_seed": 0,
            "batch_size": 256, "lr": 1e-3, "weight_decay": 0.1, "curriculum_fraction": 0.3, "step": 0,
            "restart_schedule": False, "arch": "mlp", "val_fraction": 0.0}
    if task == "modular":
        meta.update(p=13, width=128, train_fraction=0.8, steps=3000, n_inputs=3, n_classes=13,
                    weight_decay=1.0)  # strong decay: held-out accuracy 0.87 -> 0.99 (joint)
    else:
        meta.update(width=64, hidden=128, train_fraction=0.7, steps=1500, n_inputs=64, n_classes=10,
                    weight_decay=0.01)
    unknown = set(overrides) - set(meta) - {"p", "stages", "stage_blocks"}
    if unknown:
        raise GwrayInputError(f"toy hyper-parameter {sorted(unknown)[0]!r}: unknown")
    if overrides.get("arch") == "cnn":  # width = channels of the first stage; depth counts transitions
        stages, per = overrides.get("stages", 2), overrides.get("stage_blocks", 4)
        meta.update(stages=stages, stage_blocks=per, depth=stages * per + stages - 1, width=16, hidden=0)
    meta.update(overrides)
    if meta["arch"] not in ARCHS or (meta["arch"] == "cnn" and task != "digits"):
        raise GwrayInputError(f"toy arch {meta['arch']!r}: expected 'mlp', or 'cnn' for the digits task")
    if not 0.0 <= meta["val_fraction"] < meta["train_fraction"]:
        raise GwrayInputError(f"toy val_fraction {meta['val_fraction']!r}: must be in [0, train_fraction)")
    if meta["strategy"] not in STRATEGIES:
        raise GwrayInputError(f"toy strategy {meta['strategy']!r}: unknown (expected joint or curriculum)")
    if meta["strategy"] == "curriculum" and task != "modular":
        raise GwrayInputError("toy strategy 'curriculum': only the modular task has an inner operation")
    if task == "modular":
        meta["n_classes"] = meta["p"]
    return meta


def build_model(meta: dict) -> ResidualMLP | ResidualCNN:
    """An untrained :class:`ResidualMLP` (or :class:`ResidualCNN`) for ``meta`` (seeded by ``meta['seed']``)."""
    torch.manual_seed(meta["seed"])
    if meta.get("arch") == "cnn":
        return ResidualCNN(int(round(meta["n_inputs"] ** 0.5)), meta["n_classes"], meta["width"],
                           meta["stages"], meta["stage_blocks"])
    return ResidualMLP(meta["n_inputs"], meta["n_classes"], meta["width"], meta["depth"], meta["hidden"],
                       vocab=meta["p"] if meta["task"] == "modular" else None)


def save_toy(model: ResidualMLP, meta: dict, path) -> Path:
    """Write ``path/toy.json`` + ``path/model.safetensors`` (into a temp dir, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "toy.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def read_meta(path) -> dict:
    """The ``toy.json`` of a checkpoint directory, checked."""
    path = Path(path)
    meta_file = path / "toy.json"
    if not meta_file.is_file():
        raise GwrayInputError(f"toy checkpoint {path}: no toy.json")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise GwrayInputError(f"toy checkpoint {meta_file}: invalid JSON ({exc.msg})") from None
    missing = {"task", "depth", "width", "hidden", "n_inputs", "n_classes", "seed"} - set(meta)
    if missing:
        raise GwrayInputError(f"toy checkpoint {meta_file}: missing key {sorted(missing)[0]!r}")
    return meta


def load_toy(path, device=None) -> tuple[ResidualMLP | ResidualCNN, list[str]]:
    """Rebuild a toy checkpoint: ``(module in eval mode, [layer names])``.

    Parameters
    ----------
    path : str or Path
        Checkpoint directory with ``toy.json`` and ``model.safetensors``.
    device : str or torch.device, optional
        Where to put the module (CPU by default).
    """
    path = Path(path)
    meta = read_meta(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise GwrayInputError(f"toy checkpoint {path}: no model.safetensors")
    model = build_model(meta)
    with open_weights(weights) as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GwrayInputError(f"toy checkpoint {weights}: tensors do not match toy.json "
                              f"({str(exc).splitlines()[0]})") from None
    model.meta = meta
    return model.to(device or "cpu").eval(), model.layer_names


@torch.no_grad()
def accuracy(model: nn.Module, x, y, batch_size: int = 2048) -> float:
    """Fraction of rows of ``x`` (n, ...) whose argmax logit equals ``y`` (n,)."""
    model.eval()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def fit(model: nn.Module, x, y, *, steps: int, lr: float, weight_decay: float, batch_size: int,
        seed: int = 0, targets=None, switch_step: int = 0, on_step=None) -> nn.Module:
    """AdamW with a cosine schedule on cross-entropy; ``targets`` (n,) replace ``y`` before ``switch_step``.

    ``on_step(step)`` is called after each optimiser step (1-based); used to save checkpoints.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    first = y if targets is None else torch.as_tensor(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (min(batch_size, len(y)),), generator=gen)
        target = (first if step <= switch_step else y)[idx]
        loss = nn.functional.cross_entropy(model(x[idx]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step)
            model.train()
    return model.eval()


def train_toy(task: str, out, *, save_every: int | None = None, **overrides) -> list[Path]:
    """Train a toy model, saving checkpoints ``out/step-XXXXXX`` during training.

    Parameters
    ----------
    task : {"modular", "digits"}
    out : str or Path
        Directory for the checkpoints and ``out/probe.npy`` (the held-out inputs, rows = samples)
        with their labels in ``out/probe_labels.npy``.
    save_every : int, optional
        Save every this many steps (default: 4 checkpoints evenly spaced); the last step always.
    **overrides
        Hyper-parameters of :func:`default_meta` (depth, width, steps, strategy, p, ...).

    Returns
    -------
    list of Path
        Checkpoint directories in training order (``step-000000`` is the initialisation).
    """
    meta = default_meta(task, **overrides)
    data = task_data(meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(meta)
    steps = meta["steps"]
    every = save_every or max(steps // 4, 1)
    saved = [save_toy(model, meta, out / "step-000000")]
    curriculum = meta["strategy"] == "curriculum"

    def on_step(step: int) -> None:
        if step % every == 0 or step == steps:
            meta["step"] = step
            saved.append(save_toy(model, meta, out / f"step-{step:06d}"))

    opt = dict(lr=meta["lr"], weight_decay=meta["weight_decay"], batch_size=meta["batch_size"], seed=meta["seed"])
    switch = int(meta["curriculum_fraction"] * steps) if curriculum else 0
    if curriculum and meta["restart_schedule"]:
        # Two stages, each with its own optimiser and cosine schedule: the composed stage then
        # trains exactly like a joint run of (steps - switch) steps, from the inner-task weights.
        fit(model, data["x_train"], data["inner_train"], steps=switch, on_step=on_step, **opt)
        fit(model, data["x_train"], data["y_train"], steps=steps - switch,
            on_step=lambda s: on_step(s + switch), **opt)
    else:
        fit(model, data["x_train"], data["y_train"], steps=steps, targets=data["inner_train"] if curriculum else None,
            switch_step=switch, on_step=on_step, **opt)
    np.save(out / "probe.npy", data["x_test"])
    np.save(out / "probe_labels.npy", data["y_test"])
    return saved


def write_probe(checkpoint, path, n: int | None = None, seed: int = 0) -> Path:
    """Save ``n`` held-out inputs of a checkpoint's task to ``path`` (.npy, rows = samples)."""
    x = task_data(read_meta(checkpoint))["x_test"]
    if n is not None and n < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]
    path = Path(path)
    np.save(path, x)
    return path
