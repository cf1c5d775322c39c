"""The ``gwray`` command: help everywhere, exit codes, one-line errors, nothing partial in OUT."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gwray import cli
from gwray.config import load_config

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "compare", "report", "demo"]


@pytest.mark.parametrize("argv", [[]] + [[c] for c in COMMANDS])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--help"])
    assert exc.value.code == 0
    assert "usage: gwray" in capsys.readouterr().out


def _run(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _write(tmp_path, data, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("data, needle", [
    ({"gw": {"max_itr": 3}}, "config key gw.max_itr: unknown key"),
    ({"bogus": 1}, "config key bogus: unknown key"),
    ({"probe": {"n_samples": 1}}, "config key probe.n_samples:"),
    ({"costs": {"metric": "manhattan"}}, "config key costs.metric:"),
    ({"model": {"path": "/no/such/model"}}, "/no/such/model"),
    ({"model": {"checkpoints": "/no/such/ckpt-*"}}, "model.checkpoints"),
    ({"probe": {"source": "/no/such/probe.txt"}}, "/no/such/probe.txt"),
])
def test_bad_input_exit_2_one_line_named_and_nothing_written(tmp_path, capsys, data, needle):
    out = tmp_path / "out"
    code, err = _run(["run", str(_write(tmp_path, data)), "--out", str(out)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("gwray: error: ") and needle in err
    assert not out.exists()


def test_missing_config_and_bad_override(tmp_path, capsys):
    code, err = _run(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err == f"gwray: error: config file {tmp_path / 'nope.yaml'}: not found"
    cfg = _write(tmp_path, {"name": "x"})
    code, err = _run(["run", str(cfg), "--set", "gw.max_iter=zero", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("gwray: error: config key gw.max_iter:")
    code, err = _run(["run", str(cfg), "--set", "gw.max_iter", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "override 'gw.max_iter'" in err
    assert not (tmp_path / "o").exists()


def test_compare_needs_two_checkpoints(tmp_path, capsys):
    code, err = _run(["compare", str(_write(tmp_path, {"name": "x"})), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "model.checkpoints" in err and "2 or more" in err
    assert not (tmp_path / "o").exists()


def test_report_of_a_directory_that_is_no_run(tmp_path, capsys):
    code, err = _run(["report", str(tmp_path)], capsys)
    assert code == 2 and "run.json" in err and len(err.splitlines()) == 1


def test_internal_failure_is_exit_1_with_a_short_message(tmp_path, capsys, monkeypatch):
    import gwray.pipeline

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(gwray.pipeline, "run", boom)
    monkeypatch.delenv("GWRAY_DEBUG", raising=False)
    code, err = _run(["run", str(_write(tmp_path, {"name": "x"}))], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert "internal error: RuntimeError: disk on fire" in err


def test_error_raised_inside_ray_keeps_its_one_line():
    from gwray.errors import GwrayInputError

    class Wrapped(Exception):  # what ray.exceptions.RayTaskError looks like to the CLI
        def __init__(self, cause):
            super().__init__("Traceback ...\nmany lines")
            self.cause = cause

    def raise_wrapped():
        raise Wrapped(GwrayInputError("layer blocks.3: NaN in sample 7"))

    assert cli.guarded(raise_wrapped) == 2


def test_demo_config_file_matches_the_embedded_demo():
    assert load_config(REPO / "configs" / "demo.yaml") == load_config(cli.DEMO_CONFIG)


@pytest.mark.parametrize("name", ["demo", "minilm", "checkpoints", "large-llm"])
def test_shipped_configs_validate(name):
    load_config(REPO / "configs" / f"{name}.yaml")


def test_console_process_exit_code_and_job_entrypoint(tmp_path):
    """The real processes: `python -m gwray.cli` and jobs/compare.py exit 2 with one line."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cfg = _write(tmp_path, {"model": {"path": str(tmp_path / "missing")}})
    proc = subprocess.run([sys.executable, "-m", "gwray.cli", "run", str(cfg), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "missing" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "compare.py"), str(cfg)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "model.checkpoints" in proc.stderr
    assert not (tmp_path / "o").exists()
