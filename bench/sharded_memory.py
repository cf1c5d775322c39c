"""Benchmark: peak memory of shard actors against the whole-model process, in the same run.

Writes a random-weight Llama-style model of about 1.03 B parameters (TinyLlama's shape: 22 blocks,
hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab 32000) to a temporary directory as a
multi-file safetensors checkpoint (one tensor at a time, so this process never holds the model),
then extracts the same random-token probe twice with the sharded path:

- anchor: 1 shard, i.e. one actor that holds the whole model;
- K shards (default 4), each holding a contiguous, parameter-balanced range of blocks.

Prints per actor the bytes of weights it holds, its peak RSS, the target
``1.3 × its weights + 1.5 GB`` and whether it is met, then the ratio of the largest shard's peak
to the anchor's, and both throughputs (on a CPU-only machine K shards share the same cores, so the
pipeline cannot be faster than one process; the figure shows its overhead).

Usage: python bench/sharded_memory.py [--shards 4] [--dtype float32] [--n 8] [--tokens 16]
       [--batch 2] [--dir /tmp/x (keep the checkpoint)]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GB = 1024**3


def write_checkpoint(path: Path, dtype: torch.dtype, file_bytes: int = 512 * 1024**2) -> int:
    """A random-weight Llama checkpoint split into files of about ``file_bytes``; returns n_params."""
    import transformers as tf
    from safetensors.torch import save_file

    from gwray.models import families, weights

    config = tf.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                            max_position_embeddings=2048)
    config.save_pretrained(path)
    base, _ = families.build_empty(config)
    shapes = [(f"model.{n}", p.shape) for n, p in base.named_parameters()]
    groups, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = int(np.prod(shape)) * torch.finfo(dtype).bits // 8
        if current and size + nbytes > file_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02).to(dtype)
                   for n, s in group}
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
        del tensors
    (path / weights.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(int(np.prod(s)) for _, s in shapes)


def probe_batches(n: int, tokens: int, batch: int, seed: int = 0):
    """Random token ids, right-padded to various lengths (so the attention mask matters)."""
    rng = np.random.default_rng(seed)
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        ids = torch.as_tensor(rng.integers(1, 32000, size=(b, tokens)), dtype=torch.int64)
        lengths = rng.integers(tokens // 2, tokens + 1, size=b)
        mask = torch.as_tensor(np.arange(tokens)[None] < lengths[:, None], dtype=torch.int64)
        yield {"sample_ids": np.arange(lo, lo + b, dtype=np.int64), "input_ids": ids * mask, "attention_mask": mask}


def extract(model_dir: Path, shards: int, dtype: str, args, out: Path) -> dict:
    """Load and run ``shards`` actors; per-actor weights / peak RSS, load and extraction seconds."""
    import ray

    from gwray.activations.capture import Pooler
    from gwray.activations.store import ActivationWriter
    from gwray.models import sharded

    pool = sharded.start_shards(shards)
    try:
        t0 = time.perf_counter()
        infos = sharded.load_shards(pool, model_dir, dtype=dtype)
        loaded = time.perf_counter() - t0
        names = ["embeddings"] + [f"layers.{i}" for i in range(22)]
        writer = ActivationWriter(out, f"shards{shards}", names)
        t0 = time.perf_counter()
        rows = sharded.run_pipeline(pool, probe_batches(args.n, args.tokens, args.batch), Pooler("mean"),
                                    writer, names)
        seconds = time.perf_counter() - t0
        writer.commit({})
        memory = ray.get([a.memory.remote() for a in pool.actors])
    finally:
        pool.close()
    return {"shards": shards, "load_s": loaded, "extract_s": seconds, "rows": rows,
            "actors": [{"blocks": i["blocks"], "bytes": i["bytes"], "files": len(i["files"]), **m}
                       for i, m in zip(infos, memory)]}


def report(run: dict) -> float:
    print(f"\n{run['shards']} shard(s): load {run['load_s']:.1f} s, extraction {run['extract_s']:.1f} s "
          f"({run['rows'] / run['extract_s']:.2f} samples/s)")
    print(f"  {'shard':>5} {'blocks':>9} {'files':>5} {'weights GB':>10} {'peak RSS GB':>11} {'target GB':>9}  ok")
    worst = 0.0
    for k, a in enumerate(run["actors"]):
        target = 1.3 * a["bytes"] + 1.5 * GB
        worst = max(worst, a["peak_rss"])
        print(f"  {k:>5} {a['blocks'][0]:>4}-{a['blocks'][1] - 1:<4} {a['files']:>5} {a['bytes'] / GB:>10.2f} "
              f"{a['peak_rss'] / GB:>11.2f} {target / GB:>9.2f}  {'yes' if a['peak_rss'] <= target else 'NO'}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--n", type=int, default=8, help="probe samples")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sample")
    parser.add_argument("--batch", type=int, default=2, help="micro-batch size")
    parser.add_argument("--dir", default=None, help="keep the checkpoint here (default: a temp dir)")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="gwray-sharded-bench-"))
    model_dir = Path(args.dir) if args.dir else work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        n_params = write_checkpoint(model_dir, getattr(torch, args.dtype))
        disk = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        print(f"model: {n_params / 1e9:.3f} B parameters, {disk / GB:.2f} GB of {args.dtype} in "
              f"{len(list(model_dir.glob('*.safetensors')))} files, written in {time.perf_counter() - t0:.0f} s")
        print(f"probe: {args.n} samples x {args.tokens} tokens, micro-batches of {args.batch} "
              "(figures taken on a shared, loaded machine)")
        ray.init(address="local", include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False)
        whole = extract(model_dir, 1, args.dtype, args, work / "out")
        split = extract(model_dir, args.shards, args.dtype, args, work / "out")
        anchor, worst = report(whole), report(split)
        print(f"\nlargest shard peak / whole-model peak: {worst / anchor:.2f} "
              f"(weights share {max(a['bytes'] for a in split['actors']) / whole['actors'][0]['bytes']:.2f})")
        print(f"throughput {args.shards} shards / 1 shard: "
              f"{(split['rows'] / split['extract_s']) / (whole['rows'] / whole['extract_s']):.2f}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
