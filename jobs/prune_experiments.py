"""Acting on the groups of a small causal LM: dropping blocks and fine-tuning one group (docs/results.md).

Stages (run by ``jobs/experiments.py``), one per LM training seed:

- ``lm_train:<seed>`` — a GPT-2 (6 blocks, width 64, a byte-level BPE) trained on the CRC-32 train
  split of the built-in English corpus (*Botchan*); its probe states (mean-pooled raw block
  outputs of probe sentences from the train split), the GW matrix, groups, baselines and solver
  dependence (``analysis.analyse_layers``), Block Influence and the angular distances.
- ``lm_prune:<seed>`` — drop K blocks by each rule; held-out perplexity on the test split, before
  and after healing (each healing seed), random = independent draws.
- ``lm_finetune:<seed>`` — on a shifted domain (sentences of Python standard-library
  docstrings), train only one group's blocks (GW groups, 1 − CKA groups), as many random blocks,
  all blocks or none; held-out loss on the new domain and on *Botchan* (forgetting).
"""
from __future__ import annotations

import inspect
import re
import time
import zlib

import numpy as np
import torch

import analysis

STDLIB = ("os", "collections", "itertools", "functools", "json", "re", "argparse", "pathlib", "subprocess",
          "typing", "logging", "email.message", "http.client", "urllib.request", "xml.etree.ElementTree",
          "unittest", "asyncio", "decimal", "fractions", "statistics", "datetime", "calendar", "string",
          "textwrap", "shutil", "tarfile", "zipfile", "csv", "sqlite3", "socket", "ssl", "threading",
          "multiprocessing", "concurrent.futures", "inspect", "ast", "pickle", "copy", "heapq", "bisect",
          "random", "hashlib", "secrets", "uuid", "base64", "codecs", "locale", "gettext", "optparse",
          "configparser", "tempfile", "glob", "fnmatch", "difflib", "pprint", "enum", "dataclasses",
          "contextlib", "abc", "io", "sched", "queue", "selectors", "ftplib", "smtplib", "mailbox",
          "mimetypes", "html.parser", "gzip", "bz2", "lzma", "pdb", "doctest", "trace", "tracemalloc", "imaplib")
RULES = ("groups", "gw_io", "cka_groups", "bi", "angular")


def stages(s: dict) -> list:
    out = []
    for seed in range(s["seeds"]):
        out.append((f"lm_train:{seed}", "prune_experiments", "train_stage", (seed,), []))
        out.append((f"lm_prune:{seed}", "prune_experiments", "prune_stage", (seed,), [f"lm_train:{seed}"]))
        out.append((f"lm_finetune:{seed}", "prune_experiments", "finetune_stage", (seed,), [f"lm_train:{seed}"]))
    return out


def split(texts, test_percent: int = 20):
    """Deterministic train/test split by the CRC-32 of each text (stable across runs and machines)."""
    test = [t for t in texts if zlib.crc32(t.encode()) % 100 < test_percent]
    held = set(test)
    return [t for t in texts if t not in held], test


def corpus(p: dict) -> dict:
    """*Botchan* train/test, the probe (from train), the evaluation texts (from test)."""
    from gwray.prune.evaluate import read_texts

    english = read_texts("builtin:english")[1]
    train, test = split(english[:p.get("n_sentences", len(english))])
    rng = np.random.default_rng(0)
    probe = [train[i] for i in np.sort(rng.choice(len(train), p["n_probe"], replace=False))]
    return {"train": train, "test": test, "probe": probe, "eval": test[:p["n_eval"]]}


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


def _lm_dir(ctx, seed: int):
    return ctx.out / "lm" / f"seed-{seed}"


def train_lm(out, texts: list[str], p: dict, seed: int) -> float:
    """A GPT-2 with a byte-level BPE trained on ``texts`` (seeded init and batch order); saved as an
    HF directory (safetensors). Returns the training CPU seconds."""
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer

    from gwray.prune import evaluate

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=p["vocab"], special_tokens=["<|endoftext|>"])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = tf.GPT2Config(n_layer=p["layers"], n_embd=p["width"], n_head=4, vocab_size=len(tok),
                           n_positions=p["max_tokens"], bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(config)
    t0 = time.process_time()
    evaluate.heal(model, tok, texts, p["train_steps"], lr=p["lr"], batch_size=p["batch"], max_tokens=p["max_tokens"],
                  seed=seed)
    cpu = time.process_time() - t0
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return cpu


def _load(ctx, seed: int):
    import transformers as tf

    from gwray.prune.hf import causal_family

    path = _lm_dir(ctx, seed)
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tf.AutoTokenizer.from_pretrained(path), causal_family(model.config, str(path))


def train_stage(ctx, seed: int) -> dict:
    from gwray.prune import evaluate, hf, scores

    p = ctx.s["lm"]
    texts = corpus(p)
    cpu = None
    if not (_lm_dir(ctx, seed) / "config.json").exists():
        cpu = train_lm(_lm_dir(ctx, seed), texts["train"], p, seed)
    model, tok, family = _load(ctx, seed)
    probe = hf.probe_scores(model, family, tok, texts["probe"], p["max_tokens"], 32)
    names = ["embeddings"] + [f"block.{i}" for i in range(p["layers"])]
    out = {"seed": seed, "train_cpu_s": cpu, "sizes": {k: len(v) for k, v in texts.items()},
           "parameters": sum(x.numel() for x in model.parameters()),
           "perplexity": evaluate.perplexity(model, tok, texts["eval"], p["max_tokens"]),
           "bi": probe["bi"], "angular": {str(k): scores.angular_distances(probe["last"], k) for k in p["drops"]}}
    out.update(analysis.analyse_layers(probe["mean"], names, ctx.s, seed))
    return out


def prune_stage(ctx, seed: int) -> dict:
    """Perplexity after dropping K blocks by every rule, before and after healing."""
    from gwray.prune import evaluate, hf, scores

    s, p = ctx.s, ctx.s["lm"]
    info = ctx.result(f"lm_train:{seed}")
    model, tok, family = _load(ctx, seed)
    texts = corpus(p)
    orders = analysis.rule_orders(info, info["names"])
    orders["bi"] = scores.bi_order(info["bi"])
    n_blocks = p["layers"]
    rows, cache = [], {}

    def add(rule, k, blocks, heal_seeds, draw=0):
        for h in heal_seeds:
            key = (tuple(blocks), h)
            if key not in cache:  # rules that pick the same blocks share the healing run of each seed
                pruned = hf.drop_blocks(model, family, blocks)
                ppl = evaluate.perplexity(pruned, tok, texts["eval"], p["max_tokens"])
                evaluate.heal(pruned, tok, texts["train"], p["heal_steps"], lr=p["heal_lr"], batch_size=p["batch"],
                              max_tokens=p["max_tokens"], seed=h)
                cache[key] = {"perplexity": ppl, "healed": evaluate.perplexity(pruned, tok, texts["eval"],
                                                                                 p["max_tokens"])}
            rows.append({"rule": rule, "k": k, "draw": draw, "heal_seed": h, "blocks": list(blocks), **cache[key]})

    heal = range(s["heal_seeds"])
    add("unpruned", 0, [], heal)
    for k in p["drops"]:
        for rule, order in orders.items():
            add(rule, k, sorted(order[:k]), heal)
        ang = np.asarray(info["angular"][str(k)])
        start = int(np.argmin(ang))
        add("angular", k, list(range(start, start + k)), heal)
        for d in range(s["random_draws"]):
            add("random", k, scores.random_choice(n_blocks, k, 1000 * seed + d), [d % s["heal_seeds"]], d)
    return {"seed": seed, "rows": rows, "orders": orders}


def block_groups(D, names, k: int = 3) -> list[list[int]]:
    """Block indices of each group of the optimal contiguous segmentation of D into k groups
    (untested: fine-tuning needs two block groups even where no structure is significant)."""
    from gwray.graph.communities import find_subnetworks

    groups = find_subnetworks(np.asarray(D), method="contiguous", k=k, names=names, n_null=0).groups
    index = {n: i for i, n in enumerate(names)}
    return [b for b in ([index[n] - 1 for n in g if index[n] > 0] for g in groups) if b]


def finetune_stage(ctx, seed: int) -> dict:
    """Train only some blocks on the docstring domain; held-out loss (mean NLL per token) after."""
    from gwray.prune import evaluate, scores

    s, p = ctx.s, ctx.s["lm"]
    info = ctx.result(f"lm_train:{seed}")
    names = info["names"]
    domain_train, domain_test = split(docstring_sentences())
    botchan = corpus(p)["eval"][:p["ft_eval"]]
    domain_test = domain_test[:p["ft_eval"]]
    gw_groups = block_groups(info["matrices"]["gw"], names)
    cka = 1.0 - np.clip(np.asarray(info["matrices"]["cka"]), 0.0, 1.0)
    cka_groups = block_groups((cka + cka.T) / 2.0, names)
    conditions = [("none", 0, [], 0)]
    heal = range(s["heal_seeds"])
    for g, blocks in enumerate(gw_groups):
        conditions += [(f"gw group {g + 1}", g, blocks, h) for h in heal]
    for g, blocks in enumerate(cka_groups):
        conditions += [(f"cka group {g + 1}", g, blocks, h) for h in heal]
    for size in sorted({len(b) for b in gw_groups}):
        conditions += [(f"random {size}", d, scores.random_choice(p["layers"], size, 1000 * seed + d),
                        d % s["heal_seeds"]) for d in range(s["random_draws"])]
    conditions += [("all blocks", 0, list(range(p["layers"])), h) for h in heal]
    done: dict = {}
    rows = []
    for label, index, blocks, h in conditions:
        key = (tuple(blocks), h if blocks else 0)
        if key not in done:  # the same blocks and seed train the same model: computed once
            model, tok, _ = _load(ctx, seed)
            for prm in model.parameters():
                prm.requires_grad_(False)
            for b in blocks:
                for prm in model.transformer.h[b].parameters():
                    prm.requires_grad_(True)
            if blocks:
                evaluate.heal(model, tok, domain_train, p["ft_steps"], lr=p["ft_lr"], batch_size=p["batch"],
                              max_tokens=p["max_tokens"], seed=h)
            done[key] = {"domain_loss": float(np.log(evaluate.perplexity(model, tok, domain_test, p["max_tokens"]))),
                         "botchan_loss": float(np.log(evaluate.perplexity(model, tok, botchan, p["max_tokens"])))}
        rows.append({"condition": label, "index": index, "blocks": list(blocks), "seed": h, **done[key]})
    return {"seed": seed, "gw_groups": gw_groups, "cka_groups": cka_groups, "rows": rows,
            "sizes": {"domain_train": len(domain_train), "domain_test": len(domain_test), "botchan_test": len(botchan)}}
