"""Sizing a run before it runs: what it will capture, store, hold in memory and take (``gwray plan``,
printed by :mod:`gwray.plan_command`).

HF models are read as a meta-device module tree built from ``config.json`` (no weight is read);
a sharded model's blocks are split as the run splits them. Time comes from rates
(:mod:`gwray.rates`): a short calibration on this machine, or rates measured on the cluster's GPUs
and passed in (``--rate``).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from gwray.config import RunConfig
from gwray.errors import GwrayInputError
from gwray.graph.stability import resamples_for
from gwray.rates import DRIVER_S, GPU_RATE_SOURCE, ORCHESTRATION_S, RATE_NAMES, calibrate

_SOLVER_ARRAYS = 6  # n x n float64 arrays one GW solve holds (costs, coupling, gradient, ...)
_DEVICE_BYTES = 36  # bytes per (i, j) and pair of the device engine at its peak (gw.batched.plan_batch)


@dataclass
class RunSize:
    """What :func:`size_run` finds. Bytes are bytes, times seconds.

    Attributes
    ----------
    layers : dict
        Checkpoint id → layer names in depth order (what the run captures).
    dims : dict
        Checkpoint id → stored vector width per layer.
    exact_layers : bool
        False for ``layers.select: all`` (the run drops modules a forward pass never calls).
    n_samples, rows_per_sample : int
        Probe samples; rows each stores (``tokens:K`` pooling: K).
    pairs_within, pairs_cross : int
        GW pairs inside checkpoints and between them (``compare.cross``).
    activation_bytes : int
        ``OUT/activations`` on disk (Parquet).
    cost_bytes : int
        Every layer's (n, n) float64 cost matrix, which the GW workers compute and cache.
    weight_bytes : int
        The model's parameters (all of them, an LM head too) in ``model.dtype``.
    forward_params : int
        Parameters a forward pass multiplies with (the base model's, embedding tables excluded).
    index_bytes : int or None
        ``total_size`` of the safetensors index (the files on disk), when there is one.
    shard_bytes : list of int
        Peak memory per shard (one entry for an unsharded model): its weights plus in-flight
        micro-batch activations.
    worker_bytes : int
        Peak memory per GW worker: its cost-matrix cache plus the solves in flight.
    pairs_bytes, pair_files : int
        ``OUT/pairs/`` once finished (measured on synthetic records of this run's names) and
        its file count after compaction (None without: ``resources.pair_file_rows: 0``).
    matrix_bytes : int
        ``gw_matrix.parquet``, ``cross/gw_matrix.parquet`` and the ``.npy`` matrices.
    seconds : dict
        Stage → estimated seconds (activations, pairs, communities, report).
    rates : dict
        The rates behind ``seconds`` and where each came from (``calibrated`` or ``given``).
    """

    layers: dict
    dims: dict
    exact_layers: bool
    n_samples: int
    rows_per_sample: int
    pairs_within: int
    pairs_cross: int
    activation_bytes: int
    cost_bytes: int
    weight_bytes: int
    forward_params: int
    index_bytes: int | None
    shard_bytes: list
    worker_bytes: int
    pairs_bytes: int = 0
    pair_files: int | None = 0
    matrix_bytes: int = 0
    seconds: dict = field(default_factory=dict)
    rates: dict = field(default_factory=dict)


def _width(module, hidden: int) -> int:
    """Last-dimension width of a module's output, from its parameters' shapes (no forward pass)."""
    for attr in ("out_features", "embedding_dim", "nf"):  # Linear, Embedding, HF Conv1D
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)  # LayerNorm, RMSNorm
    if shape:
        return int(shape[-1])
    return hidden


def _layers_and_dims(cfg: RunConfig, path, probe) -> tuple[list[str], list[int], object]:
    """The captured layer names and their pooled widths, and the (meta or small) loaded model."""
    from gwray.activations.capture import select_layers
    from gwray.models.loaders import load_model

    loaded = load_model(cfg.model, path, device="cpu", meta=True)
    if loaded.kind != "hf":  # toy / factory models are small and real: pool two samples exactly
        from gwray.activations.extract import BatchExtractor

        pooled = BatchExtractor(cfg, path, device="cpu").pooled(probe.batch(0, min(2, len(probe))))
        return list(pooled), [int(rows.shape[1]) for rows, _ in pooled.values()], loaded
    config = loaded.module.config
    hidden = next(getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if hasattr(config, k))
    specs = select_layers(loaded, cfg.layers.select)
    block_like = set(loaded.block_names) | {loaded.base_prefix}
    dims = [hidden if s.module in block_like else _width(loaded.module.get_submodule(s.module), hidden)
            for s in specs]
    if cfg.layers.pooling == "flatten":
        dims = [d * cfg.probe.max_tokens for d in dims]
    return [s.name for s in specs], dims, loaded


def _architecture(cfg: RunConfig, path) -> str | None:
    """What decides a checkpoint's layers and widths, as text: an HF ``config.json``, a toy's
    ``toy.json`` less its step; None when unknown (a factory: each checkpoint is sized)."""
    from gwray.models.loaders import resolve_model_path
    from gwray.models.toy import read_meta

    try:
        if cfg.model.source == "toy":
            return json.dumps({k: v for k, v in read_meta(path).items() if k != "step"}, sort_keys=True)
        if cfg.model.source == "hf":
            return (resolve_model_path(path or cfg.model.path) / "config.json").read_text()
    except (GwrayInputError, OSError):
        pass  # sized, and the error raised, by _layers_and_dims
    return None


def _parquet_part_bytes(rows: int, width: int, dtype: str) -> int:
    """Bytes of one activation part as the store writes it (random values: floats barely compress)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.random.default_rng(0).standard_normal(rows * width).astype(dtype)
    table = pa.table({"sample_id": pa.array(np.arange(rows, dtype=np.int64)),
                      "vector": pa.ListArray.from_arrays(pa.array(np.arange(0, rows * width + 1, width,
                                                                            dtype=np.int32)),
                                                         pa.array(values))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return len(buf.getvalue())


def _activation_bytes(dims: list[int], rows: int, batch_rows: int, dtype: str) -> int:
    full, last = divmod(rows, batch_rows)
    total, sizes = 0, {}
    for d in dims:
        for r, count in ((batch_rows, full), (last, 1 if last else 0)):
            if count:
                if (r, d) not in sizes:
                    sizes[r, d] = _parquet_part_bytes(r, d, dtype)
                total += count * sizes[r, d]
    return total


def _output_bytes(cfg: RunConfig, plan, rows: int) -> tuple[int, int]:
    """Bytes of ``OUT/pairs/`` and of the GW matrices, from Parquet written in memory: up to
    5,000 pair records of the plan's own names with random values (the solver state too with
    ``gw.warm_start``), and one checkpoint's long matrix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gwray.scheduler.assembly import MATRIX_SCHEMA
    from gwray.scheduler.results import records_table

    def parquet_bytes(table) -> int:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return len(buf.getvalue())

    rng, sample = np.random.default_rng(0), plan[:5000]
    state = {"plan": rng.permutation(rows).astype(np.int32), "duals": rng.standard_normal(rows),
             "bound_duals": rng.standard_normal(rows), "start_ends": {"identity": 1.01}} if cfg.gw.warm_start else {}
    records = [{"checkpoint_a": t.checkpoint_a, "layer_a": t.layer_a, "checkpoint_b": t.checkpoint_b,
                "layer_b": t.layer_b, "gw": g, "lower_bound": 0.9 * g, "init": cfg.gw.starts[0],
                "iterations": int(k % 50), "marginal_error": 0.0, "seconds": 1e-3 * g, "n": rows,
                "solver": "cg-lap", **state} for k, (t, g) in enumerate(zip(sample, rng.uniform(size=len(sample))))]
    per_pair = parquet_bytes(records_table(records)) / max(len(sample), 1)
    names = next(iter(plan.layers.values()))
    cells = len(names) ** 2
    i, j = np.divmod(np.arange(cells), len(names))
    one = pa.table({"checkpoint": [next(iter(plan.layers))] * cells, "layer_i": np.take(names, i),
                    "layer_j": np.take(names, j), "gw": rng.uniform(size=cells),
                    "lower_bound": rng.uniform(size=cells)}, schema=MATRIX_SCHEMA)
    within = sum(len(v) ** 2 for v in plan.layers.values())
    crossed = sum(b.size for b in plan.blocks if not b.within)
    # long Parquet per cell, plus float64 .npy: per checkpoint and stacked, per cross pair
    matrix = parquet_bytes(one) / cells * (within + crossed) + 8 * (2 * within + crossed)
    return int(per_pair * len(plan)), int(matrix)


def pairs_seconds(cfg: RunConfig, size: "RunSize", workers: int) -> float | None:
    """Seconds of the pairs stage on ``workers`` GW workers: the cost matrices and the pairs, at
    the workers' rate (``gpu_pair_s`` for GPU workers, else ``gw_pair_s``) plus
    :data:`ORCHESTRATION_S` each, shared out, and never faster than the driver can hand pairs
    out (:data:`DRIVER_S` a pair). None without the rates."""
    rate = "gpu_pair_s" if cfg.resources.gpus_per_worker > 0 else "gw_pair_s"
    if rate not in size.rates or "forward_flops" not in size.rates:
        return None
    pairs, rows = size.pairs_within + size.pairs_cross, size.n_samples * size.rows_per_sample
    widths = [d for dims in size.dims.values() for d in dims]
    costs = sum(2 * rows * rows * d for d in widths) / size.rates["forward_flops"][0]
    return max((costs + pairs * (size.rates[rate][0] + ORCHESTRATION_S)) / workers, pairs * DRIVER_S)


def _index_bytes(path) -> int | None:
    from gwray.models.weights import INDEX
    from gwray.models.loaders import resolve_model_path

    try:
        index = resolve_model_path(path) / INDEX
        return int(json.loads(index.read_text())["metadata"]["total_size"]) if index.is_file() else None
    except (GwrayInputError, OSError, ValueError, KeyError, TypeError):
        return None


def _forward_params(loaded) -> int:
    """Parameters of the modules a forward pass runs, less embedding tables (a lookup, no FLOPs)."""
    import torch

    base = getattr(loaded.module, "base_model", loaded.module) if loaded.kind == "hf" else loaded.module
    tables = {id(p) for m in base.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in base.parameters() if id(p) not in tables)


def _shard_params(cfg: RunConfig, path, loaded) -> list[int]:
    """Parameters each shard holds, split as :func:`gwray.models.sharded.load_shards` splits them."""
    if cfg.model.shards == 1 or loaded.kind != "hf":
        return [sum(p.numel() for p in loaded.module.parameters())]
    from gwray.models import families
    from gwray.models.shard_plan import block_weights, plan_blocks

    base, family = families.build_empty(loaded.module.config)
    weights = block_weights(base, family)
    return [sum(weights[a:b]) for a, b in plan_blocks(weights, cfg.model.shards)]


def _forward_tokens(cfg: RunConfig, probe, tokenizer) -> int:
    """Token positions the forward passes run over: per batch, its rows × its padded length."""
    if tokenizer is None or probe.texts is None:
        return len(probe)
    total = 0
    for batch in probe.batches(cfg.probe.batch_size):
        lengths = [len(ids) for ids in tokenizer(list(batch["text"]), truncation=True,
                                                 max_length=cfg.probe.max_tokens)["input_ids"]]
        total += len(lengths) * max(lengths)
    return total


def size_run(cfg: RunConfig, rates: dict | None = None, calibrate_here: bool = True) -> RunSize:
    """Size a run without running it (nor reading a weight).

    Parameters
    ----------
    cfg : RunConfig
    rates : dict, optional
        ``forward_flops`` and/or ``gw_pair_s`` (see ``RATE_NAMES``) measured where the run will
        go; the others come from :func:`calibrate`.
    calibrate_here : bool
        Measure the rates not given on this machine (:func:`calibrate`); without it, a missing
        rate leaves the times out.

    Returns
    -------
    RunSize

    Raises
    ------
    GwrayInputError
        What a run would refuse before extraction: missing model, checkpoint or probe, a bad
        layer selection, fewer than 2 layers, ``graph.k`` above the layer count, unknown rates.
    """
    from gwray.preflight import check_inputs
    from gwray.preflight import check_layer_count
    from gwray.scheduler.plan import plan_pairs

    unknown = set(rates or {}) - set(RATE_NAMES)
    if unknown:
        raise GwrayInputError(f"rate {sorted(unknown)[0]!r}: expected one of {', '.join(RATE_NAMES)}")
    checkpoints, probe = check_inputs(cfg)
    layers, dims, first, seen = {}, {}, None, {}
    for ckpt, path in checkpoints:
        arch = _architecture(cfg, path)  # a sweep's checkpoints share one: it is sized once
        if arch is None or arch not in seen:
            seen[arch] = _layers_and_dims(cfg, path, probe)
        layers[ckpt], dims[ckpt], loaded = seen[arch]
        check_layer_count(cfg, ckpt, layers[ckpt])
        first = first or (path, loaded)  # checkpoints of one training run share their shapes
    path, loaded = first
    pooling = cfg.layers.pooling
    per_sample = int(pooling.split(":")[1]) if pooling.startswith("tokens:") else 1
    n = len(probe)
    rows = n * per_sample
    plan = plan_pairs(layers, cfg.compare.cross)
    within = plan.within_pairs
    n_layers = sum(len(v) for v in layers.values())
    storage = cfg.layers.storage_dtype
    act_bytes = sum(_activation_bytes(d, rows, cfg.probe.batch_size * per_sample, storage) for d in dims.values())
    cost_bytes = n_layers * rows * rows * 8
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[cfg.model.dtype]
    shard_params = _shard_params(cfg, path, loaded)
    hidden_max = max(max(d) for d in dims.values())
    in_flight = 2 * cfg.model.shards if cfg.model.shards > 1 else 1
    # hidden states of the micro-batches in flight, plus one block's temporaries (~4 more), float32
    micro = (in_flight + 4) * cfg.probe.batch_size * cfg.probe.max_tokens * hidden_max * 4
    if cfg.resources.gpus_per_worker > 0:  # the device engine on a call: its costs and work arrays
        worker = cost_bytes + min(cfg.resources.gpu_batch_pairs, len(plan)) * _DEVICE_BYTES * rows * rows
    else:
        worker = min(2 << 30, cost_bytes) + _SOLVER_ARRAYS * rows * rows * 8  # cache cap of the workers
    size = RunSize(layers, dims, cfg.layers.select != "all" or loaded.kind != "hf", n, per_sample, within,
                   len(plan) - within, act_bytes, cost_bytes,
                   sum(p.numel() for p in loaded.module.parameters()) * itemsize,
                   _forward_params(loaded), _index_bytes(path or cfg.model.path) if loaded.kind == "hf" else None,
                   [p * itemsize + micro for p in shard_params], worker)
    size.pairs_bytes, size.matrix_bytes = _output_bytes(cfg, plan, rows)
    per_file = cfg.resources.pair_file_rows
    size.pair_files = len(plan) // per_file + 1 if per_file else None  # full files and the rest
    given = dict(rates or {})
    longest = max(len(v) for v in layers.values())
    needed = [name for name in RATE_NAMES if name != "gpu_pair_s" or cfg.resources.gpus_per_worker > 0]
    missing = [name for name in needed if name not in given]
    measured = calibrate(missing, rows, longest, cfg) if calibrate_here else {}
    how = {"gpu_pair_s": GPU_RATE_SOURCE}
    size.rates = {name: (given[name], "given") if name in given else (measured[name], how.get(name, "calibrated"))
                  for name in needed if name in given or name in measured}
    if len(size.rates) == len(needed):
        size.seconds = _stage_seconds(cfg, size, _forward_tokens(cfg, probe, loaded.tokenizer),
                                      {k: v for k, (v, _) in size.rates.items()})
    return size


def _stage_seconds(cfg: RunConfig, size: RunSize, tokens: int, rates: dict) -> dict:
    """Seconds per stage: forward passes at 2 FLOPs per parameter and token (shards and model
    actors run in parallel), the pairs stage as :func:`pairs_seconds`, stability resamples as
    within pairs at ``fraction * n``, the report as its figures (3 per full checkpoint section,
    the timeline, the cross-checkpoint matrices it draws)."""
    res = cfg.resources
    replicas = cfg.model.shards if cfg.model.shards > 1 else res.extract_actors
    n_ckpt, rows = len(size.layers), size.n_samples * size.rows_per_sample
    extract = n_ckpt * 2 * size.forward_params * tokens / rates["forward_flops"] / replicas
    pair = rates["gw_pair_s"]  # the serial solver's: CPU workers, and the resamples below
    pairs = pairs_seconds(cfg, size, res.workers)
    sub = cfg.stability.fraction ** 3  # a resample solves the within pairs at fraction * n
    groups = 0.0  # resamples run in process, one checkpoint after another
    for names in size.layers.values():
        L = len(names)
        resamples = resamples_for(cfg.stability.resamples, L, rows, cfg.stability.fraction)
        groups += resamples * L * (L - 1) / 2 * pair * sub
    from gwray.report.build import MAX_CROSS, MAX_SECTIONS

    sections = n_ckpt if n_ckpt <= MAX_SECTIONS else 1  # beyond, the last checkpoint's alone
    figures = 3 * sections + (n_ckpt > 1) + (min(MAX_CROSS, n_ckpt - 1) if size.pairs_cross else 0)
    return {"activations": extract, "pairs": pairs, "communities": groups, "report": figures * rates["figure_s"]}
