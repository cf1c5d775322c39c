"""Model loading: HF directories (safetensors only unless allowed), factories, toys; one-line errors."""
from __future__ import annotations

import json
import re
import shutil
import textwrap

import pytest
import torch

from gwray.config import ModelConfig
from gwray.errors import GwrayInputError
from gwray.models import weights
from gwray.models.loaders import load_model, resolve_model_path


def _one_line(exc_info, *names):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for name in names:
        assert str(name) in msg
    return msg


def test_minilm_resolves_and_loads(minilm_dir):
    assert resolve_model_path("minilm") == minilm_dir
    loaded = load_model(ModelConfig(path="minilm"), device="cpu")
    assert loaded.family == "bert" and loaded.kind == "hf" and loaded.tokenizer is not None
    assert loaded.block_names == [f"encoder.layer.{i}" for i in range(6)]
    assert not loaded.module.training and loaded.device == torch.device("cpu")


def test_gpt2_causal_lm_dtype_and_meta(tiny_hf_model):
    path = tiny_hf_model("gpt2", layers=3)
    loaded = load_model(ModelConfig(path=str(path), dtype="float16"), device="cpu")
    assert type(loaded.module).__name__ == "GPT2LMHeadModel"  # the config says causal LM
    assert loaded.base_prefix == "transformer" and loaded.runner is loaded.module.transformer
    assert loaded.block_names == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert next(loaded.module.parameters()).dtype == torch.float16
    skeleton = load_model(ModelConfig(path=str(path)), meta=True)
    assert skeleton.block_names == loaded.block_names and next(skeleton.module.parameters()).is_meta


def test_missing_model_directory(tmp_path):
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(path=str(tmp_path / "nope")))
    assert _one_line(exc, tmp_path / "nope").endswith("not found")


def test_pickle_only_directory_refused_unless_allowed(tmp_path, tiny_hf_model):
    src = tiny_hf_model("gpt2", layers=2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in src.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, pickled / f.name)
    state = load_model(ModelConfig(path=str(src)), device="cpu").module.state_dict()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(path=str(pickled)))
    assert "model.allow_pickle" in _one_line(exc, pickled, "pytorch_model.bin")
    loaded = load_model(ModelConfig(path=str(pickled), allow_pickle=True), device="cpu")
    key = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(loaded.module.state_dict()[key], state[key])


def test_factory_and_bad_factory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch
        def mlp():
            net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            return net, ["0", "2"]
        def wrong():
            return torch.nn.Linear(2, 2), ["nope"]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(ModelConfig(source="factory", factory="my_nets:mlp"), device="cpu")
    assert loaded.kind == "torch" and loaded.block_names == ["0", "2"] and loaded.tokenizer is None
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(source="factory", factory="my_nets:wrong"))
    _one_line(exc, "my_nets:wrong", "nope")
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(source="factory", factory="my_nets:absent"))
    _one_line(exc, "my_nets:absent")


def test_toy_source(tmp_path):
    toy = pytest.importorskip("gwray.models.toy")
    meta = toy.default_meta("digits", depth=2, width=8, hidden=16)
    toy.save_toy(toy.build_model(meta), meta, tmp_path / "ck")
    loaded = load_model(ModelConfig(source="toy", path=str(tmp_path / "ck")), device="cpu")
    assert loaded.family == "toy" and loaded.block_names == ["embed", "blocks.0", "blocks.1"]
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(source="toy", path=str(tmp_path / "none")))
    _one_line(exc, tmp_path / "none")


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def _to_ints(path):
    from safetensors.torch import load_file, save_file

    save_file({k: (v * 100).to(torch.int32) for k, v in load_file(path).items()}, path)


def _wider_config(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "n_embd": 64}))


def _index_names_absent_tensor(d):
    index = json.loads((d / weights.INDEX).read_text())
    index["weight_map"]["transformer.h.9.mlp.c_fc.weight"] = sorted(index["weight_map"].values())[0]
    (d / weights.INDEX).write_text(json.dumps(index))


SHARDED = "model-00002-of-00002.safetensors"


@pytest.mark.parametrize("sharded, damage, message", [
    (False, lambda d: _cut(d / "model.safetensors", lambda n: n // 2),
     r"model weights {d}/model.safetensors: damaged, [\d,]+ of [\d,]+ bytes \(truncated: copy it again\)"),
    (False, lambda d: _cut(d / "model.safetensors", lambda n: 100),
     r"model weights {d}/model.safetensors: damaged, 100 bytes, cut inside its [\d,]+-byte header"),
    (False, lambda d: (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"),
     r"model weights {d}/model.safetensors: damaged, a Git LFS pointer, not the weights \(fetch them: git lfs pull\)"),
    (True, lambda d: (d / SHARDED).unlink(),
     rf"checkpoint index {{d}}/model.safetensors.index.json: names {SHARDED}, which does not exist"),
    (True, lambda d: _cut(d / SHARDED, lambda n: n - 10),
     rf"model weights {{d}}/{SHARDED}: damaged, [\d,]+ of [\d,]+ bytes \(truncated"),
    (True, _index_names_absent_tensor,
     r"checkpoint index {d}/model.safetensors.index.json: names tensor transformer.h.9.mlp.c_fc.weight in "),
    (False, _wider_config,
     r"model weights {d}/model.safetensors: tensor transformer.h.0.attn.c_attn.bias has shape \(96,\), "
     r"{d}/config.json gives \(192,\)"),
    (False, lambda d: _to_ints(d / "model.safetensors"),
     r"model weights {d}/model.safetensors: tensor transformer.h.0.attn.c_attn.bias holds I32, not floating"),
    (False, lambda d: _cut(d / "tokenizer.json", lambda n: n // 2),
     r"model directory {d}: unreadable tokenizer files \(Expecting .*\); copy them again"),
    (False, lambda d: _cut(d / "config.json", lambda n: n // 2), r"model directory {d}: unreadable config \("),
], ids=["truncated", "header-cut", "lfs-pointer", "index-names-missing-file", "truncated-shard",
        "index-names-absent-tensor", "shape-vs-config", "int-dtype", "tokenizer-cut", "config-cut"])
def test_damaged_model_files_are_named_before_any_weight_is_read(tmp_path, tiny_hf_model, sharded, damage, message):
    src = tiny_hf_model("gpt2", layers=2, hidden=32, max_shard_size="200KB" if sharded else None)
    d = tmp_path / "model"
    shutil.copytree(src, d)
    damage(d)
    with pytest.raises(GwrayInputError) as exc:
        load_model(ModelConfig(path=str(d)), device="cpu")
    assert re.match(message.format(d=re.escape(str(d))), _one_line(exc)), str(exc.value)


def test_half_precision_weights_under_a_float32_config_load(tmp_path, tiny_hf_model):
    from safetensors.torch import load_file, save_file

    src = tiny_hf_model("gpt2", layers=2, hidden=32)
    d = tmp_path / "half"
    shutil.copytree(src, d)
    save_file({k: v.half() for k, v in load_file(src / "model.safetensors").items()}, d / "model.safetensors")
    key = "transformer.h.0.attn.c_attn.weight"
    loaded = load_model(ModelConfig(path=str(d)), device="cpu").module.state_dict()[key]
    reference = load_model(ModelConfig(path=str(src)), device="cpu").module.state_dict()[key]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, reference.half().float())
