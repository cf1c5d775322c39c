"""Probe sets: the shared inputs every layer is measured on.

Sources (``probe.source``):

- ``builtin:<name>`` — a set shipped in ``gwray/data/<name>.txt`` (``builtin:english``; see
  ``gwray/data/PROVENANCE.md``);
- ``*.txt`` — one sample per line (blank lines are skipped);
- ``*.jsonl`` / ``*.parquet`` — the text in key / column ``probe.field``;
- ``*.npy`` — tensor inputs for non-text models, rows = samples.

``sample_id`` is a sample's position in its source (0-based line of a .txt / .jsonl, row of a
.parquet / .npy), so results join back to the inputs. ``n_samples`` of them are drawn without
replacement with ``seed`` and kept in source order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from gwray.config import DEFAULT_N_SAMPLES
from gwray.errors import GwrayInputError

BUILTIN_PREFIX = "builtin:"


@dataclass
class ProbeSet:
    """The sampled probe.

    Attributes
    ----------
    sample_ids : np.ndarray
        (n,) int64 positions in the source, increasing.
    texts : list of str or None
        n texts (text probes).
    arrays : np.ndarray or None
        (n, ...) inputs (``.npy`` probes).
    hash : str
        16 hex digits of sha256 over the sample ids and contents.
    source : str
        Where the probe came from.
    n_source : int
        Number of samples in the whole source.
    """

    sample_ids: np.ndarray
    texts: list[str] | None
    arrays: np.ndarray | None
    hash: str
    source: str
    n_source: int

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def batch(self, start: int, stop: int) -> dict:
        """Rows ``[start, stop)`` as ``{"sample_id": (b,) int64, "text": list | "x": (b, ...)}``."""
        return self.take(np.arange(start, min(stop, len(self))))

    def take(self, rows: np.ndarray) -> dict:
        """The given rows (positions), as :meth:`batch` returns them."""
        out = {"sample_id": self.sample_ids[rows]}
        if self.texts is not None:
            out["text"] = [self.texts[i] for i in rows]
        else:
            out["x"] = self.arrays[rows]
        return out

    def batches(self, batch_size: int):
        """Batches of ``batch_size`` samples (the last may be shorter), the forward passes of every
        extraction path. Texts go in order of length, so a batch pads its texts to about the same
        length (MiniLM, 1,024 sentences: 36 % fewer padded tokens than in probe order); the
        dataset stores sample ids and reads back in sample-id order, so the order is invisible."""
        order = np.arange(len(self))
        if self.texts is not None:
            order = np.argsort([len(t) for t in self.texts], kind="stable")
        for start in range(0, len(self), batch_size):
            yield self.take(order[start:start + batch_size])


def builtin_names() -> list[str]:
    """Names usable as ``builtin:<name>``."""
    return sorted(p.name[:-4] for p in resources.files("gwray").joinpath("data").iterdir() if p.name.endswith(".txt"))


def _read_lines(text: str) -> tuple[np.ndarray, list[str]]:
    lines = text.splitlines()
    keep = [i for i, line in enumerate(lines) if line.strip()]
    return np.asarray(keep, dtype=np.int64), [lines[i].strip() for i in keep]


def _read_jsonl(path: Path, field: str) -> tuple[np.ndarray, list[str]]:
    ids, texts = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GwrayInputError(f"probe file {path}: line {i + 1} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise GwrayInputError(f"probe file {path}: line {i + 1} has no field {field!r} (config key probe.field)")
        if not isinstance(record[field], str):
            raise GwrayInputError(f"probe file {path}: field {field!r} on line {i + 1} is not a string")
        ids.append(i)
        texts.append(record[field])
    return np.asarray(ids, dtype=np.int64), texts


def _read_parquet(path: Path, field: str) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if field not in names:
        raise GwrayInputError(f"probe file {path}: no column {field!r} (config key probe.field; columns: "
                              f"{', '.join(names)})")
    col = pq.read_table(path, columns=[field]).column(0)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise GwrayInputError(f"probe file {path}: column {field!r} is {col.type}, not text")
    texts = col.to_pylist()
    if any(t is None for t in texts):
        raise GwrayInputError(f"probe file {path}: column {field!r} has nulls (row {texts.index(None)})")
    return np.arange(len(texts), dtype=np.int64), texts


def _read_source(source: str, field: str) -> tuple[np.ndarray, list[str] | None, np.ndarray | None]:
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name not in builtin_names():
            raise GwrayInputError(f"probe source {source!r}: no such built-in set (have: "
                                  f"{', '.join(BUILTIN_PREFIX + n for n in builtin_names())})")
        text = resources.files("gwray").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
        return (*_read_lines(text), None)
    path = Path(source).expanduser()
    if not path.is_file():
        raise GwrayInputError(f"probe file {path}: not found (config key probe.source)")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return (*_read_lines(path.read_text(encoding="utf-8")), None)
    if suffix == ".jsonl":
        return (*_read_jsonl(path, field), None)
    if suffix == ".parquet":
        return (*_read_parquet(path, field), None)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise GwrayInputError(f"probe file {path}: not a plain .npy array ({exc})") from None
        if arr.ndim == 0:
            raise GwrayInputError(f"probe file {path}: a scalar, expected rows of samples")
        return np.arange(arr.shape[0], dtype=np.int64), None, arr
    raise GwrayInputError(f"probe file {path}: unsupported type {suffix or '(none)'} "
                          f"(expected .txt, .jsonl, .parquet or .npy)")


def _hash(ids: np.ndarray, texts, arrays) -> str:
    h = hashlib.sha256(ids.astype("<i8").tobytes())
    if texts is not None:
        h.update("\x00".join(texts).encode("utf-8"))
    else:
        h.update(f"{arrays.dtype.str}{arrays.shape}".encode())
        h.update(np.ascontiguousarray(arrays).tobytes())
    return h.hexdigest()[:16]


def load_probe(cfg) -> ProbeSet:
    """Read and sample the probe a :class:`gwray.config.ProbeConfig` describes.

    Parameters
    ----------
    cfg : gwray.config.ProbeConfig
        Uses ``source``, ``field``, ``n_samples`` (unset: the whole probe, at most
        :data:`gwray.config.DEFAULT_N_SAMPLES`), ``seed``.

    Returns
    -------
    ProbeSet

    Raises
    ------
    GwrayInputError
        Missing / empty / unsupported file, missing field, an explicit ``n_samples`` larger than
        the probe.
    """
    ids, texts, arrays = _read_source(cfg.source, cfg.field)
    n_source = int(ids.shape[0])
    if n_source == 0:
        raise GwrayInputError(f"probe {cfg.source}: empty (no samples)")
    n = min(n_source, DEFAULT_N_SAMPLES) if cfg.n_samples is None else cfg.n_samples
    if n > n_source:
        raise GwrayInputError(f"config key probe.n_samples: {n} is larger than the probe "
                              f"{cfg.source} ({n_source} samples)")
    if n < 2:
        raise GwrayInputError(f"probe {cfg.source}: {n_source} sample(s); GW needs 2 or more")
    pick = np.arange(n_source)
    if n < n_source:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(n_source, n, replace=False))
    ids = ids[pick]
    texts = [texts[i] for i in pick] if texts is not None else None
    arrays = arrays[pick] if arrays is not None else None
    return ProbeSet(ids, texts, arrays, _hash(ids, texts, arrays), cfg.source, n_source)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> dict:
    """Pad and truncate a batch of texts to at most ``max_tokens`` tokens.

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask`` (b, t) int64 tensors (plus ``token_type_ids`` when the
        tokenizer makes them), on CPU; padding on the tokenizer's side.
    """
    if tokenizer is None:
        raise GwrayInputError("probe: text samples need a model with a tokenizer (use a .npy probe)")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    empty = (enc["attention_mask"].sum(1) == 0).nonzero()
    if len(empty):
        raise GwrayInputError(f"probe: sample text {texts[int(empty[0])]!r} has no tokens")
    return dict(enc)
