"""The figures of docs/results.md, drawn from ``results.json`` (stages and summary).

- ``pvalues.png`` — the block-structure test's p-value on every seed, per net, for GW and the baselines;
- ``<setup>_matrices.png`` — seed 0's GW, CKA, RSA and identity matrices with GW's candidate
  boundaries (solid when significant, dashed when not);
- ``decodability.png`` — linear-probe accuracy per layer (mean and range over seeds; MiniLM);
- ``compression.png`` — accuracy / perplexity / neighbours kept against blocks dropped per rule
  (mean over model seeds).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exp_render import LABELS, RULE_ORDER, short


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pvalues(plt, summ: dict, path: Path) -> None:
    st = {k: v for k, v in summ["structure"].items() if k != "strategies"}
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for j, kind in enumerate(("gw", "cka", "rsa", "identity")):
        for i, e in enumerate(st.values()):
            ps = [1.0 if p is None else p for p in e["groupings"][kind]["p"]]
            ax.scatter(np.full(len(ps), i + (j - 1.5) * 0.18), ps, s=14, marker="o" if kind == "gw" else ".",
                       color=f"C{j}", label=kind if i == 0 else None)
    ax.axhline(0.05, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(st)), [LABELS[k].replace(" (", "\n(") for k in st], fontsize=6)
    ax.set_ylabel("p (block structure vs depth drift)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def matrices(plt, run: dict, title: str, path: Path) -> None:
    kinds = ("gw", "cka", "rsa", "identity")
    g = run["groupings"]["gw"]
    bounds = [i + 0.5 for i in range(len(g["candidate"]) - 1) if g["candidate"][i] != g["candidate"][i + 1]]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.1))
    for ax, kind in zip(axes, kinds):
        A = np.array(run["matrices"][kind])
        A = 1 - A if kind in ("cka", "rsa") else A
        im = ax.imshow(A, cmap="viridis")
        for b in bounds:
            for line in (ax.axhline, ax.axvline):
                line(b, color="w", lw=0.9, ls="-" if g["significant"] else "--")
        ax.set_title({"gw": "GW", "cka": "1 − CKA", "rsa": "1 − RSA", "identity": "identity distortion"}[kind],
                     fontsize=9)
        ax.set_xticks(range(len(run["names"])), [short(n) for n in run["names"]], fontsize=6)
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    verdict = f"p = {g['p']:.2g}" if g["p"] is not None else "untested"
    fig.suptitle(f"{title}, seed {run['seed']}: lines = GW's candidate boundaries ({verdict}; dashed = not "
                 "significant)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def decodability(plt, summ: dict, path: Path) -> None:
    pr = summ["probes"]
    panels = [k for k in ("modular_joint", "modular_curriculum", "digits_cnn", "minilm") if k in pr]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, key in zip(axes[0], panels):
        e = pr[key]
        if key == "minilm":
            for t, acc in e["probes"].items():
                ax.plot(acc, marker="o", ms=3, label=t)
            ax.set_xticks(range(len(e["names"])), [short(n) for n in e["names"]], fontsize=7)
        else:
            for t, v in e.items():
                x = np.arange(len(v["mean"]))
                ax.plot(x, v["mean"], marker="o", ms=3, label=t)
                ax.fill_between(x, v["min"], v["max"], alpha=0.2)
        ax.set(title=LABELS[key], xlabel="layer (0 = embedding)", ylim=(0, 1.02))
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("linear-probe accuracy (held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compression(plt, summ: dict, path: Path) -> None:
    c = summ["compression"]
    panels = [(s, m) for s, ms in (("digits_mlp", ("accuracy", "healed")), ("modular_joint", ("accuracy", "healed")),
                                    ("lm", ("perplexity", "healed")), ("minilm", ("knn10_kept",))) if s in c for m in ms]
    if not panels:
        return
    cols = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 6), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (setup, metric) in zip(axes.flat, panels):
        ks = list(c[setup][metric])
        for j, rule in enumerate(RULE_ORDER):
            ys = [c[setup][metric][k]["rules"].get(rule) for k in ks]
            if all(ys):
                ax.errorbar([int(k) + (j - 2.5) * 0.06 for k in ks], [y["mean"] for y in ys],
                            yerr=[[y["mean"] - y["low"] for y in ys], [y["high"] - y["mean"] for y in ys]],
                            marker="o", ms=3, capsize=2, label=rule)
        ax.set_title(f"{LABELS[setup]}: {metric}", fontsize=8)
        ax.set_xlabel("blocks dropped")
        if setup == "lm":
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw(results: dict, figdir: Path) -> None:
    """Every figure that the finished stages allow."""
    plt = _plt()
    figdir.mkdir(parents=True, exist_ok=True)
    summ, stages = results["summary"], results["stages"]
    if summ["structure"]:
        pvalues(plt, summ, figdir / "pvalues.png")
    for key in ("planted", "digits_mlp", "digits_cnn", "modular_joint", "modular_curriculum", "minilm", "lm"):
        run = stages.get({"minilm": "minilm:0", "lm": "lm_train:0"}.get(key, f"toy:{key}:0"))
        if run:
            matrices(plt, run, LABELS[key], figdir / f"{key}_matrices.png")
    decodability(plt, summ, figdir / "decodability.png")
    compression(plt, summ, figdir / "compression.png")
