"""Hugging Face causal LMs: the probe's block-by-block states, dropping blocks, writing the result.

Supported through the family adapters of :mod:`gwray.models.families`: GPT-2, GPT-NeoX and the
Llama family (Llama, Mistral, Qwen2). A pruned model is an ordinary model of the same class with
fewer blocks: the kept blocks keep their weights, are renumbered 0 … L − K − 1 (attention
``layer_idx`` and the tensor names in the saved file) and ``config.num_hidden_layers`` (and
``config.layer_types`` where present) follow, so ``AutoModelForCausalLM.from_pretrained`` loads it.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gwray.activations.probes import tokenize
from gwray.errors import GwrayInputError
from gwray.models.families import FAMILIES, Family, get_family
from gwray.prune.scores import cosine_rows

CAUSAL_FAMILIES = ("gpt2", "gpt_neox", "llama")
#: Files a tokenizer may consist of; copied unchanged into the pruned model's directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def supported_types() -> list[str]:
    """``config.model_type`` values ``gwray prune`` accepts."""
    return [t for f in FAMILIES if f.name in CAUSAL_FAMILIES for t in f.model_types]


def causal_family(config, where: str) -> Family:
    """The family adapter of a causal LM config, or a one-line error naming its architecture.

    Parameters
    ----------
    config : transformers.PretrainedConfig
    where : str
        What to name in the message (the model directory).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in supported_types():
        raise GwrayInputError(f"model {where}: architecture {model_type!r} is not supported by gwray prune "
                              f"(supported causal LMs: {', '.join(supported_types())})")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise GwrayInputError(f"model {where}: config.scale_attn_by_inverse_layer_idx is set, so a block's "
                              f"output depends on its position and it cannot be dropped exactly")
    return get_family(config)


def base_model(model: nn.Module, family: Family) -> nn.Module:
    """The base model (``GPT2Model``, ``LlamaModel``, ...) inside a task model, or ``model`` itself."""
    return model.get_submodule(family.prefix) if hasattr(model, family.prefix) else model


@torch.no_grad()
def probe_scores(model: nn.Module, family: Family, tokenizer, texts: list[str], max_tokens: int,
                 batch_size: int = 32) -> dict:
    """Block Influence and last-token states of the probe, block by block (no hidden-state copies).

    The states are the raw residual stream: ``h_0`` = embedding output, ``h_{i+1}`` = block i's
    output *before* the final norm (HF's ``output_hidden_states`` applies the norm to the last
    entry; the papers score the block's own output).

    Parameters
    ----------
    model : causal LM of a supported family, eval mode.
    texts : list of str
        The probe texts, each truncated to ``max_tokens`` tokens.

    Returns
    -------
    dict
        ``bi``: (L,) float64 Block Influence over every real token (see :mod:`gwray.prune.scores`);
        ``last``: list of L + 1 (m, d) float64 arrays, each text's last real token;
        ``mean``: list of L + 1 (m, d) float64 arrays, each text's mean over its real tokens
        (gwray's ``pooling: mean`` of the same states); ``tokens``: number of tokens the BI mean
        runs over.
    """
    base = base_model(model, family)
    n_blocks = family.n_blocks(base)
    cos_sum, n_tok = np.zeros(n_blocks), 0
    last, mean = [[] for _ in range(n_blocks + 1)], [[] for _ in range(n_blocks + 1)]
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[start:start + batch_size], max_tokens)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        real = mask.bool()
        at = (mask * torch.arange(mask.shape[1], device=device)).argmax(1)  # last real token, any padding side
        rows = torch.arange(mask.shape[0], device=device)
        hidden = family.embed(base, ids, mask)
        ctx = family.context(base, hidden, mask)
        weights = (mask / mask.sum(1, keepdim=True)).double()[..., None]
        last[0].append(hidden[rows, at].double().cpu().numpy())
        mean[0].append((hidden.double() * weights).sum(1).cpu().numpy())
        for i in range(n_blocks):
            out = family.run_block(base, i, hidden, ctx)
            cos_sum[i] += cosine_rows(hidden[real].double().cpu().numpy(), out[real].double().cpu().numpy()).sum()
            last[i + 1].append(out[rows, at].double().cpu().numpy())
            mean[i + 1].append((out.double() * weights).sum(1).cpu().numpy())
            hidden = out
        n_tok += int(real.sum())
    return {"bi": 1.0 - cos_sum / n_tok, "last": [np.concatenate(x) for x in last],
            "mean": [np.concatenate(x) for x in mean], "tokens": n_tok}


def drop_blocks(model: nn.Module, family: Family, blocks) -> nn.Module:
    """A copy of ``model`` without ``blocks`` (indices in the original numbering).

    The kept blocks are renumbered in depth order: their ``layer_idx`` attributes (KV-cache slots)
    and, on save, their tensor names; ``config.num_hidden_layers`` and ``config.layer_types``
    follow. The original model is left untouched.

    Returns
    -------
    nn.Module
        Same class as ``model``, in eval mode.
    """
    n_blocks = family.n_blocks(base_model(model, family))
    drop = sorted({int(b) for b in blocks})
    if any(not 0 <= b < n_blocks for b in drop) or len(drop) >= n_blocks:
        raise GwrayInputError(f"blocks {drop}: must be fewer than {n_blocks} distinct indices in [0, {n_blocks})")
    pruned = copy.deepcopy(model)
    base = base_model(pruned, family)
    old = family.block_list(base)
    kept = [old[i] for i in range(n_blocks) if i not in drop]
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    parent, _, name = family.blocks.rpartition(".")
    setattr(base.get_submodule(parent) if parent else base, name, nn.ModuleList(kept))
    config = pruned.config
    keep_index = [i for i in range(n_blocks) if i not in drop]
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep_index]
    config.num_hidden_layers = len(kept)
    return pruned.eval()


def save_pruned(model: nn.Module, source_dir: "str | Path", out: "str | Path", info: dict) -> Path:
    """Write ``model`` as a Hugging Face directory (safetensors) with ``prune.json``, atomically.

    The tokenizer files of ``source_dir`` are copied unchanged. Everything is written into a
    temporary sibling directory that is renamed to ``out`` at the end, so ``out`` either does not
    exist or is complete.

    Parameters
    ----------
    info : dict
        JSON-ready content of ``prune.json``.

    Raises
    ------
    GwrayInputError
        ``out`` already exists (nothing is overwritten).
    """
    out, source_dir = Path(out), Path(source_dir)
    if out.exists():
        raise GwrayInputError(f"--out {out}: already exists (choose a new directory)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, tmp / name)
        (tmp / "prune.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
