"""Probe sets: built-in English, .txt/.jsonl/.parquet/.npy, deterministic sampling, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gwray.activations.probes import builtin_names, load_probe
from gwray.config import DEFAULT_N_SAMPLES, ProbeConfig
from gwray.errors import GwrayInputError


def _error(cfg, *names):
    with pytest.raises(GwrayInputError) as exc:
        load_probe(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    for name in names:
        assert str(name) in msg, msg
    return msg


def test_builtin_english_sampling_is_deterministic():
    assert "english" in builtin_names()
    a = load_probe(ProbeConfig(n_samples=300, seed=1))
    b = load_probe(ProbeConfig(n_samples=300, seed=1))
    c = load_probe(ProbeConfig(n_samples=300, seed=2))
    assert a.n_source >= 2000 and len(a) == 300 and len(set(a.texts)) == 300
    assert np.array_equal(a.sample_ids, b.sample_ids) and a.texts == b.texts and a.hash == b.hash
    assert not np.array_equal(a.sample_ids, c.sample_ids) and a.hash != c.hash
    assert np.all(np.diff(a.sample_ids) > 0) and a.sample_ids.dtype == np.int64
    full = load_probe(ProbeConfig(n_samples=a.n_source))
    assert [full.texts[i] for i in a.sample_ids] == a.texts  # sample_id = line of the source


def test_txt_jsonl_parquet_npy(tmp_path):
    (tmp_path / "p.txt").write_text("alpha\n\nbeta\ngamma\n")
    p = load_probe(ProbeConfig(source=str(tmp_path / "p.txt"), n_samples=3))
    assert p.texts == ["alpha", "beta", "gamma"] and p.sample_ids.tolist() == [0, 2, 3]

    rows = [{"q": f"text {i}", "other": i} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    p = load_probe(ProbeConfig(source=str(tmp_path / "p.jsonl"), field="q", n_samples=5))
    assert p.texts == [f"text {i}" for i in range(5)]

    pq.write_table(pa.table({"body": [f"row {i}" for i in range(6)]}), tmp_path / "p.parquet")
    p = load_probe(ProbeConfig(source=str(tmp_path / "p.parquet"), field="body", n_samples=4, seed=3))
    assert p.texts == [f"row {i}" for i in p.sample_ids]

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "p.npy", x)
    p = load_probe(ProbeConfig(source=str(tmp_path / "p.npy"), n_samples=5))
    assert p.texts is None and np.array_equal(p.arrays, x[p.sample_ids])


def test_unset_n_samples_takes_the_whole_small_probe_and_at_most_the_default(tmp_path):
    (tmp_path / "small.txt").write_text("".join(f"line {i}\n" for i in range(300)))
    small = load_probe(ProbeConfig(source=str(tmp_path / "small.txt")))
    assert len(small) == 300 and np.array_equal(small.sample_ids, np.arange(300))
    big = load_probe(ProbeConfig())  # the built-in probe has more than the default
    assert big.n_source > DEFAULT_N_SAMPLES and len(big) == DEFAULT_N_SAMPLES
    assert big.hash == load_probe(ProbeConfig(n_samples=DEFAULT_N_SAMPLES)).hash
    _error(ProbeConfig(source=str(tmp_path / "small.txt"), n_samples=301), "probe.n_samples", "300 samples")


def test_bad_probes_name_the_thing(tmp_path):
    _error(ProbeConfig(source=str(tmp_path / "missing.txt")), "missing.txt", "not found")
    (tmp_path / "empty.txt").write_text("\n\n")
    _error(ProbeConfig(source=str(tmp_path / "empty.txt")), "empty.txt", "empty")
    (tmp_path / "small.txt").write_text("a\nb\nc\n")
    _error(ProbeConfig(source=str(tmp_path / "small.txt"), n_samples=4), "probe.n_samples", "small.txt", "3 samples")
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    _error(ProbeConfig(source=str(tmp_path / "p.jsonl"), n_samples=2), "p.jsonl", "line 2", "'text'")
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "p.parquet")
    _error(ProbeConfig(source=str(tmp_path / "p.parquet"), field="txt", n_samples=2), "p.parquet", "'txt'", "body")
    (tmp_path / "p.csv").write_text("a\nb\n")
    _error(ProbeConfig(source=str(tmp_path / "p.csv"), n_samples=2), "p.csv", ".csv")
    _error(ProbeConfig(source="builtin:klingon"), "builtin:klingon", "builtin:english")


def test_batches_cover_every_sample_once_grouped_by_length(tmp_path):
    probe = load_probe(ProbeConfig(n_samples=200, seed=3))
    got = list(probe.batches(32))
    assert [len(b["sample_id"]) for b in got] == [32] * 6 + [8]
    ids = np.concatenate([b["sample_id"] for b in got])
    assert sorted(ids.tolist()) == sorted(probe.sample_ids.tolist())
    text_of = dict(zip(probe.sample_ids.tolist(), probe.texts))
    assert all(text_of[i] == t for b in got for i, t in zip(b["sample_id"].tolist(), b["text"]))
    lengths = [len(t) for b in got for t in b["text"]]
    assert lengths == sorted(lengths)  # each batch pads to about the same length
    arrays = tmp_path / "x.npy"
    np.save(arrays, np.arange(30.0).reshape(10, 3))
    probe = load_probe(ProbeConfig(source=str(arrays), n_samples=10))
    got = list(probe.batches(4))  # arrays keep their order
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), np.arange(30.0).reshape(10, 3))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_line_that_is_not_utf8_is_named(tmp_path, suffix):
    lines = [f"sentence number {i}" for i in range(6)]
    encode = (lambda t: t) if suffix == ".txt" else (lambda t: json.dumps({"text": t}, ensure_ascii=False))
    data = "".join(encode(t) + "\n" for t in lines[:4]).encode() + encode("café au lait").encode("latin-1")
    path = tmp_path / f"p{suffix}"
    path.write_bytes(data + b"\n" + "".join(encode(t) + "\n" for t in lines[4:]).encode())
    msg = _error(ProbeConfig(source=str(path)), path, "line 5 is not UTF-8 (byte 0xe9", "iconv")
    assert msg.startswith(f"probe file {path}: ")
    path.write_bytes(b"\xef\xbb\xbf" + data.decode("latin-1").encode() + b"\n")  # fixed, with a BOM
    probe = load_probe(ProbeConfig(source=str(path)))
    assert probe.texts[0] == "sentence number 0" and probe.texts[4] == "café au lait"


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_a_damaged_parquet_or_npy_probe_is_named(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)]}), path)
    else:
        np.save(path, np.ones((50, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-40])  # an interrupted copy
    _error(ProbeConfig(source=str(path)), f"probe file {path}: ",
           "unreadable Parquet" if suffix == ".parquet" else "not a plain .npy array")


def test_empty_texts_are_skipped_keeping_positions(tmp_path):
    texts = ["alpha", "", "beta", "   ", "gamma"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": t}) + "\n\n" for t in texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "p.parquet")
    jsonl = load_probe(ProbeConfig(source=str(tmp_path / "p.jsonl")))
    assert jsonl.texts == ["alpha", "beta", "gamma"] and jsonl.sample_ids.tolist() == [0, 4, 8]
    parquet = load_probe(ProbeConfig(source=str(tmp_path / "p.parquet")))
    assert parquet.texts == ["alpha", "beta", "gamma"] and parquet.sample_ids.tolist() == [0, 2, 4]


class _Counting:
    """A tokenizer that records the longest text it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest] + [len(t) for t in ([texts] if isinstance(texts, str) else texts)])
        return self.tokenizer(texts, **kwargs)


@pytest.mark.parametrize("max_tokens", [8, 64])
def test_an_enormous_line_is_cut_to_the_tokens_of_the_whole_line(minilm_dir, max_tokens):
    """A 2-million-character line (and one with long runs of spaces) gives the ids the whole
    line's tokenization gives, without tokenizing it whole."""
    import transformers as tf

    from gwray.activations.probes import tokenize

    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
    words = load_probe(ProbeConfig(n_samples=200)).texts
    rng = np.random.default_rng(0)
    huge = " ".join(rng.choice(" ".join(words).split(), 400_000))
    spaced = "".join(w + " " * 3000 for w in words[0].split()) + " ".join(words)
    counting = _Counting(tokenizer)
    texts = [huge, "a short line", spaced]
    got = tokenize(counting, texts, max_tokens)
    whole = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    assert np.array_equal(got["input_ids"].numpy(), whole["input_ids"].numpy())
    assert np.array_equal(got["attention_mask"].numpy(), whole["attention_mask"].numpy())
    assert len(huge) > 2_000_000 and counting.longest < 100_000
