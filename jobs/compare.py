"""Ray job entrypoint: compare the checkpoints of a config (``model.checkpoints``, 2 or more).

Submitted by a KubeRay RayJob (k8s/) or ``ray job submit -- python jobs/compare.py CONFIG``::

    python jobs/compare.py configs/checkpoints.yaml --out s3://bucket/runs/ckpts

Same arguments and exit codes as jobs/analyze.py; a config with fewer than two checkpoints is an
input error (exit 2).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analyze import main as _analyze  # noqa: E402  (jobs/ is a folder of scripts, not a package)


def main(argv=None) -> int:
    """Parse ``CONFIG [--out DIR] [--set KEY=VALUE ...]``, attach to Ray, run the comparison."""
    return _analyze(argv, min_checkpoints=2, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
