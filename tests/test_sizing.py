"""`gwray plan`: the layers a real run captures, its storage within 15 %, no weight read."""
from __future__ import annotations

import os

import numpy as np
import pytest

from gwray import cli
from gwray.activations.extract import extract
from gwray.config import load_config
from gwray.errors import GwrayInputError
from gwray.rates import DRIVER_S, GPU_PAIRS_PER_S, GPU_RATE_SOURCE, ORCHESTRATION_S, RATE_NAMES
from gwray.sizing import size_run

TEXTS = ["The cat sat.", "A rather longer sentence about the weather in the hills today.", "Short one",
         "Gromov and Wasserstein walk into a bar, and the bartender says nothing at all."]
STORAGE_TOLERANCE = 0.15  # estimate (Gaussian values) vs OUT/activations: real float16 compresses ~10 % more


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.txt"
    lines = [f"{t} ({i} times over, number {i * 7919 % 1000})" for i in range(10) for t in TEXTS]
    path.write_text("\n".join(lines) + "\n")  # distinct lines: repeated rows would compress
    return str(path)


def _cfg(model, probe, **layers):
    return load_config({"model": {"path": str(model)}, "layers": layers,
                        "probe": {"source": probe, "n_samples": 37, "batch_size": 8, "max_tokens": 16}})


@pytest.mark.parametrize("layers", [
    {},                                                                          # blocks, mean, float32
    {"select": ["transformer.h.*.mlp.c_fc", "transformer.ln_f"], "pooling": "tokens:2",
     "storage_dtype": "float16"},                                                # widths 128 and 32
])
def test_plan_equals_what_a_real_run_captures_and_stores(tiny_hf_model, probe, tmp_path, layers):
    cfg = _cfg(tiny_hf_model("gpt2", layers=3, hidden=32), probe, **layers)
    size = size_run(cfg, calibrate_here=False)
    manifest = extract(cfg, tmp_path, "main", use_ray=False, progress=False)
    assert size.layers == {"main": manifest["layers"]} and size.exact_layers
    assert size.dims == {"main": manifest["dims"]}
    on_disk = sum(f.stat().st_size for f in (tmp_path / "activations").rglob("*.parquet"))
    assert abs(size.activation_bytes - on_disk) <= STORAGE_TOLERANCE * on_disk, (size.activation_bytes, on_disk)
    L, n = len(manifest["layers"]), manifest["n_rows"]
    assert size.pairs_within == L * (L - 1) // 2 and size.pairs_cross == 0
    assert size.cost_bytes == L * n * n * 8


def test_plan_reads_no_weight_and_splits_shards_as_the_run(tiny_hf_model, probe, monkeypatch):
    import safetensors
    import safetensors.torch
    import torch
    import transformers

    from gwray.models import families
    from gwray.models.shard_plan import block_weights, plan_blocks

    def forbidden(*a, **k):
        raise AssertionError("a weight was read")

    for mod, name in ((safetensors, "safe_open"), (safetensors.torch, "load_file"), (torch, "load"),
                      (transformers.PreTrainedModel, "from_pretrained")):
        monkeypatch.setattr(mod, name, forbidden)
    model = tiny_hf_model("gpt_neox", layers=4, hidden=32, max_shard_size="200KB")
    cfg = load_config(_cfg(model, probe), {"model": {"shards": 2}})
    size = size_run(cfg, {"forward_flops": 1e9, "gw_pair_s": 0.5, "figure_s": 0.25})
    assert len(size.layers["main"]) == 5 and len(size.shard_bytes) == 2
    base, family = families.build_empty(transformers.AutoConfig.from_pretrained(model))
    weights = block_weights(base, family)
    held = [sum(weights[a:b]) * 4 for a, b in plan_blocks(weights, 2)]
    assert [b - held[k] for k, b in enumerate(size.shard_bytes)] == [size.shard_bytes[0] - held[0]] * 2
    cpu_rates = [k for k in RATE_NAMES if k != "gpu_pair_s"]  # CPU workers: no GPU rate asked for
    assert size.index_bytes and {k: how for k, (_, how) in size.rates.items()} == dict.fromkeys(cpu_rates, "given")
    # 10 GW pairs at 0.5 s on 2 workers, after the cost matrices; heatmap, gap view, dendrogram
    assert 10 * 0.5 / 2 <= size.seconds["pairs"] < 10 * 0.5 / 2 + 1 and size.seconds["report"] == 3 * 0.25


def test_plan_command(tiny_hf_model, probe, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tiny_hf_model('gpt2', layers=3, hidden=32)}}}\nprobe: {{source: {probe}}}\n")
    code = cli.main(["plan", str(cfg), "--rate", "forward_flops=1e10", "--rate", "gw_pair_s=0.01"])  # + figure_s
    out = capsys.readouterr().out
    assert code == 0, out
    for needle in ("checkpoint main: 4 layers", "embeddings, transformer.h.0, transformer.h.1, transformer.h.2",
                   "pairs: 6 within checkpoints", "activations", "cost matrices", "peak memory",
                   "time (compute only", "gw_pair_s 0.01 (given)", "figure_s"):
        assert needle in out, needle
    assert cli.main(["plan", str(cfg), "--rate", "gw_pair_s=fast"]) == 2
    assert "rate 'gw_pair_s=fast'" in capsys.readouterr().err
    assert cli.main(["plan", str(cfg), "--set", "graph.k=9"]) == 2  # what a run would refuse
    assert "graph.k: 9 groups" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_unknown_rate_is_named(tiny_hf_model, probe):
    with pytest.raises(GwrayInputError, match="rate 'tflops'"):
        size_run(_cfg(tiny_hf_model("gpt2", layers=3, hidden=32), probe), {"tflops": 1.0})


def test_plan_sizes_the_large_llm_template_from_config_and_index_alone(minilm_dir, tmp_path):
    """configs/large-llm.yaml on a Llama-3-70B-shaped directory holding config.json, the
    safetensors index and a tokenizer, but no weight file: 81 layers, 3,240 pairs, 8 shards."""
    import shutil

    import transformers as tf

    model = tmp_path / "Llama-70B"
    tf.LlamaConfig(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
                   torch_dtype="bfloat16").save_pretrained(model)
    (model / "model.safetensors.index.json").write_text(
        '{"metadata": {"total_size": 141107412992}, "weight_map": {"lm_head.weight": "model-1.safetensors"}}')
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, model / name)
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "large-llm.yaml"),
                      [f"model.path={model}", "probe.source=builtin:english", "probe.n_samples=512"])
    size = size_run(cfg, {"forward_flops": 4e14, "gw_pair_s": 0.3, "figure_s": 1.0})
    assert len(size.layers["main"]) == 81 and size.pairs_within == 81 * 80 // 2 == 3240
    # GPU workers: the device engine's rate, saying where it comes from (two workers per GPU)
    rate, how = size.rates["gpu_pair_s"]
    assert how == GPU_RATE_SOURCE and rate == pytest.approx(2 / (GPU_PAIRS_PER_S[1024] * (512 / 1024) ** (
        np.log(GPU_PAIRS_PER_S[2048] / GPU_PAIRS_PER_S[1024]) / np.log(2))))
    assert size.seconds["pairs"] >= 3240 * rate / 16
    assert size.weight_bytes == pytest.approx(141.1e9, rel=0.01)  # bf16, the index's total_size
    assert len(size.shard_bytes) == 8 and max(size.shard_bytes) < 1.2 * size.weight_bytes / 8  # + embeddings
    assert size.activation_bytes == pytest.approx(81 * 512 * 8192 * 2, rel=0.15)  # float16 + Parquet list levels


def test_calibration_measures_every_rate_here():
    from gwray.rates import calibrate

    rates = calibrate(list(RATE_NAMES), 40, 5, load_config({}))
    assert set(rates) == set(RATE_NAMES) and all(0 < v < float("inf") for v in rates.values())
    assert rates["forward_flops"] > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s


def test_plan_of_a_sweep_sizes_each_architecture_once(tmp_path, monkeypatch, capsys):
    """Checkpoints of one training run are sized once and listed once; the plan gives pair-record
    and matrix storage, the file count after compaction, and the pairs stage on N workers."""
    import numpy as np

    from gwray import sizing
    from gwray.models.toy import build_model, default_meta, save_toy

    meta = default_meta("digits", depth=7, width=8, hidden=8)
    for step in range(3):
        save_toy(build_model(meta), {**meta, "step": step}, tmp_path / f"step-{step:06d}")
    np.save(tmp_path / "probe.npy", np.random.default_rng(0).standard_normal((12, 64)).astype(np.float32))
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"model: {{source: toy, checkpoints: '{tmp_path}/step-*'}}\n"
                   f"probe: {{source: {tmp_path / 'probe.npy'}}}\nlayers: {{pooling: flatten}}\n"
                   "resources: {pair_file_rows: 100}\n")
    calls = []
    real = sizing._layers_and_dims
    monkeypatch.setattr(sizing, "_layers_and_dims", lambda *a: calls.append(a) or real(*a))
    rates = ["--rate", "forward_flops=1e10", "--rate", "gw_pair_s=0.01", "--rate", "figure_s=0.1"]
    assert cli.main(["plan", str(cfg), *rates, "--workers", "8"]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 1
    pairs = 3 * 28 + 2 * 64
    for needle in ("checkpoints step-000000 … step-000002 (3): 8 layers each",
                   "pairs: 84 within checkpoints, 128 across", f"in {pairs // 100 + 1} files",
                   "GW matrices", "pairs stage on 2 workers: "):
        assert needle in out, (needle, out)
    size = size_run(load_config(str(cfg)), {"forward_flops": 1e10, "gw_pair_s": 0.01, "figure_s": 0.1})
    costs = 3 * 8 * 2 * 12 * 12 * 8 / 1e10  # 2 n² d FLOPs: 8 layers of width 8 per checkpoint
    assert sizing.pairs_seconds(load_config(str(cfg)), size, 4) == pytest.approx((costs + pairs * (0.01 + ORCHESTRATION_S)) / 4)
    assert sizing.pairs_seconds(load_config(str(cfg)), size, 10**6) == pytest.approx(pairs * DRIVER_S)  # the driver's pace
    assert 20 * pairs < size.pairs_bytes < 200 * pairs and size.matrix_bytes > 8 * 3 * 64
