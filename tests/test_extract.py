"""Extraction end to end: in-process and Ray Data paths, padding, bad inputs leave nothing behind."""
from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import torch

from gwray.activations.extract import BatchExtractor, extract
from gwray.activations.store import ActivationStore
from gwray.config import load_config
from gwray.errors import GwrayInputError

TEXTS = ["The cat sat.", "A rather longer sentence about the weather in the hills today.",
         "Short one", "Gromov and Wasserstein walk into a bar, and the bartender says nothing at all.",
         "A zebra crossed the road.", "Nothing else happened that day, or the next."]


@pytest.fixture(scope="module")
def gpt2(tiny_hf_model):
    return str(tiny_hf_model("gpt2", layers=3))


@pytest.fixture(scope="module")
def probe_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.txt"
    path.write_text("\n".join(TEXTS * 7) + "\n")  # 42 lines; "zebra" on lines 4, 10, ...
    return str(path)


def _cfg(model, probe, **layers):
    return load_config({"model": {"path": model}, "probe": {"source": probe, "n_samples": 42, "batch_size": 16,
                                                             "max_tokens": 24},
                        "layers": {"pooling": "last", **layers}})


def _no_checkpoint(out):
    assert not (out / "activations" / "checkpoint=main").exists()


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_under_left_and_right_padding(gpt2, probe_txt, side):
    worker = BatchExtractor(_cfg(gpt2, probe_txt), None, device="cpu")
    worker.loaded.tokenizer.padding_side = side
    got = worker.pooled({"sample_id": np.arange(4), "text": TEXTS[:4]})
    assert list(got) == ["embeddings", "transformer.h.0", "transformer.h.1", "transformer.h.2"]  # n_layer + 1
    tok, model = worker.loaded.tokenizer, worker.loaded.module
    for i, text in enumerate(TEXTS[:4]):  # each sample alone: no padding at all
        with torch.no_grad():
            alone = model(**tok([text], return_tensors="pt", return_token_type_ids=False),
                          output_hidden_states=True).hidden_states
        for (rows, _), h in zip(got.values(), alone):
            torch.testing.assert_close(rows[i], h[0, -1], atol=1e-5, rtol=0)


def test_bert_tokenizer_token_types_do_not_reach_gpt2(gpt2, probe_txt):
    """tiny GPT-2 + MiniLM's WordPiece tokenizer, which returns token_type_ids (all 0): GPT-2 would
    add the word embedding of token 0 to every position; the model is run as without them."""
    worker = BatchExtractor(_cfg(gpt2, probe_txt, pooling="mean"), None, device="cpu")
    tok, model = worker.loaded.tokenizer, worker.loaded.module
    enc = tok(TEXTS[:3], padding=True, return_tensors="pt")
    assert "token_type_ids" in enc and type(model).__name__.startswith("GPT2")
    got = worker.pooled({"sample_id": np.arange(3), "text": TEXTS[:3]})
    m = enc["attention_mask"].float()[..., None]
    with torch.no_grad():
        plain = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      output_hidden_states=True).hidden_states
        typed = model(**enc, output_hidden_states=True).hidden_states
    for (rows, _), h, t in zip(got.values(), plain, typed):
        torch.testing.assert_close(rows, (h * m).sum(1) / m.sum(1), atol=1e-5, rtol=0)
        assert not torch.allclose(rows, (t * m).sum(1) / m.sum(1), atol=1e-3)  # the bug it guards


def test_minilm_dataset_equals_hand_pooling(tmp_path, probe_txt):
    cfg = load_config({"probe": {"source": probe_txt, "n_samples": 12, "batch_size": 12},
                       "layers": {"pooling": "mean"}})
    manifest = extract(cfg, tmp_path, "main", use_ray=False)
    store = ActivationStore(tmp_path)
    assert manifest["n_rows"] == 12 and store.layer_names("main")[0] == "embeddings" and len(manifest["dims"]) == 7
    worker = BatchExtractor(cfg, None, device="cpu")
    texts = [TEXTS[i % 6] for i in store.sample_ids("main")]
    enc = worker.loaded.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        ref = worker.loaded.module(**enc, output_hidden_states=True).hidden_states
    m = enc["attention_mask"].float()[..., None]
    for k, h in enumerate(ref):
        np.testing.assert_allclose(store.read_layer("main", k), ((h * m).sum(1) / m.sum(1)).numpy(), atol=1e-5, rtol=0)


def test_ray_data_path_equals_in_process(ray_local, tmp_path, gpt2, probe_txt):
    cfg = _cfg(gpt2, probe_txt)
    m_ray = extract(cfg, tmp_path / "ray", "main", use_ray=True)
    m_loc = extract(cfg, tmp_path / "local", "main", use_ray=False)
    other = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"batch_size": 5})})
    extract(other, tmp_path / "b5", "main", use_ray=False)
    assert m_ray["layers"] == m_loc["layers"] and m_ray["probe_hash"] == m_loc["probe_hash"]
    a, b, c = (ActivationStore(tmp_path / d) for d in ("ray", "local", "b5"))
    for layer in m_loc["layers"]:
        np.testing.assert_array_equal(a.read_layer("main", layer), b.read_layer("main", layer))  # same batching
        np.testing.assert_allclose(c.read_layer("main", layer), b.read_layer("main", layer), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(a.sample_ids("main"), np.arange(42))


@pytest.mark.parametrize("use_ray", [False, True])
def test_progress_on_stderr_only_when_asked(ray_local, tmp_path, gpt2, probe_txt, capsys, use_ray):
    cfg = _cfg(gpt2, probe_txt)
    extract(cfg, tmp_path / "quiet", "main", use_ray=use_ray, progress=False)
    quiet = capsys.readouterr()
    extract(cfg, tmp_path / "loud", "main", use_ray=use_ray, progress=True)
    loud = capsys.readouterr()
    if use_ray:  # a start and an end line: samples and seconds
        assert re.search(r"extract main: 42 samples, 4 layers via Ray Data\n", loud.err), loud.err
        assert re.search(r"extract main: 42 samples done in \d+\.\d s\n", loud.err), loud.err
    else:  # the tqdm bar: samples done / total, rate
        assert re.search(r"extract main: 100%.*42/42 \[.*sample/s\]", loud.err), loud.err
    assert "extract main" not in quiet.err + quiet.out + loud.out


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, gpt2):
    """The tiny GPT-2 with a NaN embedding for the token "zebra"."""
    import transformers as tf

    out = tmp_path_factory.mktemp("nan-gpt2")
    model = tf.AutoModelForCausalLM.from_pretrained(gpt2)
    tok = tf.AutoTokenizer.from_pretrained(gpt2)
    with torch.no_grad():
        model.transformer.wte.weight[tok.convert_tokens_to_ids("zebra")] = float("nan")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("use_ray", [False, True])
def test_nan_activation_names_layer_and_sample(ray_local, tmp_path, nan_model, probe_txt, use_ray):
    with pytest.raises(GwrayInputError) as exc:
        extract(_cfg(nan_model, probe_txt, pooling="mean"), tmp_path, "main", use_ray=use_ray)
    msg = str(exc.value)  # "zebra" is on lines 4, 10, 16, ...: the first failing batch names its sample
    assert re.fullmatch(r"layer embeddings: NaN or inf in the activation of sample \d+", msg), msg
    assert int(msg.rsplit(" ", 1)[1]) % len(TEXTS) == 4
    _no_checkpoint(tmp_path)


def test_all_keeps_the_modules_the_forward_pass_calls(tmp_path, gpt2, probe_txt):
    manifest = extract(_cfg(gpt2, probe_txt, select="all"), tmp_path, "main", use_ray=False)
    names = manifest["layers"]
    assert "lm_head" in names and "transformer.h.2.mlp.c_fc" in names and "transformer.h" not in names
    assert len(manifest["dims"]) == len(names) and manifest["dims"][names.index("lm_head")] == 30522


def test_bad_inputs_leave_nothing(tmp_path, gpt2, probe_txt):
    cases = [
        (_cfg(str(tmp_path / "no-model"), probe_txt), ["no-model", "not found"]),
        (_cfg(gpt2, probe_txt, select=["transformer.h.1", "transformer.hh.*"]), ["transformer.hh.*", "close matches"]),
        (_cfg(gpt2, str(tmp_path / "empty.txt")), ["empty.txt", "empty"]),
        (_cfg(gpt2, probe_txt).model_copy(update={"probe": _cfg(gpt2, probe_txt).probe.model_copy(
            update={"n_samples": 43})}), ["probe.n_samples", "42 samples"]),
        (load_config({"model": {"path": gpt2}, "probe": {"source": str(tmp_path / "p.jsonl"), "field": "body",
                                                          "n_samples": 2}}), ["p.jsonl", "'body'"]),
    ]
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    for cfg, names in cases:
        with pytest.raises(GwrayInputError) as exc:
            extract(cfg, tmp_path / "out", "main", use_ray=False)
        msg = str(exc.value)
        assert "\n" not in msg and all(n in msg for n in names), msg
        _no_checkpoint(tmp_path / "out")


def test_factory_model_on_npy_probe_flatten(tmp_path, monkeypatch):
    (tmp_path / "conv_nets.py").write_text(textwrap.dedent("""
        import torch
        def conv():
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                      torch.nn.Linear(2 * 4 * 4, 3))
            return net, ["0", "3"]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x = np.random.default_rng(0).standard_normal((20, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cfg = load_config({"model": {"source": "factory", "factory": "conv_nets:conv"},
                       "probe": {"source": str(tmp_path / "x.npy"), "n_samples": 10, "batch_size": 4},
                       "layers": {"pooling": "flatten", "storage_dtype": "float16"}})
    manifest = extract(cfg, tmp_path / "out", "main", use_ray=False)
    assert manifest["layers"] == ["0", "3"] and manifest["dims"] == [32, 3] and manifest["dtype"] == "float16"
    store = ActivationStore(tmp_path / "out")
    import conv_nets

    net, _ = conv_nets.conv()
    ids = store.sample_ids("main")
    with torch.no_grad():
        want = net(torch.as_tensor(x[ids])).numpy()
    np.testing.assert_allclose(store.read_layer("main", "3"), want, atol=2e-3, rtol=1e-3)
