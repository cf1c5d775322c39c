"""Reproduce the figures and tables of docs/results.md (toy tasks, MiniLM, compression).

    python jobs/experiments.py --out runs/paper                 # everything (about an hour on 2 busy cores)
    python jobs/experiments.py --out runs/paper --only digits   # one experiment
    python jobs/experiments.py --quick --out /tmp/paper         # seconds-long CI version

Every GW/graph setting (probe size and seed, cost metric, GW starts, grouping method) is read from
configs/paper/<experiment>.yaml, the same files ``gwray run`` takes; training, compression and
healing settings are the constants below. Toy experiments compute in process (no Ray) on the
same probe rows the pipeline would read; MiniLM goes through ``gwray.pipeline.run``.
Writes OUT/results/<experiment>.json (all numbers), OUT/tables.md and OUT/figures/*.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gwray.activations.probes import load_probe  # noqa: E402
from gwray.config import load_config  # noqa: E402
from gwray.graph.communities import find_subnetworks  # noqa: E402
from gwray.gw.baselines import baseline_matrices  # noqa: E402
from gwray.gw.pairwise import pairwise_gw  # noqa: E402
from gwray.prune.toy import compression_curves  # noqa: E402
from gwray.models.toy import accuracy, load_toy, task_data, train_toy  # noqa: E402

TOYS = {  # experiment -> (config, task, training overrides of gwray.models.toy.default_meta)
    "digits": ("toy_digits.yaml", "digits", {}),
    "modular_joint": ("toy_modular_joint.yaml", "modular", {"strategy": "joint"}),
    "modular_curriculum": ("toy_modular_curriculum.yaml", "modular", {"strategy": "curriculum"}),
    # Same number of composed-task steps as joint (3000) after 30 % inner-task steps.
    "modular_curriculum_long": ("toy_modular_curriculum_long.yaml", "modular",
                                {"strategy": "curriculum", "steps": 4286}),
    # Same, but each stage has its own AdamW + cosine schedule (stage 2 = a joint run from stage 1).
    "modular_curriculum_restart": ("toy_modular_curriculum_restart.yaml", "modular",
                                   {"strategy": "curriculum", "steps": 4286, "restart_schedule": True}),
}
COMPRESS = ("digits", "modular_joint")
FULL = dict(ks=[0, 1, 2, 3, 4, 6, 8], seeds=3, heal_steps=50, save_every=None, train={})
QUICK = dict(ks=[0, 2], seeds=2, heal_steps=5, save_every=100, n_samples=32,
             train=dict(depth=4, width=32, hidden=64, steps=200, batch_size=128))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def hidden(model, x) -> list[np.ndarray]:
    """Residual stream after embed and each block: what `layers.select: blocks` + flatten captures."""
    with torch.no_grad():
        return [h.double().numpy() for h in model.hidden_states(torch.as_tensor(x))]


def decodability(model, data: dict, targets) -> dict:
    """Held-out accuracy of a linear probe (logistic regression) per layer and target.

    Fitted on the residual stream of the whole training split, scored on the whole test split.
    ``targets`` maps a name to a function (x (n, ...) -> labels (n,)).
    """
    from sklearn.linear_model import LogisticRegression

    tr, te = hidden(model, data["x_train"]), hidden(model, data["x_test"])
    out = {}
    for name, fn in targets.items():
        ytr, yte = fn(data["x_train"], data["y_train"]), fn(data["x_test"], data["y_test"])
        out[name] = [float(LogisticRegression(max_iter=200).fit(a, ytr).score(b, yte)) for a, b in zip(tr, te)]
    return out


def decode_targets(meta: dict) -> dict:
    if meta["task"] != "modular":
        return {"class": lambda x, y: y}
    p = meta["p"]
    return {"inner (a+b) mod p": lambda x, y: (x[:, 0] + x[:, 1]) % p, "output": lambda x, y: y,
            "c": lambda x, y: x[:, 2]}


def stability_of(model, cfg, final: dict, resamples: int = 5) -> dict:
    """Mean ARI of groups on 80 % probe subsets vs the full-probe groups: GW and CKA groupings."""
    from functools import partial

    from gwray.graph.stability import stability

    layers = hidden(model, load_probe(cfg.probe).arrays)
    find = partial(find_subnetworks, method=cfg.graph.method, k=cfg.graph.k, names=final["names"])
    gw_kwargs = dict(metric=cfg.costs.metric, normalize=cfg.costs.normalize, starts=tuple(cfg.gw.starts),
                     max_iter=cfg.gw.max_iter, tol=cfg.gw.tol)
    cka_groups = final["baseline_groups"]["cka"]["groups"]
    cka_ref = [next(g for g, members in enumerate(cka_groups) if n in members) for n in final["names"]]
    out = {}
    for kind, ref, fn in (("gw", final["labels"], None),
                          ("cka", cka_ref, lambda ls, kw: 1 - np.clip(baseline_matrices(ls, ["cka"])["cka"], 0, 1))):
        r = stability(layers, find, fraction=0.8, resamples=resamples, seed=0, gw_kwargs=gw_kwargs,
                      reference=np.array(ref), matrix_fn=fn)
        out[kind] = {"mean_ari": float(np.mean(r.ari)), "ari": [float(a) for a in r.ari]}
    return out


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def analyze(ckpt: Path, cfg, baselines: bool = True) -> dict:
    """GW matrix, groups and (optionally) baseline matrices + their groups for one checkpoint."""
    model, names = load_toy(ckpt)
    probe = load_probe(cfg.probe)
    layers = hidden(model, probe.arrays)
    t = time.time()
    pw = pairwise_gw(layers, metric=cfg.costs.metric, normalize=cfg.costs.normalize,
                     starts=tuple(cfg.gw.starts), max_iter=cfg.gw.max_iter, tol=cfg.gw.tol)
    res = find_subnetworks(pw.gw, method=cfg.graph.method, k=cfg.graph.k, names=names)
    out = {"checkpoint": ckpt.name, "step": model.meta["step"], "names": names, "gw_seconds": time.time() - t,
           "matrices": {"gw": pw.gw.tolist()}, "groups": res.groups, "labels": res.labels.tolist(),
           "k": res.k, "k_reason": res.k_reason, "scores": res.scores, "layers": layers, "probe": probe}
    if baselines:
        base = baseline_matrices(layers, metric=cfg.costs.metric, normalize=cfg.costs.normalize)
        out["matrices"].update({k: v.tolist() for k, v in base.items()})
        # Group the baselines with the same method so that the groupings can be compared (ARI).
        dist = {"cka": 1 - np.clip(base["cka"], 0, 1), "rsa": 1 - np.clip(base["rsa"], 0, 1),
                "identity": base["identity"]}
        out["baseline_groups"] = {}
        for kind, D in dist.items():
            r = find_subnetworks((D + D.T) / 2, method=cfg.graph.method, k=cfg.graph.k, names=names)
            out["baseline_groups"][kind] = {"groups": r.groups, "k": r.k, "ari_vs_gw": ari(r.labels, res.labels)}
    return out


def toy_experiment(name: str, root: Path, s: dict, quick: bool) -> dict:
    config, task, train = TOYS[name]
    mdir = root / "models" / name
    if not (mdir / "probe.npy").is_file():
        say(f"{name}: training")
        train_toy(task, mdir, save_every=s["save_every"], **{**train, **s["train"]})
    ckpts = sorted(mdir.glob("step-*"))
    over = {"probe": {"source": str(mdir / "probe.npy")}}
    if quick:
        over["probe"]["n_samples"] = s["n_samples"]
    cfg = load_config(REPO / "configs" / "paper" / config, over)
    say(f"{name}: GW + baselines on {ckpts[-1].name} (n={cfg.probe.n_samples})")
    final = analyze(ckpts[-1], cfg)
    model, names = load_toy(ckpts[-1])
    data = task_data(model.meta)
    layers, probe = final.pop("layers"), final.pop("probe")
    x = probe.arrays
    summary = {"config": config, "meta": model.meta, "test_accuracy": accuracy(model, data["x_test"], data["y_test"]),
               "train_accuracy": accuracy(model, data["x_train"], data["y_train"]), **final}
    summary["decodability"] = decodability(model, data, decode_targets(model.meta))
    if task == "modular":
        say(f"{name}: groups over {len(ckpts)} checkpoints")
        summary["timeline"] = [{k: a[k] for k in ("step", "labels", "k", "groups")}
                               for a in (analyze(c, cfg, baselines=False) for c in ckpts[:-1])]
        summary["timeline"].append({k: final[k] for k in ("step", "labels", "k", "groups")})
    if name in COMPRESS:
        say(f"{name}: compression")
        summary["compression"] = compression_curves(
            model, data, [k for k in s["ks"] if k < len(model.blocks)], groups=final["groups"],
            D=np.array(final["matrices"]["gw"]), names=names, random_seeds=s["seeds"],
            heal_steps=s["heal_steps"], probe=x)
    return summary


def minilm_experiment(root: Path) -> dict:
    from gwray.activations.store import ActivationStore
    from gwray.pipeline import run

    cfg = REPO / "configs" / "paper" / "minilm.yaml"
    say("minilm: gwray run (Ray, extraction + GW)")
    result = run(cfg, out=root / "runs" / "minilm", progress=False)
    ck = result.checkpoints[0]
    names = result.layers[ck]
    store = ActivationStore(Path(result.out) / "activations")
    layers = [store.read_layer(ck, n).astype(np.float64) for n in names]
    c = load_config(cfg)
    base = baseline_matrices(layers, metric=c.costs.metric, normalize=c.costs.normalize)
    gw = result.gw[ck]
    res = find_subnetworks(gw, method=c.graph.method, k=c.graph.k, names=names)
    out = {"config": cfg.name, "names": names, "matrices": {"gw": gw.tolist(), **{k: v.tolist() for k, v in base.items()}},
           "groups": res.groups, "labels": res.labels.tolist(), "k": res.k, "k_reason": res.k_reason,
           "scores": res.scores, "baseline_groups": {}}
    for kind, D in {"cka": 1 - np.clip(base["cka"], 0, 1), "rsa": 1 - np.clip(base["rsa"], 0, 1),
                    "identity": base["identity"]}.items():
        r = find_subnetworks((D + D.T) / 2, method=c.graph.method, k=c.graph.k, names=names)
        out["baseline_groups"][kind] = {"groups": r.groups, "k": r.k, "ari_vs_gw": ari(r.labels, res.labels)}
    return out


def plot_all(summary: dict, figdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    titles = {"gw": "GW distance", "identity": "identity distortion", "cka": "1 - CKA (debiased)", "rsa": "1 - RSA"}
    for name, s in summary.items():
        M = s["matrices"]
        fig, axes = plt.subplots(1, len(M), figsize=(3.2 * len(M), 3.1))
        bounds = [i - 0.5 for i in range(1, len(s["labels"])) if s["labels"][i] != s["labels"][i - 1]]
        for ax, kind in zip(np.atleast_1d(axes), M):
            A = np.array(M[kind])
            A = 1 - A if kind in ("cka", "rsa") else A
            im = ax.imshow(A, cmap="viridis")
            for b in bounds:
                ax.axhline(b, color="w", lw=0.8)
                ax.axvline(b, color="w", lw=0.8)
            ax.set_title(titles[kind], fontsize=9)
            ax.set_xticks(range(len(s["names"])), [_short(n) for n in s["names"]], fontsize=6)
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"{name}: white lines = GW groups ({s['k']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(figdir / f"{name}_matrices.png", dpi=80)
        plt.close(fig)
        if "decodability" in s:
            fig, ax = plt.subplots(figsize=(5, 3))
            for label, acc in s["decodability"].items():
                ax.plot(acc, marker="o", ms=3, label=label)
            for b in bounds:
                ax.axvline(b, color="grey", ls="--", lw=0.8)
            ax.set(xlabel="layer (0 = embed)", ylabel="linear-probe accuracy", title=f"{name}: dashed = GW group boundaries")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(figdir / f"{name}_decodability.png", dpi=80)
            plt.close(fig)
        if "compression" in s:
            plot_compression(plt, name, s["compression"], figdir)
    timelines = {n: s["timeline"] for n, s in summary.items() if "timeline" in s}
    if timelines:
        fig, axes = plt.subplots(1, len(timelines), figsize=(4.2 * len(timelines), 3.2), squeeze=False)
        for ax, (name, tl) in zip(axes[0], timelines.items()):
            ax.imshow(np.array([t["labels"] for t in tl]).T, aspect="auto", cmap="tab10", interpolation="nearest")
            ax.set_xticks(range(len(tl)), [t["step"] for t in tl], fontsize=7)
            ax.set(xlabel="training step", ylabel="layer (0 = embed)", title=f"{name}: GW groups")
        fig.tight_layout()
        fig.savefig(figdir / "modular_timeline.png", dpi=80)
        plt.close(fig)


def plot_compression(plt, name: str, rows: list, figdir: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, field in zip(axes, ("accuracy", "healed")):
        for method in ("groups", "bi", "angular", "random"):
            ks = sorted({r["k"] for r in rows if r["method"] == method})
            vals = [[r[field] for r in rows if r["method"] == method and r["k"] == k] for k in ks]
            mean = np.array([np.mean(v) for v in vals])
            ax.plot(ks, mean, marker="o", ms=3, label=method)
            if method == "random":
                sd = np.array([np.std(v) for v in vals])
                ax.fill_between(ks, mean - sd, mean + sd, alpha=0.2, color=ax.lines[-1].get_color())
        ax.set(xlabel="blocks dropped (k)", title=f"{name}: {'after healing' if field == 'healed' else 'no healing'}")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / f"{name}_compression.png", dpi=80)
    plt.close(fig)


def _short(name: str) -> str:
    return name.replace("blocks.", "").replace("encoder.layer.", "L").replace("embeddings", "emb")


def _groups(groups) -> str:
    short = [[_short(n) for n in g] for g in groups]
    return "; ".join(g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in short)


def tables(summary: dict) -> str:
    """The markdown tables of docs/results.md (groups, baseline agreement, compression)."""
    lines = ["| experiment | accuracy (test) | GW groups (k) | CKA groups (ARI vs GW) | RSA groups (ARI) | "
             "identity groups (ARI) |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        acc = f"{s['test_accuracy']:.3f}" if "test_accuracy" in s else "-"
        bg = s.get("baseline_groups", {})
        cells = [f"{_groups(bg[k]['groups'])} ({bg[k]['ari_vs_gw']:.2f})" if k in bg else "-"
                 for k in ("cka", "rsa", "identity")]
        lines.append(f"| {name} | {acc} | {_groups(s['groups'])} ({s['k']}) | " + " | ".join(cells) + " |")
    for name, s in summary.items():
        if "timeline" in s:
            lines += ["", f"{name}: GW groups per checkpoint", "", "| step | groups |", "|---|---|"]
            lines += [f"| {t['step']} | {_groups(t['groups'])} |" for t in s["timeline"]]
    for name, s in summary.items():
        rows = s.get("compression")
        if not rows:
            continue
        ks = sorted({r["k"] for r in rows})
        lines += ["", f"{name}: test accuracy after dropping k blocks (no healing / healed; random = mean "
                  "of seeds)", "", "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for method in ("groups", "bi", "angular", "random"):
            cells = []
            for k in ks:
                sel = [r for r in rows if r["method"] == method and r["k"] == k]
                cells.append(f"{np.mean([r['accuracy'] for r in sel]):.3f} / {np.mean([r['healed'] for r in sel]):.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/paper")
    ap.add_argument("--only", default=",".join([*TOYS, "minilm"]), help="comma-separated experiments")
    ap.add_argument("--quick", action="store_true", help="tiny models and probes (CI)")
    ap.add_argument("--decode-only", action="store_true",
                    help="recompute only the linear-probe decodability of finished toy experiments")
    ap.add_argument("--stability-only", action="store_true",
                    help="add probe-resampling stability (GW and CKA groups) to finished toy experiments")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more oversubscribes a busy box)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = QUICK if args.quick else FULL
    names = [n for n in args.only.split(",") if n]  # --only "" redraws figures and tables only
    unknown = [n for n in names if n not in TOYS and n != "minilm"]
    if unknown:
        ap.error(f"--only: unknown experiment {unknown[0]!r}")
    results = root / "results"  # one JSON per experiment: several invocations can run at once
    results.mkdir(exist_ok=True)
    for name in names:
        if args.decode_only:
            data = json.loads((results / f"{name}.json").read_text())
            model, _ = load_toy(root / "models" / name / data["checkpoint"])
            data["decodability"] = decodability(model, task_data(model.meta), decode_targets(model.meta))
        elif args.stability_only:
            data = json.loads((results / f"{name}.json").read_text())
            model, _ = load_toy(root / "models" / name / data["checkpoint"])
            cfg = load_config(REPO / "configs" / "paper" / TOYS[name][0],
                              {"probe": {"source": str(root / "models" / name / "probe.npy")}})
            data["stability"] = stability_of(model, cfg, data)
        elif name == "minilm":
            data = minilm_experiment(root)
        else:
            data = toy_experiment(name, root, settings, args.quick)
        tmp = results / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=float))
        tmp.replace(results / f"{name}.json")
    summary = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    plot_all(summary, root / "figures")
    (root / "tables.md").write_text(tables(summary))
    say(f"wrote {results} and {root / 'figures'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
