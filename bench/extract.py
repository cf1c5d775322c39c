"""Extraction speed: gwray (in-process, Ray Data) against a plain Hugging Face loop, same run.

all-MiniLM-L6-v2 over 1,024 sentences of ``builtin:english`` (batch 32, at most 64 tokens, mean
pooling of the 7 hidden states). The anchor is the loop a user would write: tokenize, forward with
``output_hidden_states=True``, mean-pool every hidden state to numpy. Reported:

- ``forward`` ratio: gwray's hook-and-pool loop / the plain loop (model loaded in both; target <= 1.10);
- ``extract`` ratio: ``extract(use_ray=False)`` end to end (load model + probe, forward, write Parquet,
  manifest) / (plain loop + model load);
- Ray Data: ``extract(use_ray=True)`` (actor start and model load included) minus the in-process
  extract: the Ray Data overhead; ``ray.init`` is timed apart;
- peak memory: each variant in its own process (peak RSS; Ray: the sum of peak RSS over the driver's
  process tree, raylet and workers included, so an upper bound).

The forward comparison interleaves the two loops batch by batch (mean over ``--reps`` passes after
a warm-up pass); end-to-end extractions alternate in-process / Ray Data (best of ``--reps``), so
machine load hits the variants alike.
Run: ``python bench/extract.py [--n 1024] [--reps 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cfg(n: int):
    from gwray.config import load_config

    return load_config({"model": {"path": "minilm"},
                        "probe": {"n_samples": n, "batch_size": 32, "max_tokens": 64},
                        "layers": {"select": "blocks", "pooling": "mean"}})


def plain_loop(model, tokenizer, texts, batch=32, max_tokens=64):
    """The anchor: HF forward with output_hidden_states=True, mean-pooled per layer on the side."""
    import numpy as np
    import torch

    pooled = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_tokens,
                            return_tensors="pt")
            hidden = model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"][..., None].float()
            pooled.append([((h * m).sum(1) / m.sum(1)).numpy() for h in hidden])
    return [np.concatenate(layer) for layer in zip(*pooled)]


def interleaved(model, tok, worker, probe, reps: int, batch=32) -> tuple[float, float, float]:
    """Plain loop and gwray's pooled forward batch by batch, order swapped every batch.

    Returns the mean time per pass over the probe of each, and the largest |difference|.
    """
    import numpy as np


    spent = {"plain": 0.0, "gwray": 0.0}
    err = 0.0
    for r in range(reps + 1):  # pass 0 warms up and is not timed
        for i, b in enumerate(probe.batches(batch)):
            out = {}
            for which in (("plain", "gwray") if (i + r) % 2 == 0 else ("gwray", "plain")):
                t = time.perf_counter()
                out[which] = (plain_loop(model, tok, list(b["text"])) if which == "plain"
                              else [rows.numpy() for rows, _ in worker.pooled(b).values()])
                if r:
                    spent[which] += time.perf_counter() - t
            err = max(err, max(float(np.abs(x - y).max()) for x, y in zip(out["plain"], out["gwray"])))
        print(f"  pass {r}: {spent}", file=sys.stderr, flush=True)
    return spent["plain"] / reps, spent["gwray"] / reps, err


def _tree_peak_rss_mb(root: int) -> float:
    """Sum of VmHWM (peak RSS) over ``root`` and its descendants (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack += kids.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def one(variant: str, n: int) -> dict:
    """Run one variant once in this process and report its peak memory (MB)."""
    import resource

    cfg = _cfg(n)
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "plain":
            import transformers as tf

            from gwray.activations.probes import load_probe
            from gwray.models.loaders import resolve_model_path

            path = resolve_model_path("minilm")
            model, tok = tf.AutoModel.from_pretrained(path).eval(), tf.AutoTokenizer.from_pretrained(path)
            plain_loop(model, tok, load_probe(cfg.probe).texts)
        elif variant == "inprocess":
            from gwray.activations.extract import extract

            extract(cfg, tmp, "main", use_ray=False)
        else:
            import ray

            from gwray.activations.extract import extract

            ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024**2,
                     include_dashboard=False, log_to_driver=False)
            extract(cfg, tmp, "main", use_ray=True)
            peak = _tree_peak_rss_mb(os.getpid())
            ray.shutdown()
            return {"variant": variant, "peak_mb": round(peak, 1)}
    return {"variant": variant, "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--one", choices=["plain", "inprocess", "ray"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.n)))
        return

    import numpy as np
    import ray
    import transformers as tf

    from gwray.activations.extract import BatchExtractor, extract
    from gwray.activations.probes import load_probe
    from gwray.activations.store import ActivationStore
    from gwray.models.loaders import resolve_model_path

    cfg = _cfg(args.n)
    probe = load_probe(cfg.probe)
    path = resolve_model_path("minilm")
    t0 = time.perf_counter()
    model, tok = tf.AutoModel.from_pretrained(path).eval(), tf.AutoTokenizer.from_pretrained(path)
    t_load = time.perf_counter() - t0
    worker = BatchExtractor(cfg, None, device="cpu")
    plain, gw, err = interleaved(model, tok, worker, probe, args.reps)
    times: dict[str, list[float]] = {"inprocess": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024**2,
                 include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t
        for _ in range(args.reps):  # in-process and Ray Data alternate
            for variant in ("inprocess", "ray"):
                t = time.perf_counter()
                extract(cfg, os.path.join(tmp, variant), "main", use_ray=variant == "ray")
                times[variant].append(time.perf_counter() - t)
            print("  rep:", {k: round(v[-1], 2) for k, v in times.items()}, file=sys.stderr, flush=True)
        a, b = (ActivationStore(os.path.join(tmp, v)) for v in ("inprocess", "ray"))
        same = all(np.array_equal(a.read_layer("main", k), b.read_layer("main", k))
                   for k in range(len(a.layer_names("main"))))
        ray.shutdown()
    best = {k: min(v) for k, v in times.items()}
    n = args.n
    print(f"extract bench: all-MiniLM-L6-v2, {n} sentences, batch 32, max 64 tokens, mean pooling, "
          f"{len(worker.specs)} layers, CPU, torch threads {__import__('torch').get_num_threads()}, {args.reps} passes")
    print(f"  plain HF loop (output_hidden_states)   {plain:7.2f} s   {n / plain:7.1f} samples/s (mean per pass)")
    print(f"  gwray hooks+pool loop (no writes)      {gw:7.2f} s   ratio {gw / plain:.3f} (target <= 1.10; "
          f"batches interleaved with the plain loop)")
    print(f"  gwray extract() in-process, end to end {best['inprocess']:7.2f} s   ratio "
          f"{best['inprocess'] / (plain + t_load):.3f} vs plain loop + model load ({t_load:.2f} s)")
    print(f"  gwray extract() Ray Data, end to end   {best['ray']:7.2f} s   overhead "
          f"{best['ray'] - best['inprocess']:+.2f} s vs in-process (ray.init {t_init:.2f} s not included); "
          f"output identical: {same}")
    print(f"  max |gwray - plain| over layers and batches: {err:.2e}", flush=True)
    peaks = {}
    for variant in ("plain", "inprocess", "ray"):
        out = subprocess.run([sys.executable, __file__, "--one", variant, "--n", str(args.n)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks[variant] = json.loads(out)["peak_mb"]
    print(f"  peak RSS: plain {peaks['plain']:.0f} MB, in-process {peaks['inprocess']:.0f} MB, "
          f"Ray Data (driver + raylet + workers) {peaks['ray']:.0f} MB")

if __name__ == "__main__":
    main()
