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
COMMANDS = ["run", "compare", "report", "demo", "plan"]


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


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load, extraction or Ray start fails the test: the check must come before them."""
    import gwray.activations.extract
    import gwray.pipeline

    def forbidden(*a, **k):
        raise AssertionError("an expensive stage started")

    monkeypatch.setattr(gwray.activations.extract, "extract", forbidden)
    monkeypatch.setattr(gwray.activations.extract, "BatchExtractor", forbidden)
    monkeypatch.setattr(gwray.pipeline, "_ensure_ray", forbidden)


def _read_only_dir(tmp_path) -> Path:
    """A folder this process cannot write: chmod 555 as a user, a read-only filesystem as root."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        return ro
    for path in (Path("/proc/sys"), Path("/sys")):
        if path.is_dir() and not os.access(path, os.W_OK):
            return path
    pytest.skip("running as root without a read-only filesystem to write to")


@pytest.mark.parametrize("where", ["file", "below_file", "read_only"])
def test_bad_output_location_is_exit_2_before_the_model_loads(tmp_path, capsys, where):
    afile = tmp_path / "a_file"
    afile.write_text("mine")
    out = {"file": afile, "below_file": afile / "run",
           "read_only": _read_only_dir(tmp_path) / "gwray-run" if where == "read_only" else None}[where]
    cfg = _write(tmp_path, {"model": {"path": "/no/such/model"}})  # checked after the output: not named
    code, err = _run(["run", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"gwray: error: run directory {out}:")
    assert ("not writable" if where == "read_only" else "is a file") in err
    assert afile.read_text() == "mine" and (where == "file" or not Path(out).exists())


@pytest.mark.parametrize("overrides, needle", [
    (["graph.k=99"], "config key graph.k: 99 groups, but checkpoint main has 7 layers"),
    (["layers.select=[embeddings]"], "config key layers.select: selects 1 layer(s) of checkpoint main"),
    (["layers.select=[nothing.like.this*]"], "layer 'nothing.like.this*': no such module"),
])
def test_layer_count_checked_before_extraction(minilm_dir, tmp_path, capsys, no_model_load, overrides, needle):
    cfg, out = _write(tmp_path, {"model": {"path": "minilm"}}), tmp_path / "o"
    argv = ["run", str(cfg), "-q", "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    code, err = _run(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_config_file_errors_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _run(["run", str(tmp_path), "--out", str(out)], capsys)
    assert code == 2 and err == f"gwray: error: config file {tmp_path}: is a directory, not a YAML file"
    (tmp_path / "empty.yaml").write_text("")
    code, err = _run(["run", str(tmp_path / "empty.yaml"), "--out", str(out)], capsys)
    assert code == 2 and "empty.yaml: empty" in err
    (tmp_path / "bad.yaml").write_text("name: x\nprobe: {n_samples: 3\n")
    code, err = _run(["run", str(tmp_path / "bad.yaml"), "--out", str(out)], capsys)
    assert code == 2 and "bad.yaml line 3, column 1: invalid YAML" in err
    code, err = _run(["run", str(_write(tmp_path, {"grph": {"k": 2}})), "--out", str(out)], capsys)
    assert code == 2 and err.endswith("config key grph: unknown key (did you mean graph?)")
    assert not out.exists()


def test_another_models_run_is_not_replaced_without_force(minilm_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "o"
    out.mkdir()
    theirs = load_config({"name": "x", "model": {"path": "/models/theirs"}})
    info = {"name": "x", "config": theirs.model_dump(mode="json"), "stages": {}, "layers": {},
            "checkpoints": [{"id": "main", "path": None, "step": None}]}
    (out / "run.json").write_text(__import__("json").dumps(info))
    (out / "gw_matrix.npy").write_bytes(b"their results")
    for cmd in (["run", str(_write(tmp_path, {"name": "x"}))], ["demo"]):
        code, err = _run(cmd + ["--out", str(out)], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"run directory {out}: holds the run of /models/theirs on probe builtin:english" in err
        assert "--force" in err
    assert (out / "gw_matrix.npy").read_bytes() == b"their results"


def test_quiet_successful_run_prints_nothing_on_stderr(tiny_hf_model, tmp_path):
    """A whole run in a fresh process with -q: transformers' loading bar, Ray's INFO/WARNING lines
    and its token-auth notice included, nothing reaches stderr; stdout still says where things are."""
    model = tiny_hf_model("gpt2", layers=2, hidden=32)
    cfg = _write(tmp_path, {"name": "q", "model": {"path": str(model)},
                            "probe": {"n_samples": 12, "max_tokens": 8}, "resources": {"workers": 1}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRANSFORMERS_", "HF_HUB_DISABLE"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gwray.cli", "run", str(cfg), "-q", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"run directory: {out}" in proc.stdout and (out / "report.html").exists()
