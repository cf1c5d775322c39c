"""Held-out text, perplexity and healing for causal LMs.

The evaluation text never contains a sample the groups (and the BI / angular scores) were computed
on: by default it is drawn from the texts of the run's probe source that the run did *not* sample;
a user file or ``builtin:`` set has every text equal to one of the run's probe samples removed.
Healing trains on text disjoint from the evaluation text (the rest of the probe source).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gwray.activations.probes import load_probe, tokenize
from gwray.config import ProbeConfig
from gwray.errors import GwrayInputError
from gwray.models.families import position_ids


def read_texts(source: str, field: str = "text") -> tuple[np.ndarray, list[str]]:
    """Every text of a probe-style source (``builtin:<name>``, ``.txt``, ``.jsonl``, ``.parquet``).

    Returns
    -------
    (sample_ids (n,) int64, texts)

    Raises
    ------
    GwrayInputError
        Missing, empty or non-text source.
    """
    try:
        first = load_probe(ProbeConfig(source=source, field=field, n_samples=2))
        probe = load_probe(ProbeConfig(source=source, field=field, n_samples=first.n_source))
    except GwrayInputError as exc:
        if "empty" in str(exc) or "larger than" in str(exc):
            raise GwrayInputError(f"text {source}: empty (fewer than 2 texts)") from None
        raise
    if probe.texts is None:
        raise GwrayInputError(f"text {source}: holds arrays, not text")
    return probe.sample_ids, probe.texts


def split_texts(probe_cfg, eval_source: str | None, n_eval: int, seed: int = 0) -> dict:
    """Evaluation texts that avoid the run's probe samples, and healing texts that avoid those.

    Parameters
    ----------
    probe_cfg : gwray.config.ProbeConfig
        The run's probe (its source, ``n_samples`` and ``seed`` say which texts it used).
    eval_source : str or None
        ``None``: the probe source's texts the run did not sample. Otherwise a probe-style source.
    n_eval : int
        At most this many evaluation texts (a seeded sample when there are more).

    Returns
    -------
    dict
        ``eval``, ``heal`` (lists of str, disjoint by content), ``removed`` (eval texts dropped for
        being probe samples), ``source``.
    """
    probe = load_probe(probe_cfg)
    if probe.texts is None:
        raise GwrayInputError(f"probe {probe_cfg.source}: the run's probe is not text; pass --eval TEXT")
    ids, texts = read_texts(probe_cfg.source, probe_cfg.field)
    used = set(probe.texts)
    if eval_source is None:
        sampled = set(probe.sample_ids.tolist())
        candidates = [t for i, t in zip(ids.tolist(), texts) if i not in sampled]
        if not candidates:
            raise GwrayInputError(f"probe {probe_cfg.source}: the run sampled every text; pass --eval TEXT")
        source = f"{probe_cfg.source} (texts the run's probe did not sample)"
    else:
        candidates = read_texts(eval_source)[1]
        source = eval_source
    kept = [t for t in dict.fromkeys(candidates) if t not in used]
    removed = len(set(candidates)) - len(kept)
    if not kept:
        raise GwrayInputError(f"--eval {source}: every text is one of the run's probe samples")
    if len(kept) > n_eval:
        pick = np.sort(np.random.default_rng(seed).choice(len(kept), n_eval, replace=False))
        kept = [kept[i] for i in pick]
    held = set(kept)
    return {"eval": kept, "heal": [t for t in dict.fromkeys(texts) if t not in held],
            "removed": removed, "source": source}


def _nll(model, tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood of ``texts`` and the number of predicted tokens."""
    enc = tokenize(tokenizer, texts, max_tokens)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    target = mask[:, 1:].bool() & mask[:, :-1].bool()
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll[target].sum(), int(target.sum())


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_tokens: int, batch_size: int = 16) -> float:
    """Perplexity exp(Σ NLL / #tokens) over every next-token prediction inside each text.

    Each text is truncated to ``max_tokens`` tokens and scored on its own (no context across
    texts); its first token is not predicted.
    """
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        nll, n = _nll(model, tokenizer, texts[start:start + batch_size], max_tokens)
        total, count = total + float(nll), count + n
    if count == 0:
        raise GwrayInputError("eval texts: no text has two tokens or more, nothing to predict")
    return math.exp(total / count)


def heal(model, tokenizer, texts: list[str], steps: int, *, lr: float = 1e-4, batch_size: int = 16,
         max_tokens: int = 64, seed: int = 0):
    """Fine-tune every parameter of ``model`` for ``steps`` AdamW steps (no weight decay) in place.

    Batches of ``batch_size`` texts are drawn in a seeded shuffled order (reshuffled each pass);
    the loss is the mean next-token NLL. Returns ``model`` in eval mode.
    """
    if steps <= 0:
        return model.eval()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order: list[int] = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.permutation(len(texts)).tolist()
        batch, order = [texts[i] for i in order[:batch_size]], order[batch_size:]
        nll, n = _nll(model, tokenizer, batch, max_tokens)
        opt.zero_grad(set_to_none=True)
        (nll / max(n, 1)).backward()
        opt.step()
    return model.eval()
