"""Per-architecture adapters: how to run a Hugging Face model one block at a time.

A sharded model never builds a full forward pass: shard 0 runs the embeddings, every shard runs its
own blocks, the last one applies the final norm. An adapter knows, for one family, the module names
of those pieces inside the *base* model (``GPT2Model``, ``LlamaModel``, ``BertModel``, ...) and how
to call one block on hidden states: attention-mask preparation, position ids, rotary embeddings.

The hidden states it yields are exactly Hugging Face's ``output_hidden_states``: index 0 is the
embedding output, index ``i + 1`` the output of block ``i``, and for families with a final norm the
last entry is the last block's output *after* that norm (HF substitutes ``last_hidden_state``).

Masks come from transformers' own ``masking_utils`` builders (so they follow the configured
attention implementation); blocks returning a tuple (older releases) or a tensor are both accepted.
Tested with transformers 5.24.

The module also materialises chosen modules of a meta-built model from safetensors files, reading
only their tensors by name (:func:`load_modules`), which is what a shard actor does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gwray.errors import GwrayInputError
from gwray.models.weights import open_weights, read_index


@dataclass(frozen=True)
class Family:
    """How one architecture family is laid out and run block by block.

    Attributes
    ----------
    name : str
        Family name used in messages (``gpt2``, ``gpt_neox``, ``llama``, ``bert``).
    model_types : tuple of str
        ``config.model_type`` values handled by this adapter.
    prefix : str
        Name of the base model inside the task model (``transformer``, ``model``, ...); checkpoint
        tensor names may or may not carry it.
    embeddings : tuple of str
        Modules (relative to the base model) that produce the embedding output.
    blocks : str
        Dotted path of the ``nn.ModuleList`` of blocks.
    final_norm : str or None
        The norm applied to the last block's output, if any.
    shared : tuple of str
        Parameter-free modules every shard needs (rotary embeddings).
    """

    name: str
    model_types: tuple[str, ...]
    prefix: str
    embeddings: tuple[str, ...]
    blocks: str
    final_norm: str | None
    shared: tuple[str, ...] = ()

    # ---- structure -------------------------------------------------------------------------
    def block_list(self, base: nn.Module) -> nn.ModuleList:
        """The blocks of ``base`` in depth order."""
        return base.get_submodule(self.blocks)

    def n_blocks(self, base: nn.Module) -> int:
        return len(self.block_list(base))

    def block_name(self, index: int) -> str:
        """Module name of block ``index`` relative to the base model, e.g. ``layers.3``."""
        return f"{self.blocks}.{index}"

    def modules_for(self, n_blocks: int, start: int, stop: int) -> list[str]:
        """Module names a shard holding blocks ``[start, stop)`` must materialise."""
        names = list(self.embeddings) if start == 0 else []
        names += [self.block_name(i) for i in range(start, stop)]
        if stop == n_blocks and self.final_norm:
            names.append(self.final_norm)
        return names

    # ---- running ---------------------------------------------------------------------------
    def embed(self, base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embedding output (hidden state 0).

        Parameters
        ----------
        input_ids, attention_mask : (b, t) int64 tensors

        Returns
        -------
        (b, t, d) tensor in the embedding weights' dtype.
        """
        if self.name == "bert":
            return base.embeddings(input_ids=input_ids, position_ids=position_ids(attention_mask))
        first = base.get_submodule(self.embeddings[0])
        hidden = first(input_ids)
        if self.name == "gpt2":
            hidden = hidden + base.wpe(position_ids(attention_mask))
        return hidden

    def context(self, base: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Per-micro-batch inputs every block needs, rebuilt in each shard from the 2-D mask.

        Parameters
        ----------
        hidden : (b, t, d) tensor
            Only its shape, dtype and device are used.
        attention_mask : (b, t) int tensor, 1 = token, 0 = padding.

        Returns
        -------
        dict
            ``masks`` (per attention kind, as HF prepares them for ``config._attn_implementation``),
            ``position_ids`` (b, t) and, for rotary families, ``position_embeddings`` (cos, sin).
        """
        from transformers import masking_utils as mu

        config = base.config
        positions = position_ids(attention_mask)
        if self.name == "bert":
            mask = _call_mask(mu.create_bidirectional_mask, config, hidden, attention_mask, positions)
            return {"masks": {"full_attention": mask}, "position_ids": positions}
        masks = {"full_attention": _call_mask(mu.create_causal_mask, config, hidden, attention_mask, positions)}
        if "sliding_attention" in self._layer_kinds(config):
            masks["sliding_attention"] = _call_mask(mu.create_sliding_window_causal_mask, config, hidden,
                                                    attention_mask, positions)
        ctx = {"masks": masks, "position_ids": positions}
        if self.shared:
            ctx["position_embeddings"] = base.get_submodule(self.shared[0])(hidden, positions)
        return ctx

    def _layer_kinds(self, config) -> list[str]:
        kinds = getattr(config, "layer_types", None)
        if kinds:
            return list(kinds)
        # Mistral applies its sliding window to every layer when one is configured.
        kind = "sliding_attention" if config.model_type == "mistral" and getattr(config, "sliding_window", None) \
            else "full_attention"
        return [kind] * config.num_hidden_layers

    def run_block(self, base: nn.Module, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Output of block ``index`` for input ``hidden`` (b, t, d) → (b, t, d)."""
        block = self.block_list(base)[index]
        mask = ctx["masks"][self._layer_kinds(base.config)[index] if self.name != "bert" else "full_attention"]
        if self.name == "bert":
            out = block(hidden, attention_mask=mask)
        elif self.name == "gpt2":
            out = block(hidden, attention_mask=mask, position_ids=ctx["position_ids"])
        else:
            out = block(hidden, attention_mask=mask, position_ids=ctx["position_ids"],
                        position_embeddings=ctx["position_embeddings"])
        return out[0] if isinstance(out, tuple) else out

    def finish(self, base: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the final norm (identity for families without one)."""
        return base.get_submodule(self.final_norm)(hidden) if self.final_norm else hidden


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, (b, t) → (b, t) int64: left padding does not shift a text.

    Equals ``arange(t)`` on the real tokens of right-padded rows (HF's default there); padding
    positions repeat a neighbour's and are masked out anyway. The unsharded extraction uses the same.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def _call_mask(fn, config, hidden: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor):
    """Call a ``masking_utils`` builder with the keywords its signature has.

    transformers 5.9 renamed ``input_embeds`` to ``inputs_embeds`` and dropped ``cache_position``.
    """
    import inspect

    params = inspect.signature(fn).parameters
    kwargs = {"config": config, "attention_mask": attention_mask,
              ("inputs_embeds" if "inputs_embeds" in params else "input_embeds"): hidden}
    optional = {"cache": None, "past_key_values": None, "position_ids": positions,
                "cache_position": torch.arange(hidden.shape[1], device=hidden.device)}
    kwargs.update({k: v for k, v in optional.items() if k in params})
    return fn(**kwargs)


FAMILIES = (
    Family("gpt2", ("gpt2",), "transformer", ("wte", "wpe"), "h", "ln_f"),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox", ("embed_in",), "layers", "final_layer_norm", ("rotary_emb",)),
    Family("llama", ("llama", "mistral", "qwen2"), "model", ("embed_tokens",), "layers", "norm", ("rotary_emb",)),
    Family("bert", ("bert",), "bert", ("embeddings",), "encoder.layer", None),
)


def supported_model_types() -> list[str]:
    return [t for f in FAMILIES for t in f.model_types]


def get_family(config) -> Family:
    """The adapter for a transformers config (or a ``model_type`` string).

    Raises
    ------
    GwrayInputError
        Unknown architecture: the message lists the supported ones and points at ``shards: 1``.
    """
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise GwrayInputError(
        f"model.shards > 1: architecture {model_type!r} is not supported for sharding "
        f"(supported: {', '.join(supported_model_types())}); use model.shards: 1, which works for any model")


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules with every parameter on the meta device but real buffers.

    Buffers (rotary frequencies, BERT position ids) are small and often not saved in checkpoints,
    so they are computed for real; parameters cost nothing until a shard loads its own.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_empty(config) -> tuple[nn.Module, Family]:
    """The base model of ``config`` with parameters on the meta device, in eval mode.

    Returns
    -------
    (base model, family adapter). Nothing of size ``n_params`` is allocated.
    """
    import transformers

    family = get_family(config)
    with parameters_on_meta():
        base = transformers.AutoModel.from_config(config)
    return base.eval(), family


def hidden_states(base: nn.Module, family: Family, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """All hidden states of a fully materialised base model, computed block by block.

    Parameters
    ----------
    input_ids, attention_mask : (b, t) tensors

    Returns
    -------
    list of ``n_blocks + 1`` tensors (b, t, d), equal to HF's ``output_hidden_states``.
    """
    with torch.no_grad():
        hidden = family.embed(base, input_ids, attention_mask)
        out = [hidden]
        ctx = family.context(base, hidden, attention_mask)
        n = family.n_blocks(base)
        for i in range(n):
            hidden = family.run_block(base, i, hidden, ctx)
            out.append(family.finish(base, hidden) if i == n - 1 else hidden)
    return out


def load_modules(base: nn.Module, family: Family, model_dir: "str | Path", modules: list[str],
                 dtype: torch.dtype, device: torch.device) -> dict:
    """Materialise ``modules`` of a meta-built ``base`` from the safetensors files, by tensor name.

    Only the files holding those modules' tensors are opened, and only those tensors are read.
    Checkpoint names may carry the task model's prefix (``model.layers.0...``) or not.

    Returns
    -------
    dict
        ``params`` (sorted base-model names loaded), ``files`` (files opened), ``bytes`` (held).
    """
    weight_map = read_index(model_dir)
    names = [f"{m}.{n}" for m in modules for n, _ in base.get_submodule(m).named_parameters()]
    prefix = f"{family.prefix}." if f"{family.prefix}.{names[0]}" in weight_map else ""
    by_file: dict[str, list[str]] = {}
    for name in names:
        if prefix + name not in weight_map:
            raise GwrayInputError(f"checkpoint {model_dir}: tensor {prefix + name} is not in its safetensors files")
        by_file.setdefault(weight_map[prefix + name], []).append(name)
    held = 0
    for fname in sorted(by_file):
        with open_weights(Path(model_dir) / fname) as f:
            for name in by_file[fname]:
                tensor = f.get_tensor(prefix + name)
                tensor = tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype)
                owner, _, attr = name.rpartition(".")
                base.get_submodule(owner)._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
                held += tensor.numel() * tensor.element_size()
    for name in list(modules) + list(family.shared):
        base.get_submodule(name).to(device)  # buffers: rotary frequencies, BERT position ids
    return {"params": sorted(names), "files": sorted(by_file), "bytes": held}
