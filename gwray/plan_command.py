"""``gwray plan CONFIG``: the command that prints :func:`gwray.sizing.size_run`'s answer."""
from __future__ import annotations

import math

from gwray.config import RunConfig
from gwray.errors import GwrayInputError
from gwray.rates import RATE_NAMES
from gwray.sizing import RunSize, pairs_seconds, size_run


def _human(nbytes: float) -> str:
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    power = min(4, int(math.log(nbytes, 1024)))
    return f"{nbytes / 1024 ** power:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[power - 1]}"


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_size(cfg: RunConfig, size: RunSize, workers: list[int] = ()) -> str:
    """The plan as lines of text (what ``gwray plan`` prints); ``workers``: more worker counts
    to give the pairs stage's time for (besides ``resources.workers``)."""
    out = []
    note = "" if size.exact_layers else " (at most: modules a forward pass never calls are dropped)"
    runs: list[list[str]] = []  # consecutive checkpoints with the same layers are listed once
    for c, names in size.layers.items():
        if runs and names == size.layers[runs[-1][0]]:
            runs[-1].append(c)
        else:
            runs.append([c])
    for run in runs:
        names = size.layers[run[0]]
        what = f"checkpoint {run[0]}" if len(run) == 1 else f"checkpoints {run[0]} … {run[-1]} ({len(run)})"
        out.append(f"{what}: {len(names)} layers{' each' if len(run) > 1 else ''}{note}")
        shown = names if len(names) <= 12 else names[:5] + ["…"] + names[-5:]
        out.append("  " + ", ".join(shown))
    out.append(f"probe: {size.n_samples} samples × {size.rows_per_sample} row(s); "
               f"pairs: {size.pairs_within} within checkpoints, {size.pairs_cross} across "
               f"(compare.cross {cfg.compare.cross})")
    out.append(f"storage: activations {_human(size.activation_bytes)} on disk "
               f"({cfg.layers.storage_dtype}); cost matrices {_human(size.cost_bytes)} "
               "(float64, computed and cached by the GW workers); pair records "
               f"{_human(size.pairs_bytes)} in "
               + (f"{size.pair_files} files" if size.pair_files else "a file per write")
               + f"; GW matrices {_human(size.matrix_bytes)}")
    disk = f", {_human(size.index_bytes)} on disk" if size.index_bytes else ""
    out.append(f"model: {_human(size.weight_bytes)} of weights in {cfg.model.dtype}{disk}")
    peaks = ", ".join(_human(b) for b in size.shard_bytes)
    what = f"{len(size.shard_bytes)} shards" if cfg.model.shards > 1 else "the extraction process"
    out.append(f"peak memory (data, beyond the Python/torch runtime): {what}: {peaks}; per GW worker: "
               f"{_human(size.worker_bytes)} (× {cfg.resources.workers} workers)")
    if size.seconds:
        rates = "; ".join(f"{k} {v:.3g} ({how})" for k, (v, how) in size.rates.items())
        out.append("time (compute only; Ray start-up, model loading and worker start-up come on top): "
                   + ", ".join(f"{k} {_duration(v)}" for k, v in size.seconds.items())
                   + f" — total {_duration(sum(size.seconds.values()))}")
        out.append(f"  rates: {rates}")
        counts = sorted({cfg.resources.workers, *workers})
        out.append("pairs stage on " + ", ".join(f"{w} workers: {_duration(pairs_seconds(cfg, size, w))}"
                                                  for w in counts)
                   + " (the pairs at gw_pair_s shared out, plus orchestration measured by "
                   "bench/sweep_scale.py)")
    return "\n".join(out)


def parse_rates(pairs: list[str]) -> dict:
    """``["forward_flops=2e14", "gw_pair_s=0.05"]`` → ``{name: float}`` (GwrayInputError if bad)."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise GwrayInputError(f"rate {pair!r}: expected NAME=NUMBER") from None
        if not math.isfinite(out[name.strip()]) or out[name.strip()] <= 0:
            raise GwrayInputError(f"rate {pair!r}: must be a positive number")
    return out


def _cmd_plan(args) -> None:
    from gwray.config import load_config

    cfg = load_config(args.config, args.overrides)
    if any(w < 1 for w in args.workers):
        raise GwrayInputError(f"--workers {min(args.workers)}: must be >= 1")
    print(format_size(cfg, size_run(cfg, parse_rates(args.rates)), args.workers))


def add_parser(sub, epilog: str) -> None:
    """``gwray plan CONFIG [--set KEY=VALUE] [--rate NAME=VALUE]`` on the ``gwray`` sub-parsers."""
    p = sub.add_parser("plan", epilog=epilog, help="what a run will capture, store and cost (no weights read)",
                       description="Read the model's config.json and safetensors index (no weights) and "
                                   "print the layers a run captures, its GW pairs, activation, cost-"
                                   "matrix, pair-record and matrix storage, peak memory per shard and per "
                                   "GW worker, and a time per stage (and of the pairs stage on --workers N) "
                                   "from a short calibration on this machine or --rate values.")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config key (repeatable)")
    p.add_argument("--rate", metavar="NAME=VALUE", action="append", default=[], dest="rates",
                   help="a rate measured where the run will go, instead of calibrating here: "
                        + "; ".join(f"{k}: {v}" for k, v in RATE_NAMES.items()))
    p.add_argument("--workers", metavar="N", type=int, action="append", default=[],
                   help="also give the pairs stage's time on N GW workers (repeatable)")
    p.set_defaults(func=_cmd_plan)
