"""The safetensors files of a checkpoint, read defensively.

A Hugging Face checkpoint is ``model.safetensors``, or the files ``model.safetensors.index.json``
names. Before a model loads, :func:`check_weights` reads each file's header (its tensor names,
dtypes and shapes; no tensor data) and compares it with the module the config builds, so that
damage is a one-line error naming the file and the tensor instead of a library traceback:

- a file cut short by an interrupted copy, empty, or not safetensors at all (a Git LFS pointer
  left by a clone without ``git lfs``);
- an index that names a file which is not there, or a tensor its file does not hold;
- a tensor whose shape differs from the config's (the weights of another model size, or an edited
  config), or that holds integers where the module has a floating-point parameter.

A float16 or bfloat16 file under a float32 config is not damage: it is cast to ``model.dtype``.
:func:`open_weights` gives the same errors for a file read later (shard actors, toy checkpoints).
"""
from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

from gwray.errors import GwrayInputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _damage(path: Path, reason: str) -> str:
    """What is wrong with an unreadable safetensors file, as one line (with sizes when known)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"version "):
            return "a Git LFS pointer, not the weights (fetch them: git lfs pull)"
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header (truncated: copy it again)"
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            return (f"{size:,} bytes, cut inside its {n:,}-byte header (truncated, or not a "
                    "safetensors file: copy it again)")
        try:
            header = json.loads(f.read(n))
            end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                              default=0)
        except (ValueError, TypeError, KeyError):
            return f"its header is not valid safetensors JSON ({reason}; copy it again)"
    if end != size:
        return f"{size:,} of {end:,} bytes ({'truncated' if size < end else 'extra bytes'}: copy it again)"
    return reason


@contextlib.contextmanager
def open_weights(path: "str | Path"):
    """``safetensors.safe_open(path)`` (PyTorch tensors on the CPU); a damaged file raises
    GwrayInputError naming it and what is wrong (truncated, an LFS pointer, a bad header)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        raise GwrayInputError(f"model weights {path}: damaged, {_damage(path, str(exc))}") from None
    with handle as f:
        try:
            yield f
        except SafetensorError as exc:
            raise GwrayInputError(f"model weights {path}: damaged, {_damage(path, str(exc))}") from None


def read_index(model_dir: "str | Path") -> dict[str, str]:
    """Tensor name → safetensors file name, from the index (or the single ``model.safetensors``).

    Raises
    ------
    GwrayInputError
        No safetensors checkpoint, an unreadable index, an index naming a missing file, a damaged
        ``model.safetensors``.
    """
    model_dir = Path(model_dir)
    if (model_dir / INDEX).is_file():
        try:
            weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GwrayInputError(f"checkpoint index {model_dir / INDEX}: unreadable ({exc})") from None
        for name in files:
            if not (model_dir / name).is_file():
                raise GwrayInputError(f"checkpoint index {model_dir / INDEX}: names {name}, which does not exist")
        return dict(weight_map)
    if (model_dir / SINGLE).is_file():
        with open_weights(model_dir / SINGLE) as f:
            return {key: SINGLE for key in f.keys()}
    raise GwrayInputError(f"checkpoint {model_dir}: no {SINGLE} or {INDEX} (sharded models read safetensors only)")


def _parameter_for(name: str, params: dict, prefix: str):
    """The module parameter a checkpoint tensor fills: the same name, without the task model's
    prefix (``model.layers.0…`` into a base model), or with the base model's (a base checkpoint
    into a task model); None for a tensor the module does not have (transformers ignores it)."""
    for candidate in (name, name.partition(".")[2], f"{prefix}.{name}" if prefix else None):
        if candidate in params:
            return params[candidate]
    return None


def check_weights(model_dir: "str | Path", module, prefix: str = "") -> None:
    """Check every safetensors file of ``model_dir`` against ``module`` before loading it.

    Reads headers only (a few KB per file). Parameters the files do not hold are left to the
    loader (tied embeddings, heads transformers initialises).

    Parameters
    ----------
    model_dir : str or Path
    module : torch.nn.Module
        Built from the config (the meta device will do): the shapes and dtypes expected.
    prefix : str
        Module name of the base model inside ``module`` (``"transformer"`` for GPT-2's LM head
        model), so that a base model's checkpoint matches.

    Raises
    ------
    GwrayInputError
        A damaged file, an index naming a missing file or a tensor its file lacks, a tensor of
        another shape, or an integer tensor for a floating-point parameter; naming file and tensor.
    """
    model_dir = Path(model_dir)
    weight_map = read_index(model_dir)
    params = dict(module.named_parameters())
    config = model_dir / "config.json"
    for fname in sorted(set(weight_map.values())):
        path = model_dir / fname
        with open_weights(path) as f:
            held = set(f.keys())
            lacking = sorted(k for k, v in weight_map.items() if v == fname and k not in held)
            if lacking:
                raise GwrayInputError(f"checkpoint index {model_dir / INDEX}: names tensor {lacking[0]} in "
                                      f"{fname}, which does not hold it ({len(lacking)} such tensors)")
            for key in sorted(held):
                param = _parameter_for(key, params, prefix)
                if param is None:
                    continue
                tensor = f.get_slice(key)
                shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
                if shape != tuple(param.shape):
                    raise GwrayInputError(
                        f"model weights {path}: tensor {key} has shape {shape}, {config} gives "
                        f"{tuple(param.shape)} (weights of another model size, or an edited config)")
                if param.is_floating_point() and dtype not in _FLOAT_DTYPES:
                    raise GwrayInputError(f"model weights {path}: tensor {key} holds {dtype}, not "
                                          "floating-point numbers (damaged, or a quantised checkpoint)")
