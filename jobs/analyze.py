"""Ray job entrypoint: analyse one model with a config, on the cluster this job runs on.

Submitted by a KubeRay RayJob (k8s/) or ``ray job submit -- python jobs/analyze.py CONFIG``::

    python jobs/analyze.py configs/minilm.yaml --out s3://bucket/runs/minilm --set probe.n_samples=2048

It attaches to the running cluster (``RAY_ADDRESS``, else ``auto``) and calls
:func:`gwray.pipeline.run`; exit codes are those of the ``gwray`` command.
"""
from __future__ import annotations

import argparse
import os
import sys

from gwray.cli import add_run_arguments, guarded


def main(argv=None, min_checkpoints: int = 1, description: str = __doc__) -> int:
    """Parse ``CONFIG [--out DIR] [--set KEY=VALUE ...]``, attach to Ray, run the pipeline."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    add_run_arguments(parser)
    args = parser.parse_args(argv)

    def job() -> None:
        import ray

        from gwray.config import load_config
        from gwray.pipeline import run
        from gwray.preflight import check_inputs

        cfg = load_config(args.config, args.overrides)
        check_inputs(cfg, min_checkpoints)  # bad input fails here, before reaching the cluster
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
        result = run(cfg, out=args.out, progress=not args.quiet, min_checkpoints=min_checkpoints,
                     force=args.force)
        print(f"run directory: {result.out}\nreport: {result.report}")

    return guarded(job)


if __name__ == "__main__":
    sys.exit(main())
