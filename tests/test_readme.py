"""The README's two commands, from a fresh clone in a clean venv.

One slow test: clone the repository, build the venv exactly as `make demo` / `make test` do
(`make venv`: a new venv, pip, the CPU torch, then `pip install -e .[test]`), then check what the
two commands run — `gwray demo` (with a small probe so that it stays within the test budget) and
pytest — inside that venv. pip resolves from the machine's configured indexes and wheel caches
(PIP_FIND_LINKS, e.g. the local torch wheel), so no wheel is built twice when they hold it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sh(args, cwd, timeout, env=None):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_readme_two_commands_from_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None or not (REPO / ".git").exists():
        pytest.skip("needs git, make and a git checkout")
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^make demo\b", section, re.M) and re.search(r"^make test\b", section, re.M)

    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(REPO), str(clone)], tmp_path, 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "RAY_"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0")
    _sh(["make", "venv"], clone, 900, env)
    bin_ = clone / ".venv" / "bin"

    # `make demo` = `make venv` + `gwray demo`: check the recipe, then run it with a small probe.
    recipe = _sh(["make", "-n", "demo"], clone, 60, env).stdout
    assert ".venv/bin/gwray demo" in recipe
    assert "usage: gwray" in _sh([bin_ / "gwray", "--help"], clone, 120, env).stdout
    demo = _sh([bin_ / "gwray", "demo", "--set", "probe.n_samples=48", "--set", "probe.max_tokens=16",
                "--quiet"], clone, 600, env)
    report = clone / "runs" / "demo" / "report.html"
    assert f"report: {report}" in demo.stdout and report.stat().st_size > 10_000

    # `make test` = `make venv` + `python -m pytest -q`: the same runner on a quick module.
    assert ".venv/bin/python -m pytest -q" in _sh(["make", "-n", "test"], clone, 60, env).stdout
    out = _sh([bin_ / "python", "-m", "pytest", "-q", "tests/test_config.py"], clone, 300, env).stdout
    assert re.search(r"\d+ passed", out)
