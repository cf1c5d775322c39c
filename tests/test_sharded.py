"""Sharded models: each Ray actor holds only its blocks, and the pooled output equals HF's.

One pool of 3 shard actors serves the tests of the module (actors reload models), so the module
pays the actor start-up once. The kill test ends that pool; it comes last, and a test running
after it anyway gets a fresh pool.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gwray.activations.capture import Pooler
from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.errors import GwrayComputeError, GwrayInputError
from gwray.models import families, sharded, weights
from gwray.models.shard_plan import plan_blocks

FAMILIES = ["gpt2", "gpt_neox", "llama", "bert"]
TEXTS = ["the cat sat on the mat", "a", "gromov wasserstein distances between layers",
         "shards hold contiguous blocks", "one two three four five six seven", "x y"] * 2
LAYERS = 4


@pytest.fixture(scope="module")
def pools(ray_local):
    holder = {}
    yield holder
    if "pool" in holder:
        holder["pool"].close()


@pytest.fixture
def pool(pools):
    if "pool" not in pools or pools["pool"].group is None:
        pools["pool"] = sharded.start_shards(3)
    return pools["pool"]


def _model(tiny_hf_model, family):
    # ~37 KB per block: the checkpoint spans one file for the embeddings and several for the blocks.
    return tiny_hf_model(family, layers=LAYERS, hidden=32, max_shard_size="50KB")


def _batches(path, batch_size=5):
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(path)
    for lo in range(0, len(TEXTS), batch_size):
        enc = tok(TEXTS[lo:lo + batch_size], padding=True, return_tensors="pt")
        yield {"sample_ids": np.arange(lo, lo + len(enc["input_ids"])) + 100, "input_ids": enc["input_ids"],
               "attention_mask": enc["attention_mask"]}


def _expected_means(path, family):
    """HF output_hidden_states of the whole model, mean-pooled over real tokens by hand."""
    import transformers as tf

    model = (tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM).from_pretrained(path).eval()
    per_layer = [[] for _ in range(LAYERS + 1)]
    for b in _batches(path):
        with torch.no_grad():
            hs = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        m = b["attention_mask"].unsqueeze(-1).float()
        for k, h in enumerate(hs.hidden_states):
            per_layer[k].append(((h * m).sum(1) / m.sum(1)).numpy())
    return [np.concatenate(x) for x in per_layer]


def _expected_holdings(path, family, start, stop):
    """Base-model parameter names a shard must hold and the files those tensors live in."""
    import transformers as tf

    base, fam = families.build_empty(tf.AutoConfig.from_pretrained(path))
    mods = fam.modules_for(LAYERS, start, stop)
    names = sorted(n for n, _ in base.named_parameters() if any(n.startswith(m + ".") for m in mods))
    weight_map = json.loads((path / weights.INDEX).read_text())["weight_map"]
    prefix = "" if names[0] in weight_map else fam.prefix + "."
    return names, sorted({weight_map[prefix + n] for n in names}), set(weight_map.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_equals_unsharded_and_actors_hold_only_their_blocks(pool, tiny_hf_model, tmp_path, family):
    import ray

    path = _model(tiny_hf_model, family)
    expected = _expected_means(path, family)
    names = ["embeddings"] + [f"block{i}" for i in range(LAYERS)]
    for shards in (2, 3):
        infos = sharded.load_shards(pool, path, shards=shards)
        ranges = [tuple(i["blocks"]) for i in infos]
        assert ranges[0][0] == 0 and ranges[-1][1] == LAYERS
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        held = ray.get([a.held_parameters.remote() for a in pool.actors[:shards]])
        for info, have in zip(infos, held):
            want, files, all_files = _expected_holdings(path, family, *info["blocks"])
            assert have == want == info["params"], f"shard {info['index']} holds the wrong parameters"
            assert info["files"] == files, f"shard {info['index']} opened {info['files']}, needs {files}"
        assert any(len(i["files"]) < len(all_files) for i in infos)  # the test can fail: some shard skips files
        writer = ActivationWriter(tmp_path / f"out{shards}", "c", names)
        assert sharded.run_pipeline(pool, _batches(path), Pooler("mean"), writer, names, in_flight=2) == len(TEXTS)
        writer.commit({})
        store = ActivationStore(tmp_path / f"out{shards}")
        assert list(store.sample_ids("c")) == list(range(100, 100 + len(TEXTS)))
        for k, name in enumerate(names):
            np.testing.assert_allclose(store.read_layer("c", name), expected[k], atol=1e-5, rtol=0,
                                       err_msg=f"{family}, {shards} shards, layer {name}")


def test_plan_balances_parameters_and_rejects_too_many_shards():
    assert plan_blocks([10, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    assert plan_blocks([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert plan_blocks([1, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(GwrayInputError, match=r"model.shards: 5 shards for a model of 4 blocks"):
        plan_blocks([1, 1, 1, 1], 5)


def test_more_shards_than_blocks(pool, tiny_hf_model):
    path = tiny_hf_model("llama", layers=2, hidden=32, max_shard_size="50KB")
    with pytest.raises(GwrayInputError, match=r"^model.shards: 3 shards for a model of 2 blocks"):
        sharded.load_shards(pool, path, shards=3)


def test_index_naming_a_missing_file(pool, tiny_hf_model, tmp_path):
    src = _model(tiny_hf_model, "gpt2")
    path = tmp_path / "broken"
    shutil.copytree(src, path)
    missing = sorted(json.loads((path / weights.INDEX).read_text())["weight_map"].values())[-1]
    (path / missing).unlink()
    with pytest.raises(GwrayInputError) as err:
        sharded.load_shards(pool, path, shards=2)
    assert missing in str(err.value) and "does not exist" in str(err.value) and "\n" not in str(err.value)


def test_truncated_shard_file_is_named_before_any_actor_loads(pool, tiny_hf_model, tmp_path):
    src = _model(tiny_hf_model, "gpt2")
    path = tmp_path / "truncated"
    shutil.copytree(src, path)
    last = sorted(json.loads((path / weights.INDEX).read_text())["weight_map"].values())[-1]
    data = (path / last).read_bytes()
    (path / last).write_bytes(data[:len(data) // 2])
    with pytest.raises(GwrayInputError, match=rf"^model weights {path / last}: damaged, .* \(truncated"):
        sharded.load_shards(pool, path, shards=2)


def test_unsupported_architecture(pool, tmp_path):
    import transformers as tf

    tf.T5Config(num_layers=2, d_model=16, d_kv=4, d_ff=32, num_heads=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(GwrayInputError, match=r"architecture 't5' is not supported.*shards: 1"):
        sharded.load_shards(pool, tmp_path, shards=2)


def _cfg(path, probe, **model):
    from gwray.config import load_config

    return load_config({"model": {"path": str(path), **model},
                        "probe": {"source": str(probe), "n_samples": 7, "max_tokens": 12, "batch_size": 3}})


def test_extract_with_shards_equals_in_process_extract(pool, tiny_hf_model, tmp_path, capsys):
    from gwray.activations.extract import extract

    path = _model(tiny_hf_model, "gpt_neox")
    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(TEXTS[:9]) + "\n")
    plain = extract(_cfg(path, probe), tmp_path / "plain", "c", use_ray=False, progress=False)
    capsys.readouterr()
    split = extract(_cfg(path, probe, shards=2), tmp_path / "split", "c")
    err = capsys.readouterr().err  # progress between the start and end lines, batch by batch
    start, end = err.index("extract c: 7 samples, "), err.index("extract c: 7 samples done")
    ticks = [err.find(f"{k}/7", start) for k in (0, 7)]  # a live bar (batches may tick faster than it draws)
    assert start < ticks[0] < ticks[1] < end, err
    assert split["layers"] == plain["layers"] and split["n_rows"] == plain["n_rows"] == 7
    a, b = ActivationStore(tmp_path / "plain"), ActivationStore(tmp_path / "split")
    np.testing.assert_array_equal(a.sample_ids("c"), b.sample_ids("c"))
    for name in plain["layers"]:
        np.testing.assert_allclose(b.read_layer("c", name), a.read_layer("c", name), atol=1e-5, rtol=0)


def test_extract_with_shards_rejects_other_selections(pool, tiny_hf_model, tmp_path):
    from gwray.activations.extract import extract
    from gwray.config import load_config

    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(TEXTS) + "\n")
    cfg = _cfg(_model(tiny_hf_model, "gpt2"), probe, shards=2)
    cfg = load_config(cfg, {"layers": {"select": ["transformer.h.0"]}})
    with pytest.raises(GwrayInputError, match=r"^config key layers.select: with model.shards > 1 only 'blocks'"):
        extract(cfg, tmp_path / "out", "c")
    assert not (tmp_path / "out" / "activations" / "checkpoint=c").exists()


def test_shard_killed_mid_run_names_it_and_leaves_nothing(pool, tiny_hf_model, tmp_path):
    path = _model(tiny_hf_model, "llama")

    class DyingPooler(Pooler):  # defined locally so Ray ships it by value to the actors
        def __call__(self, hidden, attention_mask, sample_ids, layer="layer"):
            import os

            import ray

            if "-shard-1-" in (ray.get_runtime_context().get_actor_name() or "") and min(sample_ids) >= 105:
                os._exit(1)
            return super().__call__(hidden, attention_mask, sample_ids, layer=layer)

    names = ["embeddings"] + [f"block{i}" for i in range(LAYERS)]
    writer = ActivationWriter(tmp_path, "c", names)
    infos = sharded.load_shards(pool, path)  # shard 1 sits in the middle: shard 2 waits on it
    with pytest.raises(GwrayComputeError) as err:  # exit 2: a fault with a named cause
        sharded.run_pipeline(pool, _batches(path, batch_size=2), DyingPooler("mean"), writer, names)
    assert pool.group is None, "a failed run must stop every shard"
    start, stop = infos[1]["blocks"]
    assert f"shard 1 ({pool.names[1]}), blocks {start}-{stop - 1} died" in str(err.value)
    assert not writer.dir.exists(), "a half-written checkpoint was left behind"
