"""Forward hooks that keep exactly the selected layers, pooled inside the hook.

Only pooled rows leave the forward pass: each hook reduces its layer's output
(batch, tokens, d) to (rows, d) at once, so memory does not grow with
tokens x layers x batch.

Layer selection (``layers.select``):

- ``"blocks"`` — HF models: what ``output_hidden_states=True`` returns, in order:
  ``"embeddings"`` (the input of the first block), then one entry per block named after
  the block module; the last block's entry is the base model's ``last_hidden_state``
  (so a final norm such as GPT-2's ``ln_f`` is included, exactly as HF does).
  Factory / toy models: the layer names their loader returned.
- ``"all"`` — every named sub-module except containers (ModuleList / ModuleDict), in
  registration order.
- a list of module names or globs (``"encoder.layer.*.output"``); an unknown name raises
  :class:`~gwray.errors.GwrayInputError` listing close matches.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

import torch

from gwray.errors import GwrayInputError

EMBEDDINGS = "embeddings"


class Pooler:
    """Reduce one layer's output to rows of vectors, per sample and deterministically.

    Parameters
    ----------
    mode : str
        ``mean`` (over real tokens), ``last`` (last real token, any padding side), ``first``
        (first real token: CLS), ``flatten`` (all features of a non-sequence output) or
        ``tokens:K`` (K real tokens drawn per sample, each its own row).
    seed : int
        Seed for ``tokens:K``; draws depend only on (seed, sample_id), so any batching or
        sharding yields identical rows.
    """

    def __init__(self, mode: str, seed: int = 0):
        self.mode = mode
        self.seed = int(seed)
        self.k = 0
        if mode.startswith("tokens:"):
            tail = mode.split(":", 1)[1]
            if not tail.isdigit() or int(tail) < 1:
                raise GwrayInputError(f"pooling {mode!r}: K must be an integer >= 1")
            self.k = int(tail)
        elif mode not in ("mean", "last", "first", "flatten"):
            raise GwrayInputError(f"pooling {mode!r}: expected mean, last, first, flatten or tokens:K")

    def __repr__(self) -> str:
        return f"Pooler({self.mode!r}, seed={self.seed})"

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                 sample_ids, layer: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
        """Pool one batch.

        Parameters
        ----------
        hidden : torch.Tensor
            (b, t, d) token sequences, (b, t, ...) (trailing dims flattened) or (b, d).
        attention_mask : torch.Tensor or None
            (b, t), 1 for real tokens; None means every position is real.
        sample_ids : array-like of int
            (b,) sample ids of the batch rows.
        layer : str
            Name used in error messages.

        Returns
        -------
        rows : torch.Tensor
            (r, d') float32 on ``hidden``'s device; r = b, or b*K for ``tokens:K``.
        row_sample_ids : torch.Tensor
            (r,) int64 on CPU: the sample each row belongs to.
        """
        sids = torch.as_tensor(sample_ids, dtype=torch.int64).reshape(-1).cpu()
        b = hidden.shape[0]
        if sids.numel() != b:
            raise GwrayInputError(f"layer {layer}: {sids.numel()} sample ids for a batch of {b}")
        h = hidden.detach().float()
        if self.mode == "flatten":
            return h.reshape(b, -1), sids
        if h.ndim == 2:  # one vector per sample already: nothing to pool over
            if self.k:
                return h.repeat_interleave(self.k, dim=0), sids.repeat_interleave(self.k)
            return h, sids
        t = h.shape[1]
        if attention_mask is None:
            mask = torch.ones(b, t, device=h.device)
        else:
            mask = attention_mask.to(h.device, torch.float32)
            if tuple(mask.shape) != (b, t):
                raise GwrayInputError(f"layer {layer}: output shape {tuple(hidden.shape)} is not "
                                      f"(batch, tokens, ...) for a mask of {tuple(mask.shape)}; use pooling flatten")
        h = h.reshape(b, t, -1)
        if self.mode == "mean":
            return (h * mask[..., None]).sum(1) / mask.sum(1).clamp_min(1)[:, None], sids
        positions = torch.arange(t, device=h.device, dtype=torch.float32)
        if self.mode == "last":  # highest real position: right and left padding alike
            idx = (mask * (positions + 1)).argmax(1)
        elif self.mode == "first":  # argmax returns the first maximal index: first real token
            idx = mask.argmax(1)
        else:
            return self._tokens(h, mask, sids)
        return h[torch.arange(b, device=h.device), idx], sids

    def _tokens(self, h, mask, sids):
        picks = []
        for row in range(h.shape[0]):
            real = torch.nonzero(mask[row] > 0).reshape(-1).cpu()
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + int(sids[row])) % (2**63))
            order = real[torch.randperm(real.numel(), generator=gen)]
            reps = -(-self.k // max(order.numel(), 1))  # fewer real tokens than K: cycle them
            picks.append(order.repeat(reps)[: self.k])
        idx = torch.stack(picks).to(h.device)
        rows = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
        return rows.reshape(-1, h.shape[-1]), sids.repeat_interleave(self.k)


@dataclass(frozen=True)
class LayerSpec:
    """Where one selected layer is read from.

    ``module`` is a dotted module path; ``where`` is ``"output"`` (the module's output, first
    element if a tuple), ``"input"`` (its first input: HF's embedding hidden state) or
    ``"last_hidden_state"`` (the base model's final output: HF's last hidden state).
    """

    name: str
    module: str
    where: str = "output"


def _module_names(module: torch.nn.Module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


def select_layers(loaded, select) -> list[LayerSpec]:
    """Resolve ``layers.select`` against a loaded model.

    Parameters
    ----------
    loaded : gwray.models.loaders.LoadedModel
    select : "blocks" | "all" | list of str

    Returns
    -------
    list of LayerSpec
        In depth order (``blocks``) or module registration order (``all`` and lists).
    """
    names = _module_names(loaded.module)
    if select == "blocks":
        if loaded.kind != "hf":
            return [LayerSpec(n, n) for n in loaded.block_names]
        blocks = loaded.block_names
        base = loaded.base_prefix
        return ([LayerSpec(EMBEDDINGS, blocks[0], "input")]
                + [LayerSpec(n, n) for n in blocks[:-1]]
                + [LayerSpec(blocks[-1], base, "last_hidden_state")])
    if select == "all":  # containers are never called: they have no output of their own
        containers = (torch.nn.ModuleList, torch.nn.ModuleDict)
        return [LayerSpec(n, n) for n, m in loaded.module.named_modules() if n and not isinstance(m, containers)]
    if isinstance(select, str):
        select = [select]
    chosen: list[str] = []
    for pattern in select:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else "; no close matches"
            raise GwrayInputError(f"layer {pattern!r}: no such module in {loaded.path}{hint}")
        chosen += [h for h in hits if h not in chosen]
    order = {n: i for i, n in enumerate(names)}
    return [LayerSpec(n, n) for n in sorted(chosen, key=order.__getitem__)]


class LayerCapture:
    """Context manager: hooks on the selected layers that pool each output as it is produced.

    Set ``batch(attention_mask, sample_ids)`` before each forward call; afterwards
    ``pop()`` returns ``{layer name: (rows (r, d) float32 tensor, row_sample_ids (r,))}``.

    Parameters
    ----------
    module : torch.nn.Module
    specs : list of LayerSpec
    pooler : Pooler
    """

    def __init__(self, module: torch.nn.Module, specs: list[LayerSpec], pooler: Pooler):
        self.module, self.specs, self.pooler = module, specs, pooler
        self._handles: list = []
        self._mask = None
        self._sids = None
        self._out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self) -> "LayerCapture":
        modules = dict(self.module.named_modules())
        for spec in self.specs:
            mod = modules[spec.module] if spec.module else self.module
            if spec.where == "input":
                self._handles.append(mod.register_forward_pre_hook(self._input_hook(spec.name), with_kwargs=True))
            else:
                self._handles.append(mod.register_forward_hook(self._output_hook(spec.name, spec.where)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def batch(self, attention_mask: torch.Tensor | None, sample_ids) -> None:
        self._mask, self._sids, self._out = attention_mask, sample_ids, {}

    def pop(self, strict: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The pooled layers of the last forward; ``strict``: every selected layer must be there."""
        out, self._out = self._out, {}
        missing = [s.name for s in self.specs if s.name not in out]
        if missing and strict:
            raise GwrayInputError(f"layer {missing[0]}: the forward pass never produced it (is the module used?)")
        return out

    def _keep(self, name: str, value) -> None:
        if hasattr(value, "to_tuple"):  # an HF ModelOutput: its first field is the hidden state
            value = value.to_tuple()
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if not isinstance(value, torch.Tensor):
            raise GwrayInputError(f"layer {name}: output is {type(value).__name__}, not a tensor")
        b = len(self._sids)
        if value.ndim == 0:
            raise GwrayInputError(f"layer {name}: output is a scalar, not one row per sample")
        if value.shape[0] == 1 and b > 1:  # broadcast over the batch (e.g. position embeddings)
            value = value.expand(b, *value.shape[1:])
        # A module called twice in one forward (weight sharing) keeps its last call, as HF does.
        self._out[name] = self.pooler(value, self._mask, self._sids, layer=name)

    def _input_hook(self, name):
        def hook(_mod, args, kwargs):
            self._keep(name, args[0] if args else kwargs.get("hidden_states"))
        return hook

    def _output_hook(self, name, where):
        def hook(_mod, _args, output):
            if where == "last_hidden_state":
                output = getattr(output, "last_hidden_state", output)
            self._keep(name, output)
        return hook
