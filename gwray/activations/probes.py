"""Probe sets: the shared inputs every layer is measured on.

Sources (``probe.source``):

- ``builtin:<name>`` — a set shipped in ``gwray/data/<name>.txt`` (``builtin:english``; see
  ``gwray/data/PROVENANCE.md``);
- ``*.txt`` — one sample per line (blank lines are skipped);
- ``*.jsonl`` / ``*.parquet`` — the text in key / column ``probe.field`` (empty texts are skipped);
- ``*.npy`` — tensor inputs for non-text models, rows = samples.

``sample_id`` is a sample's position in its source (0-based line of a .txt / .jsonl, row of a
.parquet / .npy), so results join back to the inputs. ``n_samples`` of them are drawn without
replacement with ``seed`` and kept in source order.

Dirty sources: text files must be UTF-8 (a byte that is not is an error naming its line; a
leading byte-order mark is dropped), a damaged Parquet file is an error naming it, and a text
longer than a few thousand characters is cut at a word boundary before tokenizing
(:func:`tokenize`), so that one enormous line costs what a normal one does.
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
#: Texts longer than ``max_tokens`` × this many characters are cut before tokenizing (see
#: :func:`tokenize`): a token covers a few characters, so the cut keeps every token truncation keeps.
CHARS_PER_TOKEN = 32


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


def _read_text(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped); another encoding is an error naming
    the first line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise GwrayInputError(f"probe file {path}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x} "
                              f"at byte {column} of the line); convert the file to UTF-8, e.g. "
                              f"iconv -f latin1 -t utf-8") from None


def _read_lines(text: str) -> tuple[np.ndarray, list[str]]:
    lines = text.splitlines()
    keep = [i for i, line in enumerate(lines) if line.strip()]
    return np.asarray(keep, dtype=np.int64), [lines[i].strip() for i in keep]


def _read_jsonl(path: Path, field: str) -> tuple[np.ndarray, list[str]]:
    ids, texts = [], []
    for i, line in enumerate(_read_text(path).splitlines()):
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
        if not record[field].strip():
            continue
        ids.append(i)
        texts.append(record[field])
    return np.asarray(ids, dtype=np.int64), texts


def _read_parquet(path: Path, field: str) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if field not in names:
            raise GwrayInputError(f"probe file {path}: no column {field!r} (config key probe.field; "
                                  f"columns: {', '.join(names)})")
        col = pq.read_table(path, columns=[field]).column(0)
    except (pa.ArrowException, OSError) as exc:
        raise GwrayInputError(f"probe file {path}: unreadable Parquet ({str(exc).strip().splitlines()[0]}); "
                              "write or copy it again") from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise GwrayInputError(f"probe file {path}: column {field!r} is {col.type}, not text")
    texts = col.to_pylist()
    if any(t is None for t in texts):
        raise GwrayInputError(f"probe file {path}: column {field!r} has nulls (row {texts.index(None)})")
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return np.asarray(keep, dtype=np.int64), [texts[i] for i in keep]


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
        return (*_read_lines(_read_text(path)), None)
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


def _cut(tokenizer, text: str, max_tokens: int) -> str:
    """``text``, or the leading whole words of a long one that tokenize to more tokens than
    truncation keeps. Tokenizers split text into words at whitespace before their subword step,
    so the words before a cut give the same tokens as in the whole text; 16 tokens of margin
    cover tokenizers whose merges reach across a word. A text with no whitespace is not cut."""
    budget = max_tokens * CHARS_PER_TOKEN
    while len(text) > budget:
        cut = max(text.rfind(c, 0, budget) for c in " \t\n")
        if cut <= 0:
            return text
        head = text[:cut].rstrip()
        if len(tokenizer(head, add_special_tokens=False)["input_ids"]) >= max_tokens + 16:
            return head
        budget *= 4
    return text


def tokenize(tokenizer, texts: list[str], max_tokens: int, sample_ids=None) -> dict:
    """Pad and truncate a batch of texts to at most ``max_tokens`` tokens.

    A text longer than ``max_tokens`` × :data:`CHARS_PER_TOKEN` characters is cut at a word
    boundary first, keeping more words than truncation keeps tokens (the ids are those of the
    whole text), so that an enormous line is not tokenized whole.

    Parameters
    ----------
    sample_ids : sequence of int, optional
        The texts' sample ids, named in the error for a text without tokens.

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask`` (b, t) int64 tensors (plus ``token_type_ids`` when the
        tokenizer makes them), on CPU; padding on the tokenizer's side.
    """
    if tokenizer is None:
        raise GwrayInputError("probe: text samples need a model with a tokenizer (use a .npy probe)")
    texts = [_cut(tokenizer, t, max_tokens) for t in texts]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    empty = (enc["attention_mask"].sum(1) == 0).nonzero()
    if len(empty):
        k = int(empty[0])
        which = f"sample_id {int(sample_ids[k])} " if sample_ids is not None else ""
        raise GwrayInputError(f"probe: sample {which}({texts[k][:80]!r}) has no tokens for this model's "
                              "tokenizer; remove it from the probe")
    return dict(enc)
