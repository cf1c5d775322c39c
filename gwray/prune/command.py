"""``gwray prune RUN_DIR --drop K [K ...]``: propose, apply and evaluate layer dropping.

Reads a finished run (its model directory, layer names, GW matrix and groups; the last checkpoint
of a comparison run), scores the blocks on the run's probe, drops K blocks by each chosen method,
optionally heals, and prints perplexity on held-out text next to the unpruned model's. With
``--out`` the chosen method's pruned model is written as a Hugging Face directory + ``prune.json``.
Everything the user can get wrong is checked before a weight is read.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from gwray.errors import GwrayInputError
from gwray.prune import scores

ALL = "all"


@dataclass
class RunModel:
    """What ``gwray prune`` takes from a run directory."""

    out: str
    config: object  # RunConfig
    checkpoint: str
    path: str  # resolved model directory
    names: list  # layer names: embeddings + one per block
    D: np.ndarray  # (L + 1, L + 1) GW matrix
    groups_entry: dict  # communities.json entry of the run's method
    n_blocks: int


def read_run(run_dir: str) -> RunModel:
    """The run's model directory and groups; one-line errors for runs ``gwray prune`` cannot use."""
    import transformers as tf

    from gwray.models.loaders import resolve_model_path
    from gwray.prune.hf import causal_family
    from gwray.result import load_run
    from gwray.storage import Location

    result = load_run(run_dir)
    cfg = result.config
    if cfg.model.source != "hf":
        raise GwrayInputError(f"run {run_dir}: model.source is {cfg.model.source!r}, so the run has no "
                              f"Hugging Face model path (gwray prune needs model.source: hf)")
    if cfg.layers.select != "blocks":
        raise GwrayInputError(f"run {run_dir}: layers.select is {cfg.layers.select!r}; gwray prune needs "
                              f"the embeddings and every block's output (layers.select: blocks)")
    ckpt = result.checkpoints[-1]
    entries = {c["id"]: c for c in Location.parse(run_dir).child("run.json").read_json()["checkpoints"]}
    path = resolve_model_path(entries[ckpt].get("path") or cfg.model.path)
    config = tf.AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code, local_files_only=True)
    causal_family(config, str(path))
    names = result.layers[ckpt]
    if len(names) != config.num_hidden_layers + 1:
        raise GwrayInputError(f"run {run_dir}: {len(names)} layers for a model with "
                              f"{config.num_hidden_layers} blocks (expected {config.num_hidden_layers + 1})")
    comm = result.communities
    entry = comm["checkpoints"][ckpt]["methods"][comm["method"]]
    return RunModel(str(run_dir), cfg, ckpt, str(path), names, result.gw[ckpt], entry, config.num_hidden_layers)


def check_request(run: RunModel, drops, methods, out, heal_steps: int, seeds: int, n_eval: int) -> None:
    """Validate the arguments against the run before any weight is read."""
    for flag, value, low in (("--heal-steps", heal_steps, 0), ("--seeds", seeds, 1), ("--eval-samples", n_eval, 1)):
        if value < low:
            raise GwrayInputError(f"{flag} {value}: must be at least {low}")
    bad = [k for k in drops if not 0 <= k < run.n_blocks]
    if bad:
        raise GwrayInputError(f"--drop {bad[0]}: must be in [0, {run.n_blocks - 1}] for a model with "
                              f"{run.n_blocks} blocks")
    if out is not None:
        if len(drops) != 1 or len(methods) != 1:
            raise GwrayInputError("--out: needs one --drop value and one --method (not all)")
        from pathlib import Path

        if Path(out).exists():
            raise GwrayInputError(f"--out {out}: already exists (choose a new directory)")


def choices(run: RunModel, groups, probe: dict, methods, k: int, seeds: int) -> list[tuple[str, int, list]]:
    """(method, seed, dropped blocks) for every method at drop count ``k``."""
    out = []
    for m in methods:
        if m == "groups":
            out.append((m, 0, sorted(scores.group_order(groups, run.D, run.names)[:k])))
        elif m == "bi":
            out.append((m, 0, sorted(scores.bi_order(probe["bi"])[:k])))
        elif m == "angular":
            out.append((m, 0, scores.angular_choice(probe["last"], k)))
        else:
            out += [(m, s, scores.random_choice(run.n_blocks, k, s)) for s in range(seeds)]
    return out


def table(rows: list[dict], drops, methods, healed: bool) -> str:
    """Markdown table: one row per method (+ unpruned), one column per K; random = mean of seeds."""
    def cell(m, k):
        hits = [r for r in rows if r["method"] == m and r["k"] == k]
        if not hits:
            return "-"
        ppl = f"{np.mean([r['perplexity'] for r in hits]):.2f}"
        return f"{ppl} / {np.mean([r['healed'] for r in hits]):.2f}" if healed else ppl

    head = "| method | " + " | ".join(f"K={k}" for k in drops) + " |"
    lines = [head, "|" + "---|" * (len(drops) + 1)]
    lines.append("| unpruned | " + " | ".join(cell("unpruned", 0) for _ in drops) + " |")
    lines += ["| " + m + " | " + " | ".join(cell(m, k) for k in drops) + " |" for m in methods]
    return "\n".join(lines)


def prune(run_dir: str, drops, method: str = ALL, eval_source: str | None = None, heal_steps: int = 0,
          out: str | None = None, seeds: int = 3, n_eval: int = 256, heal_lr: float = 1e-4,
          quiet: bool = False) -> dict:
    """Score, drop, (heal,) evaluate; write ``out`` when given. Returns ``prune.json``'s content.

    Parameters
    ----------
    drops : list of int
        Numbers of blocks to drop, each in [0, L).
    method : {"groups", "bi", "angular", "random", "all"}
    seeds : int
        Random draws per K (their perplexities are averaged in the table).
    n_eval : int
        At most this many held-out evaluation texts.
    """
    from gwray.activations.probes import load_probe
    from gwray.models.loaders import load_model
    from gwray.prune import evaluate, hf

    def say(msg):
        if not quiet:
            print(f"[gwray prune] {msg}", file=sys.stderr, flush=True)

    drops = [int(k) for k in drops]
    methods = list(scores.METHODS) if method == ALL else [method]
    run = read_run(run_dir)
    check_request(run, drops, methods, out, heal_steps, seeds, n_eval)
    probe_cfg = run.config.probe
    texts = evaluate.split_texts(probe_cfg, eval_source, n_eval)
    if heal_steps > 0 and not texts["heal"]:
        raise GwrayInputError("--heal-steps: no text left for healing once the evaluation text is held out")
    groups, note = scores.pruning_groups(run.groups_entry) if "groups" in methods else (None, "")
    say(f"{len(texts['eval'])} evaluation texts from {texts['source']}"
        + (f" ({texts['removed']} probe samples removed)" if texts["removed"] else ""))
    loaded = load_model(run.config.model, checkpoint_path=run.path, device="cpu")
    model, tok, family = loaded.module, loaded.tokenizer, hf.causal_family(loaded.module.config, run.path)
    probe = hf.probe_scores(model, family, tok, load_probe(probe_cfg).texts, probe_cfg.max_tokens, probe_cfg.batch_size)
    max_tokens = probe_cfg.max_tokens

    def evaluate_blocks(m, s, k, blocks):
        pruned = hf.drop_blocks(model, family, blocks)
        ppl = evaluate.perplexity(pruned, tok, texts["eval"], max_tokens)
        healed = ppl
        if heal_steps > 0:
            evaluate.heal(pruned, tok, texts["heal"], heal_steps, lr=heal_lr, max_tokens=max_tokens, seed=s)
            healed = evaluate.perplexity(pruned, tok, texts["eval"], max_tokens)
        say(f"{m:>8} K={k} seed={s} dropped {blocks}: perplexity {ppl:.3f}" + (f" -> {healed:.3f} healed" if heal_steps else ""))
        return {"method": m, "k": k, "seed": s, "dropped": blocks, "perplexity": ppl, "healed": healed}, pruned

    rows = [evaluate_blocks("unpruned", 0, 0, [])[0]]
    written = None
    for k in drops:
        for m, s, blocks in choices(run, groups, probe, methods, k, seeds):
            row, pruned = evaluate_blocks(m, s, k, blocks)
            rows.append(row)
            if out is not None and s == 0:
                written = (row, pruned)
    print(table(rows, drops, methods, heal_steps > 0))
    info = {
        "method": written[0]["method"] if written else method, "dropped": written[0]["dropped"] if written else None,
        "k": written[0]["k"] if written else drops, "n_blocks": run.n_blocks, "model": run.path, "run": run.out,
        "checkpoint": run.checkpoint,
        "scores": {"gw_input_output": [float(run.D[i, i + 1]) for i in range(run.n_blocks)],
                   "groups": groups, "groups_note": note, "bi": probe["bi"].tolist(), "bi_tokens": probe["tokens"],
                   "angular": {str(k): scores.angular_distances(probe["last"], k).tolist() for k in drops if k > 0}},
        "perplexities": rows,
        "eval": {"source": texts["source"], "texts": len(texts["eval"]), "max_tokens": max_tokens,
                 "probe_samples_removed": texts["removed"]},
        "heal": {"steps": heal_steps, "lr": heal_lr, "optimizer": "AdamW, weight decay 0", "texts": len(texts["heal"])},
    }
    if written is not None:
        hf.save_pruned(written[1], run.path, out, info)
        print(f"pruned model: {out}")
    return info


def add_parser(sub, epilog: str) -> None:
    """The ``prune`` sub-command of ``gwray`` (called by :func:`gwray.cli.build_parser`)."""
    p = sub.add_parser("prune", epilog=epilog, help="drop blocks of a run's causal LM, guided by its groups",
                       description="Drop K blocks of the run's Hugging Face causal LM (GPT-2, GPT-NeoX, "
                                   "Llama/Mistral/Qwen2) chosen by gwray's groups, ShortGPT's Block "
                                   "Influence, the angular distance (arXiv 2403.17887) or at random; "
                                   "print held-out perplexity per method and K.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `gwray run` directory")
    p.add_argument("--drop", metavar="K", type=int, nargs="+", required=True,
                   help="number(s) of blocks to drop; several values print a curve")
    p.add_argument("--method", choices=[*scores.METHODS, ALL], default=ALL, help="selection rule (default: all)")
    p.add_argument("--eval", metavar="TEXT", default=None, dest="eval_source",
                   help="evaluation text: .txt (one text per line), .jsonl, .parquet or builtin:NAME "
                        "(default: the probe source's texts the run did not sample)")
    p.add_argument("--eval-samples", metavar="N", type=int, default=256, help="at most N evaluation texts")
    p.add_argument("--heal-steps", metavar="N", type=int, default=0,
                   help="AdamW steps on text disjoint from the evaluation text before evaluating")
    p.add_argument("--heal-lr", type=float, default=1e-4, help="healing learning rate (default 1e-4)")
    p.add_argument("--seeds", type=int, default=3, help="random draws per K (default 3)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write the pruned model (one --drop, one --method) as an HF directory + prune.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=lambda a: prune(a.run_dir, a.drop, a.method, a.eval_source, a.heal_steps, a.out,
                                        a.seeds, a.eval_samples, a.heal_lr, a.quiet))
