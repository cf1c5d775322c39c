"""all-MiniLM-L6-v2 (packaged) in docs/results.md: its groups over probe seeds, linear probes, pruning.

One set of pretrained weights, so the seeds are *probe* seeds: each draws its own sentences of
the built-in English set. Stages (run by ``jobs/experiments.py``):

- ``minilm_states`` — mean-pooled raw states (embeddings + 6 blocks) of every sentence, and of
  a copy of half of them with two adjacent words swapped (the bigram-shift probe).
- ``minilm:<seed>`` — one probe seed's GW matrix, groups, baselines, solver dependence.
- ``minilm_probes`` — linear probes per layer: sentence length (quartile bins) and bigram shift.
- ``minilm_prune`` — drop K of the 6 blocks by every rule (per probe seed); the share of each
  held-out sentence's 10 nearest neighbours (cosine of the mean-pooled, normalised sentence
  embeddings, as sentence-transformers computes them) that the pruned encoder keeps, per sentence
  (one pretrained model: the held-out sentences are the unit of the intervals).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

import analysis


def stages(s: dict) -> list:
    m = s["minilm"]
    out = [("minilm_states", "exp_minilm", "states_stage", (), []),
           ("minilm_probes", "exp_minilm", "probes_stage", (), ["minilm_states"])]
    seeds = [f"minilm:{k}" for k in range(m["seeds"])]
    out += [(name, "exp_minilm", "seed_stage", (k,), ["minilm_states"]) for k, name in enumerate(seeds)]
    out.append(("minilm_prune", "exp_minilm", "prune_stage", (), seeds))
    return out


def _model():
    import transformers as tf

    from gwray.models.families import get_family
    from gwray.models.loaders import resolve_model_path

    path = resolve_model_path("minilm")
    model = tf.AutoModel.from_pretrained(path).eval()
    return model, tf.AutoTokenizer.from_pretrained(path), get_family(model.config)


def sentences(m: dict) -> list[str]:
    """The built-in English set in source order (its first ``n_sentences`` in --quick)."""
    from gwray.prune.evaluate import read_texts

    texts = read_texts("builtin:english")[1]
    return texts[:m.get("n_sentences", len(texts))]


def probe_texts(m: dict, seed: int) -> tuple[np.ndarray, list[str]]:
    """Probe seed ``seed``: ``n_probe`` sentences drawn without replacement (row ids, texts)."""
    texts = sentences(m)
    ids = np.sort(np.random.default_rng(seed).choice(len(texts), m["n_probe"], replace=False))
    return ids, [texts[i] for i in ids]


def bigram_shift(text: str, rng: np.random.Generator) -> str:
    """``text`` with two adjacent words swapped (at a random position)."""
    words = text.split()
    i = int(rng.integers(0, len(words) - 1))
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def states_stage(ctx) -> dict:
    from gwray.prune.hf import probe_scores

    m = ctx.s["minilm"]
    model, tok, family = _model()
    texts = sentences(m)
    rng = np.random.default_rng(0)
    shift_rows = [i for i, t in enumerate(texts) if len(t.split()) >= 4 and rng.random() < 0.5]
    shifted = [bigram_shift(texts[i], rng) for i in shift_rows]
    states = probe_scores(model, family, tok, texts, m["max_tokens"], 32)["mean"]
    shifted_states = probe_scores(model, family, tok, shifted, m["max_tokens"], 32)["mean"]
    path = ctx.dir("minilm") / "states.npz"
    np.savez(path, **{f"layer{i}": x.astype(np.float32) for i, x in enumerate(states)},
             **{f"shifted{i}": x.astype(np.float32) for i, x in enumerate(shifted_states)},
             shift_rows=np.array(shift_rows))
    names = ["embeddings"] + [f"encoder.layer.{i}" for i in range(len(states) - 1)]
    return {"names": names, "sentences": len(texts), "shifted": len(shifted), "file": str(path.relative_to(ctx.out))}


def _states(ctx) -> dict:
    with np.load(ctx.out / ctx.result("minilm_states")["file"]) as f:
        return {k: f[k] for k in f.files}


def seed_stage(ctx, seed: int) -> dict:
    m = ctx.s["minilm"]
    names = ctx.result("minilm_states")["names"]
    st = _states(ctx)
    ids, _ = probe_texts(m, seed)
    layers = [st[f"layer{i}"][ids].astype(np.float64) for i in range(len(names))]
    return {"seed": seed, "sample_ids": ids.tolist(), **analysis.analyse_layers(layers, names, ctx.s, seed)}


def probes_stage(ctx) -> dict:
    """Linear probes per layer; train/test by the CRC-32 of each sentence (20 % test)."""
    m = ctx.s["minilm"]
    names = ctx.result("minilm_states")["names"]
    st, texts = _states(ctx), sentences(m)
    test = np.array([zlib.crc32(t.encode()) % 100 < 20 for t in texts])
    words = np.array([len(t.split()) for t in texts])
    bins = np.quantile(words[~test], [0.25, 0.5, 0.75])
    out = {}
    length = np.digitize(words, bins)
    out["length (quartile bin)"] = [analysis.probe_accuracy(st[f"layer{i}"][~test], length[~test],
                                                            st[f"layer{i}"][test], length[test])
                                    for i in range(len(names))]
    rows = st["shift_rows"]
    X_rows = np.concatenate([rows, rows])  # each shifted sentence and its original: same split
    y = np.r_[np.zeros(len(rows)), np.ones(len(rows))].astype(int)
    is_test = test[X_rows]
    out["bigram shift"] = []
    for i in range(len(names)):
        X = np.concatenate([st[f"layer{i}"][rows], st[f"shifted{i}"]])
        out["bigram shift"].append(analysis.probe_accuracy(X[~is_test], y[~is_test], X[is_test], y[is_test]))
    chance = {"length (quartile bin)": float(np.bincount(length[test]).max() / test.sum()), "bigram shift": 0.5}
    return {"names": names, "probes": out, "chance": chance, "n_train": int((~test).sum()), "n_test": int(test.sum())}


def prune_stage(ctx) -> dict:
    """10-NN kept after dropping K blocks, by every rule on every probe seed, and random draws."""
    from gwray.prune import hf, scores

    s, m = ctx.s, ctx.s["minilm"]
    model, tok, family = _model()
    texts = sentences(m)
    used = set()
    for k in range(m["seeds"]):
        used |= set(ctx.result(f"minilm:{k}")["sample_ids"])
    held = [t for i, t in enumerate(texts) if i not in used]
    held = [held[i] for i in np.sort(np.random.default_rng(0).choice(len(held), min(m["n_eval"], len(held)),
                                                                     replace=False))]

    @torch.no_grad()
    def knn(encoder, k=10):
        from gwray.activations.probes import tokenize

        parts = []
        for start in range(0, len(held), 64):
            enc = tokenize(tok, held[start:start + 64], m["max_tokens"])
            h = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            parts.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1))
        E = torch.cat(parts).numpy()
        S = E @ E.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1)[:, :k]

    full = knn(model)
    cache: dict = {}

    def kept(blocks) -> str:
        """Key of ``blocks`` in ``cache``: each held-out sentence's share of its 10-NN kept."""
        key = ",".join(str(b) for b in sorted(blocks))
        if key not in cache:
            pruned = knn(hf.drop_blocks(model, family, sorted(blocks)))
            cache[key] = [len(set(a) & set(b)) / a.size for a, b in zip(full, pruned)]
        return key

    n_blocks = len(ctx.result("minilm_states")["names"]) - 1
    rows = []
    for unit in range(m["seeds"]):
        info = ctx.result(f"minilm:{unit}")
        _, probe = probe_texts(m, unit)
        orders = analysis.rule_orders(info, info["names"])
        ps = hf.probe_scores(model, family, tok, probe, m["max_tokens"], 32)
        orders["bi"] = scores.bi_order(ps["bi"])
        for k in m["drops"]:
            picks = {rule: sorted(order[:k]) for rule, order in orders.items()}
            picks["angular"] = scores.angular_choice(ps["last"], k)
            for r, b in picks.items():
                key = kept(b)
                rows.append({"rule": r, "k": k, "unit": unit, "draw": 0, "blocks": b, "key": key,
                             "knn10_kept": float(np.mean(cache[key]))})
    for k in m["drops"]:
        for d in range(s["random_draws"]):
            b = scores.random_choice(n_blocks, k, d)
            key = kept(b)
            rows.append({"rule": "random", "k": k, "unit": None, "draw": d, "blocks": b, "key": key,
                         "knn10_kept": float(np.mean(cache[key]))})
    return {"rows": rows, "per_sentence": cache, "n_eval": len(held)}
