"""Evidence for `gwray prune` and for fine-tuning by group (docs/results.md, sections 4 and 5).

    python jobs/prune_experiments.py --out runs/prune           # about 25 minutes on 2 busy cores
    python jobs/prune_experiments.py --out /tmp/p --quick       # a minute: small everything

1. Trains a small GPT-2 (8 blocks, width 64, a 2,048-token byte-level BPE) on 80 % of the built-in
   English corpus (Botchan, gwray/data/english.txt) on the CPU, with gwray's own AdamW loop.
2. Runs gwray on it (``gwray.pipeline.run``: 256 probe sentences, Ray) for its GW matrix and groups.
3. ``gwray prune`` (through :func:`gwray.prune.command.prune`): every rule at K = 1 … 4, evaluated
   on the 20 % of Botchan the LM never saw, without and with healing; random = 3 seeds.
4. Fine-tuning by group on a shifted domain (sentences of the Python 3.11 standard library's
   docstrings): only one group's blocks vs all blocks vs as many random blocks (3 seeds);
   embeddings, final norm and head stay frozen; held-out loss on the new domain and on Botchan.
5. all-MiniLM-L6-v2 (packaged): the same four rules drop K blocks of the encoder; measured by how
   much of each held-out sentence's 10 nearest neighbours (cosine, mean-pooled and normalised
   sentence embeddings, as sentence-transformers does) the pruned encoder keeps.

Writes OUT/results.json, OUT/tables.md and OUT/figures/prune_*.png.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gwray.activations.probes import load_probe, tokenize  # noqa: E402
from gwray.config import ProbeConfig  # noqa: E402
from gwray.models.families import get_family  # noqa: E402
from gwray.prune import evaluate, hf, scores  # noqa: E402
from gwray.prune.command import prune  # noqa: E402

FULL = dict(layers=8, width=64, vocab=2048, train_steps=600, lr=2e-3, batch=16, max_tokens=64, n_probe=256,
            drops=[1, 2, 3, 4], heal_steps=30, seeds=3, ft_steps=100, ft_lr=1e-3, ft_groups=3, ft_seeds=2,
            minilm_drops=[1, 2, 3, 4])
QUICK = dict(FULL, layers=4, width=64, vocab=512, train_steps=100, n_probe=32, drops=[1, 2], heal_steps=5,
             seeds=2, ft_steps=10, minilm_drops=[1])
STDLIB = ("os", "collections", "itertools", "functools", "json", "re", "argparse", "pathlib", "subprocess",
          "typing", "logging", "email.message", "http.client", "urllib.request", "xml.etree.ElementTree",
          "unittest", "asyncio", "decimal", "fractions", "statistics", "datetime", "calendar", "string",
          "textwrap", "shutil", "tarfile", "zipfile", "csv", "sqlite3", "socket", "ssl", "threading",
          "multiprocessing", "concurrent.futures", "inspect", "ast", "pickle", "copy", "heapq", "bisect",
          "random", "hashlib", "secrets", "uuid", "base64", "codecs", "locale", "gettext", "optparse",
          "configparser", "tempfile", "glob", "fnmatch", "difflib", "pprint", "enum", "dataclasses",
          "contextlib", "abc", "io", "sched", "queue", "selectors", "ftplib", "smtplib", "mailbox",
          "mimetypes", "html.parser", "gzip", "bz2", "lzma", "pdb", "doctest", "trace", "tracemalloc", "imaplib")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def split(texts, test_fraction=0.2):
    """Deterministic train/test split by a hash of each text (stable across runs and machines)."""
    test = [t for t in texts if zlib.crc32(t.encode()) % 100 < test_fraction * 100]
    held = set(test)
    return [t for t in texts if t not in held], test


def docstring_sentences() -> list[str]:
    """Sentences (6-40 words) of the docstrings of STDLIB's public functions and classes, deduplicated."""
    import importlib

    out: dict = {}
    for name in STDLIB:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj) if inspect.ismodule(obj) or inspect.isroutine(obj) or inspect.isclass(obj) else None
            for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc or "")):
                if 6 <= len(s.split()) <= 40:
                    out.setdefault(s.strip(), None)
    return list(out)


def train_lm(out: Path, texts: list[str], p: dict) -> Path:
    """A GPT-2 with a byte-level BPE trained on ``texts``; saved as an HF directory (safetensors)."""
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=p["vocab"], special_tokens=["<|endoftext|>"])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = tf.GPT2Config(n_layer=p["layers"], n_embd=p["width"], n_head=4, vocab_size=len(tok),
                           n_positions=p["max_tokens"], bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(config)
    t0 = time.process_time()
    evaluate.heal(model, tok, texts, p["train_steps"], lr=p["lr"], batch_size=p["batch"], max_tokens=p["max_tokens"])
    say(f"trained the LM: {p['train_steps']} steps, {time.process_time() - t0:.0f} CPU-s, "
        f"{sum(x.numel() for x in model.parameters())} parameters")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def analyse(model_dir: Path, out: Path, p: dict) -> Path:
    """gwray on the trained LM (Ray): GW matrix and contiguous groups."""
    from gwray.pipeline import run

    run({"name": "lm", "model": {"path": str(model_dir)}, "probe": {"n_samples": p["n_probe"], "max_tokens": p["max_tokens"]},
         "graph": {"method": "contiguous", "k": "auto"}, "resources": {"workers": 2}}, out=out, progress=False)
    return out


def finetune(model_dir: Path, run_dir: Path, domain: tuple, botchan_test: list[str], p: dict) -> list[dict]:
    """Train only some blocks on the new domain; held-out loss (mean NLL per token) after."""
    import transformers as tf

    from gwray.pipeline import load_run

    from gwray.graph.communities import find_subnetworks

    result = load_run(run_dir)
    names = result.layers[result.checkpoints[-1]]
    groups = result.groups[result.checkpoints[-1]]
    if max(len(g) for g in groups) >= len(names) - 1:  # one group holds every block: nothing to compare
        groups = find_subnetworks(result.gw[result.checkpoints[-1]], method="contiguous", k=p["ft_groups"], names=names).groups
        say(f"fine-tuning: the run's groups put every block in one group; contiguous k = {p['ft_groups']}: {groups}")
    block_of = {n: i - 1 for i, n in enumerate(names) if i > 0}  # layer i + 1 is block i's output
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    train, test = domain
    n_blocks = len(names) - 1
    conditions = [("none", 0, [])]
    for g, members in enumerate(groups):
        blocks = sorted(block_of[n] for n in members if n in block_of)
        if blocks:
            conditions.append((f"group {g + 1}", 0, blocks))
            conditions += [(f"random x{len(blocks)}", s, scores.random_choice(n_blocks, len(blocks), 100 + s))
                           for s in range(p["ft_seeds"])]
    conditions.append(("all blocks", 0, list(range(n_blocks))))
    rows = []
    for label, seed, blocks in conditions:
        model = tf.AutoModelForCausalLM.from_pretrained(model_dir)
        for prm in model.parameters():
            prm.requires_grad_(False)
        trained = 0
        for b in blocks:
            for prm in model.transformer.h[b].parameters():
                prm.requires_grad_(True)
                trained += prm.numel()
        if blocks:
            evaluate.heal(model, tok, train, p["ft_steps"], lr=p["ft_lr"], batch_size=p["batch"],
                          max_tokens=p["max_tokens"], seed=seed)
        row = {"condition": label, "seed": seed, "blocks": blocks, "params": trained,
               "domain_loss": float(np.log(evaluate.perplexity(model, tok, test, p["max_tokens"]))),
               "botchan_loss": float(np.log(evaluate.perplexity(model, tok, botchan_test, p["max_tokens"])))}
        say(f"fine-tune {label} seed {seed} blocks {blocks}: domain {row['domain_loss']:.3f}, botchan {row['botchan_loss']:.3f}")
        rows.append(row)
    return {"groups": groups, "rows": rows}


def minilm(out: Path, p: dict) -> dict:
    """Drop K blocks of all-MiniLM-L6-v2 by each rule; keep-rate of 10-nearest-neighbour sets."""
    import transformers as tf

    from gwray.models.loaders import resolve_model_path
    from gwray.pipeline import load_run, run

    run_dir = out / "minilm_run"
    if not (run_dir / "communities.json").exists():
        run({"name": "minilm", "model": {"path": "minilm"}, "probe": {"n_samples": p["n_probe"], "max_tokens": 64},
             "resources": {"workers": 2}}, out=run_dir, progress=False)
    result = load_run(run_dir)
    names, D = result.layers["main"], result.matrix
    path = resolve_model_path("minilm")
    model, tok = tf.AutoModel.from_pretrained(path).eval(), tf.AutoTokenizer.from_pretrained(path)
    family = get_family(model.config)
    probe_cfg = result.config.probe
    probe = hf.probe_scores(model, family, tok, load_probe(probe_cfg).texts, 64, 32)
    held = evaluate.split_texts(probe_cfg, None, 256)["eval"]

    @torch.no_grad()
    def embed(m):
        out_ = []
        for s in range(0, len(held), 64):
            enc = tokenize(tok, held[s:s + 64], 64)
            h = m(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            out_.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1))
        return torch.cat(out_).numpy()

    def knn(E, k=10):
        S = E @ E.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1)[:, :k]

    full = knn(embed(model))
    groups, note = scores.pruning_groups(result.communities["checkpoints"]["main"]["methods"][result.communities["method"]])
    rows = []
    for k in p["minilm_drops"]:
        picks = [("groups", 0, sorted(scores.group_order(groups, D, names)[:k])),
                 ("bi", 0, sorted(scores.bi_order(probe["bi"])[:k])), ("angular", 0, scores.angular_choice(probe["last"], k))]
        picks += [("random", s, scores.random_choice(len(names) - 1, k, s)) for s in range(p["seeds"])]
        for method, seed, blocks in picks:
            pruned = knn(embed(hf.drop_blocks(model, family, blocks)))
            keep = float(np.mean([len(set(a) & set(b)) / a.size for a, b in zip(full, pruned)]))
            rows.append({"method": method, "k": k, "seed": seed, "dropped": blocks, "knn10_kept": keep})
            say(f"minilm {method} K={k} {blocks}: {keep:.3f}")
    return {"groups": groups, "note": note, "bi": probe["bi"].tolist(), "n_eval": len(held), "rows": rows}


def stage(out: Path, name: str, compute):
    """A stage's results from OUT/stage_<name>.json, computed (and saved) when absent: reruns resume."""
    path = out / f"stage_{name}.json"
    if not path.exists():
        path.write_text(json.dumps(compute(), indent=1))
    return json.loads(path.read_text())


def curve_table(rows, drops, key, fmt="{:.2f}") -> str:
    methods = [m for m in ("unpruned", "groups", "bi", "angular", "random") if any(r["method"] == m for r in rows)]
    lines = ["| method | " + " | ".join(f"K={k}" for k in drops) + " |", "|" + "---|" * (len(drops) + 1)]
    for m in methods:
        cells = []
        for k in drops:
            hits = [r[key] for r in rows if r["method"] == m and (r["k"] == k or m == "unpruned")]
            cells.append(fmt.format(np.mean(hits)) + (f" ± {np.std(hits):.2f}" if m == "random" else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (title, rows, key, drops) in zip(axes, [
            ("LM, no healing", res["prune"]["plain"], "perplexity", res["params"]["drops"]),
            (f"LM, {res['params']['heal_steps']} healing steps", res["prune"]["healed"], "healed", res["params"]["drops"]),
            ("MiniLM: 10-NN kept", res["minilm"]["rows"], "knn10_kept", res["params"]["minilm_drops"])]):
        for m in ("groups", "bi", "angular", "random"):
            ys = [np.mean([r[key] for r in rows if r["method"] == m and r["k"] == k]) for k in drops]
            ax.plot(drops, ys, marker="o", label=m)
        ax.set_title(title)
        ax.set_xlabel("blocks dropped (K)")
        ax.set_yscale("log" if key != "knn10_kept" else "linear")
    axes[0].set_ylabel("held-out perplexity (lower is better)")
    axes[2].set_ylabel("fraction of neighbours kept (higher is better)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "prune_curves.png", dpi=110)
    ft = res["finetune"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label in dict.fromkeys(r["condition"] for r in ft):
        rs = [r for r in ft if r["condition"] == label]
        ax.scatter([r["params"] / 1e3 for r in rs], [r["domain_loss"] for r in rs], label=label,
                   marker="x" if label.startswith("random") else "o")
    ax.set_xlabel("parameters trained (thousands)")
    ax.set_ylabel("held-out loss, docstring domain")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "prune_finetune.png", dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/prune")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two spinning threads are slower than one on a shared 2-core machine
    t0 = time.time()
    english = [t for t in load_probe(ProbeConfig(n_samples=2528)).texts]
    train, test = split(english)
    (out / "botchan_test.txt").write_text("\n".join(test) + "\n")
    domain = split(docstring_sentences())
    say(f"Botchan {len(train)} train / {len(test)} test; docstrings {len(domain[0])} / {len(domain[1])}")
    model_dir = out / "lm"
    if not (model_dir / "config.json").exists():
        train_lm(model_dir, train, p)
    run_dir = out / "lm_run"
    if not (run_dir / "communities.json").exists():
        analyse(model_dir, run_dir, p)
    res = {"params": p, "sizes": {"botchan_train": len(train), "botchan_test": len(test),
                                  "docstring_train": len(domain[0]), "docstring_test": len(domain[1])}}
    common = dict(eval_source=str(out / "botchan_test.txt"), seeds=p["seeds"], n_eval=256, quiet=False)
    res["prune"] = stage(out, "prune", lambda: {
        "plain": prune(str(run_dir), p["drops"], "all", **common)["perplexities"],
        "healed": prune(str(run_dir), p["drops"], "all", heal_steps=p["heal_steps"], heal_lr=5e-4, **common)["perplexities"]})
    from gwray.pipeline import load_run

    res["lm_groups"] = load_run(run_dir).groups
    res["finetune"] = stage(out, "finetune", lambda: finetune(model_dir, run_dir, domain, test[:256], p))
    res["minilm"] = stage(out, "minilm", lambda: minilm(out, p))
    res["wall_seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(res, indent=1))
    figures(res, out / "figures")
    tables = [f"LM groups: {res['lm_groups']}",
              "LM perplexity (no healing)", curve_table(res["prune"]["plain"], p["drops"], "perplexity"),
              "LM perplexity (healed)", curve_table(res["prune"]["healed"], p["drops"], "healed"),
              f"MiniLM groups: {res['minilm']['groups']} {res['minilm']['note']}",
              "MiniLM 10-NN kept", curve_table(res["minilm"]["rows"], p["minilm_drops"], "knn10_kept", "{:.3f}"),
              f"fine-tuning groups: {res['finetune']['groups']}",
              "\n".join(["| condition | blocks | params | domain loss | Botchan loss |", "|---|---|---|---|---|"]
                        + [f"| {r['condition']} (seed {r['seed']}) | {r['blocks']} | {r['params']} | "
                           f"{r['domain_loss']:.3f} | {r['botchan_loss']:.3f} |" for r in res["finetune"]["rows"]])]
    (out / "tables.md").write_text("\n\n".join(tables) + "\n")
    print((out / "tables.md").read_text())
    say(f"done in {res['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
