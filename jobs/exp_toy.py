"""Toy experiments of docs/results.md: trained residual MLPs and a CNN over seeds, the planted control.

Stages (run by ``jobs/experiments.py``):

- ``toy_select:<setup>`` — the weight decay of a setup, chosen by validation accuracy (a split
  carved out of the training split) on seed 0 among a few values; the test split, which the GW
  probe and the linear probes use, is never looked at.
- ``toy:<setup>:<seed>`` — train one seed with the chosen weight decay on the whole training
  split (validation included, as usual once the choice is made); its GW matrix on a probe of held-out inputs,
  the groups and their block-structure test, the CKA / RSA / identity-distortion baselines and
  their groups, the same groups from values solved without the identity start (rows shuffled,
  unaligned) and from a wide search (``analysis.solver_variants``), and linear probes per layer.
- ``compress:<setup>:<seed>`` — drop k blocks by every rule, before and after healing, over
  healing seeds and random draws (``gwray.prune.toy``).
"""
from __future__ import annotations

import numpy as np
import torch

import analysis

#: setup -> task, training overrides of gwray.models.toy.default_meta, weight decays tried (or the
#: setup whose choice is reused), whether the compression stage runs on it
SETUPS = {
    "digits_mlp": dict(task="digits", train={}, weight_decays=[0.01, 0.1], compress=True),
    "digits_cnn": dict(task="digits", train=dict(arch="cnn", stages=2, stage_blocks=4, steps=800, lr=2e-3,
                                                 batch_size=128), weight_decays=[0.01, 0.1], compress=False),
    "modular_joint": dict(task="modular", train=dict(width=64, hidden=128, steps=2000),
                          weight_decays=[0.1, 1.0], compress=True),
    "modular_curriculum": dict(task="modular", train=dict(width=64, hidden=128, steps=2000, strategy="curriculum"),
                               weight_decays="modular_joint", compress=False),
    "planted": dict(task=None, train=None, weight_decays=None, compress=False),
}
#: the --quick sizes of the trained nets (same code path, seconds instead of minutes)
QUICK_TRAIN = dict(depth=3, width=16, hidden=32, steps=60, batch_size=64)
QUICK_CNN = dict(stages=2, stage_blocks=1, steps=30, batch_size=64)


def stages(s: dict) -> list:
    out = []
    for name, setup in SETUPS.items():
        deps = []
        if isinstance(setup["weight_decays"], list):
            out.append((f"toy_select:{name}", "exp_toy", "select_stage", (name,), []))
            deps = [f"toy_select:{name}"]
        elif setup["weight_decays"]:
            deps = [f"toy_select:{setup['weight_decays']}"]
        for seed in range(s["seeds"]):
            out.append((f"toy:{name}:{seed}", "exp_toy", "toy_stage", (name, seed), deps))
            if setup["compress"]:
                out.append((f"compress:{name}:{seed}", "exp_toy", "compress_stage", (name, seed),
                            [f"toy:{name}:{seed}"]))
    return out


def _overrides(ctx, name: str, weight_decay: float, seed: int, select: bool) -> dict:
    setup = SETUPS[name]
    train = dict(setup["train"], weight_decay=weight_decay, seed=seed,
                 val_fraction=ctx.s["val_fraction"] if select else 0.0)
    if ctx.s.get("quick"):
        train.update(QUICK_CNN if train.get("arch") == "cnn" else QUICK_TRAIN)
    return train


def _model(ctx, name: str, weight_decay: float, seed: int, select: bool = False):
    """The trained checkpoint of (setup, weight decay, seed): trained once, then loaded. ``select``:
    the model trained without the validation split (for choosing the weight decay)."""
    from gwray.models.toy import load_toy, train_toy

    mdir = ctx.out / "models" / name / ("select" if select else "final") / f"wd-{weight_decay:g}" / f"seed-{seed}"
    final = sorted(mdir.glob("step-*"))
    if not (mdir / "probe.npy").is_file():
        final = train_toy(SETUPS[name]["task"], mdir, save_every=10**9,
                          **_overrides(ctx, name, weight_decay, seed, select))
    return load_toy(final[-1])


def _accuracies(model, data) -> dict:
    from gwray.models.toy import accuracy

    return {split: accuracy(model, data[f"x_{split}"], data[f"y_{split}"])
            for split in ("train", "val", "test") if f"x_{split}" in data}


def select_stage(ctx, name: str) -> dict:
    from gwray.models.toy import task_data

    rows = []
    for wd in SETUPS[name]["weight_decays"]:
        model, _ = _model(ctx, name, wd, 0, select=True)
        acc = _accuracies(model, task_data(model.meta))
        rows.append({"weight_decay": wd, "train": acc["train"], "val": acc["val"]})  # the test split stays unseen
    best = max(rows, key=lambda r: r["val"])
    return {"setup": name, "candidates": rows, "chosen": best["weight_decay"], "seed": 0}


def chosen_weight_decay(ctx, name: str) -> float:
    ref = SETUPS[name]["weight_decays"]
    return ctx.result(f"toy_select:{name if isinstance(ref, list) else ref}")["chosen"]


def probe_rows(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """The probe: ``n`` of the ``n_total`` held-out inputs, drawn once (the same for every seed)."""
    return np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))


def hidden(model, x) -> list[np.ndarray]:
    """(n, features) float64 per layer: the stream after embed and each block, flattened."""
    with torch.no_grad():
        return [h.double().flatten(1).numpy() for h in model.hidden_states(torch.as_tensor(x))]


def decode_targets(meta: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Labels a linear probe reads from each layer: the class (digits), or the inner sum, the
    output and the token c (modular)."""
    if meta["task"] != "modular":
        return {"class": y}
    p = meta["p"]
    return {"inner (a+b) mod p": (x[:, 0] + x[:, 1]) % p, "output": y, "c": x[:, 2]}


def linear_probes(model, data) -> dict:
    """Held-out accuracy of a linear probe per target and layer (fit on train, score on test)."""
    tr, te = hidden(model, data["x_train"]), hidden(model, data["x_test"])
    ytr = decode_targets(model.meta, data["x_train"], data["y_train"])
    yte = decode_targets(model.meta, data["x_test"], data["y_test"])
    return {t: [analysis.probe_accuracy(a, ytr[t], b, yte[t]) for a, b in zip(tr, te)] for t in ytr}


def toy_stage(ctx, name: str, seed: int) -> dict:
    from gwray.models.toy import planted_net, planted_probe, task_data

    s = ctx.s
    if name == "planted":
        model, names = planted_net(seed)
        x = planted_probe(s["n_probe"], seed=100 + seed)
        out = {"setup": name, "seed": seed}
    else:
        wd = chosen_weight_decay(ctx, name)
        model, names = _model(ctx, name, wd, seed)
        data = task_data(model.meta)
        x = data["x_test"][probe_rows(len(data["x_test"]), s["n_probe"])]
        out = {"setup": name, "seed": seed, "weight_decay": wd, "meta": model.meta,
               "accuracy": _accuracies(model, data), "probes": linear_probes(model, data)}
    layers = hidden(model, x)
    out.update(analysis.analyse_layers(layers, names, s, seed))
    return out


def compress_stage(ctx, name: str, seed: int) -> dict:
    """Accuracy after dropping k blocks by each rule (groups, GW(in, out) alone, CKA groups, BI,
    angular, random draws), before and after healing with each healing seed."""
    from gwray.models.toy import task_data
    from gwray.prune import scores
    from gwray.prune.toy import angular_choice, bi_order, evaluate_drop

    s, toy = ctx.s, ctx.result(f"toy:{name}:{seed}")
    model, names = _model(ctx, name, toy["weight_decay"], seed)
    data = task_data(model.meta)
    probe = data["x_test"][probe_rows(len(data["x_test"]), s["n_probe"])]
    depth = len(model.blocks)
    orders = analysis.rule_orders(toy, names)
    orders["bi"] = bi_order(model, probe)
    rows = []

    def add(rule, k, blocks, heal_seeds, draw=0):
        for h in heal_seeds:
            r = evaluate_drop(model, blocks, data, heal_steps=s["heal_steps"], seed=h)
            rows.append({"rule": rule, "k": k, "draw": draw, "heal_seed": h, **r})

    heal = range(s["heal_seeds"])
    add("unpruned", 0, [], heal)
    for k in [k for k in s["toy_ks"] if k < depth]:
        for rule, order in orders.items():
            add(rule, k, sorted(order[:k]), heal)
        add("angular", k, angular_choice(model, probe, k), heal)
        for d in range(s["random_draws"]):
            add("random", k, scores.random_choice(depth, k, 1000 * seed + d), [d % s["heal_seeds"]], d)
    return {"setup": name, "seed": seed, "depth": depth, "rows": rows, "orders": orders}
