"""The ``gwray`` command: ``run``, ``compare``, ``report``, ``demo``, ``prune`` and ``plan``.

Exit codes: 0 on success, 2 on bad input (:class:`~gwray.errors.GwrayInputError`; one line on
stderr that names the thing at fault), 1 on an internal failure (a short message; set
``GWRAY_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from gwray.errors import GwrayInputError

#: The embedded demo: the packaged all-MiniLM-L6-v2 on the built-in English probe set. n = 512
#: keeps the 21 layer pairs to well under a minute of GW on 2 cores. configs/demo.yaml holds the same
#: keys (a test checks that they agree) so that the demo can be rerun and edited as a file.
DEMO_CONFIG = {
    "name": "demo",
    "output": "runs/demo",
    "model": {"source": "hf", "path": "minilm"},
    "probe": {"source": "builtin:english", "n_samples": 512, "max_tokens": 64},
    "layers": {"select": "blocks", "pooling": "mean"},
    "resources": {"workers": 2, "cpus_per_worker": 1},
    "graph": {"method": "contiguous", "k": "auto"},
}
#: The demo's second net: a small residual MLP built with two regimes of layers
#: (:func:`gwray.models.toy.planted_net`), on its packaged probe of 256 inputs. Its structure is
#: found on every seed (docs/results.md), so a first run shows what a finding looks like next to
#: MiniLM's "no significant structure".
PLANTED_DEMO_CONFIG = {
    "name": "demo-planted",
    "output": "runs/demo-planted",
    "model": {"source": "factory", "factory": "gwray.models.toy:planted_net"},
    "probe": {"source": str(Path(__file__).resolve().parent / "data" / "planted_probe.npy"), "n_samples": 256},
    "layers": {"select": "blocks", "pooling": "flatten"},
    "resources": {"workers": 2, "cpus_per_worker": 1},
    "graph": {"method": "contiguous", "k": "auto"},
}
DEMOS = {"minilm": DEMO_CONFIG, "planted": PLANTED_DEMO_CONFIG}

_EPILOG = "exit codes: 0 success, 2 bad input (one-line message), 1 internal failure"


def _error_line(exc: BaseException) -> str:
    """The first line of an exception's message (the cause's, for an error raised inside Ray)."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def guarded(fn: Callable[[], object]) -> int:
    """Call ``fn`` and turn its outcome into an exit code (0, 2 on bad input, 1 otherwise).

    Parameters
    ----------
    fn : callable
        Does the command's work; its return value is ignored.

    Returns
    -------
    int
        The process exit code.
    """
    try:
        fn()
    except GwrayInputError as exc:
        print(f"gwray: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gwray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        cause = getattr(exc, "cause", None)
        if isinstance(cause, GwrayInputError):
            print(f"gwray: error: {_error_line(cause)}", file=sys.stderr)
            return 2
        if os.environ.get("GWRAY_DEBUG"):
            raise
        print(f"gwray: internal error: {type(exc).__name__}: {_error_line(exc)} "
              "(GWRAY_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


def add_run_arguments(parser: argparse.ArgumentParser, config: bool = True) -> None:
    """The arguments shared by ``gwray run``/``compare``/``demo`` and the Ray job entrypoints."""
    if config:
        parser.add_argument("config", help="run config (YAML); see README 'Config reference'")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory or URI (default: the config's `output`, else runs/NAME)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override one config key, e.g. --set probe.n_samples=256 (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--force", action="store_true",
                        help="replace a run of another model or probe found in the run directory")
    parser.add_argument("--json", action="store_true",
                        help="print the summary of what was found as JSON (stdout)")


def _print_result(result, as_json: bool = False) -> None:
    """stdout: per checkpoint the groups found (p-value, boundary confidences), run dir, report."""
    from gwray.report.summary import format_summary, run_summary

    print(format_summary(run_summary(result), as_json=as_json))


def _cmd_run(args, require_checkpoints: int = 1) -> None:
    from gwray.pipeline import run

    result = run(args.config, out=args.out, overrides=args.overrides, progress=not args.quiet,
                 min_checkpoints=require_checkpoints, force=args.force)
    _print_result(result, args.json)


def _cmd_report(args) -> None:
    from gwray.pipeline import load_run
    from gwray.report import build_report

    load_run(args.out_dir)  # a one-line error when OUT is not a finished run
    print(f"report: {build_report(args.out_dir)}")


def _cmd_demo(args) -> None:
    """Both demos by default (MiniLM into --out or runs/demo, the planted net beside it with
    ``-planted`` appended), or the one named."""
    import json

    from gwray.config import load_config, parse_overrides
    from gwray.pipeline import run
    from gwray.report.summary import format_summary, run_summary

    names = [args.name] if args.name else list(DEMOS)
    overrides = parse_overrides(args.overrides)
    cfgs = [load_config(DEMOS[n], overrides) for n in names]  # every config checked before any run
    summaries = []
    for name, cfg in zip(names, cfgs):
        out = args.out if args.out is None or args.name or name == "minilm" else f"{args.out.rstrip('/')}-planted"
        summaries.append(run_summary(run(cfg, out=out, progress=not args.quiet, force=args.force)))
        if not args.json:
            print(format_summary(summaries[-1]))
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        print("open the reports in a browser; `gwray report DIR` rebuilds one from its run directory")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gwray`` command (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="gwray", epilog=_EPILOG,
        description="Find sub-networks inside a neural network: Gromov-Wasserstein distances "
                    "between layers, fanned out on Ray.")
    from gwray import __version__

    parser.add_argument("--version", action="version", version=f"gwray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", epilog=_EPILOG, help="run the whole pipeline for one config",
                       description="Extract activations, solve GW for every layer pair, find groups "
                                   "and write the report; finished stages are reused.")
    add_run_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", epilog=_EPILOG, help="run over several checkpoints and compare",
                       description="Like `run`, for a config whose model.checkpoints names two or "
                                   "more checkpoints: within and cross-checkpoint matrices, how "
                                   "groups move, timeline.png.")
    add_run_arguments(p)
    p.set_defaults(func=lambda a: _cmd_run(a, require_checkpoints=2))

    p = sub.add_parser("report", epilog=_EPILOG, help="rebuild the report of a finished run",
                       description="Rebuild heatmap.png, report.html (and timeline.png) from a run "
                                   "directory alone.")
    p.add_argument("out_dir", metavar="OUT", help="a run directory written by `gwray run`")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", epilog=_EPILOG, help="MiniLM and a net with planted structure, side by side",
                       description="Run all-MiniLM-L6-v2 (shipped as a package) on the built-in "
                                   "English probe set, then a small net built with two regimes of "
                                   "layers, on an embedded local Ray: one answer without and one with "
                                   "sub-network structure; a few minutes on 2 cores. Prints where the "
                                   "reports are (--out DIR: MiniLM in DIR, the planted net in DIR-planted).")
    p.add_argument("name", nargs="?", choices=list(DEMOS), default=None, help="run only this demo")
    add_run_arguments(p, config=False)
    p.set_defaults(func=_cmd_demo)

    from gwray.prune.command import add_parser as add_prune_parser

    add_prune_parser(sub, _EPILOG)
    from gwray.plan_command import add_parser as add_plan_parser

    add_plan_parser(sub, _EPILOG)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gwray`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code (also passed to ``sys.exit`` by the console script).
    """
    args = build_parser().parse_args(argv)
    return guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
