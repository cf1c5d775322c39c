"""End to end through every stage: run directory contents, resume, config changes, checkpoints."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from gwray.errors import GwrayInputError
from gwray.pipeline import load_run, run
from gwray.preflight import resolve_checkpoints
from gwray.recovery import MADE_WITH
from gwray.config import load_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

SMALL = {"probe": {"n_samples": 24, "max_tokens": 12}, "resources": {"workers": 2, "batch_pairs": 4}}


def _cfg(model_dir, **extra):
    cfg = {"name": "t", "model": {"source": "hf", "path": str(model_dir)}, **SMALL}
    cfg.update(extra)
    return cfg


def _files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def _mtimes(out, sub):
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in _files(out) if f.startswith(sub)}


@pytest.fixture(scope="module")
def tiny_run(ray_local, tiny_hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = run(_cfg(tiny_hf_model("gpt2", layers=4, hidden=32)), out=out, progress=False)
    return out, result


def test_run_directory_holds_every_design_file(tiny_run):
    out, result = tiny_run
    files = _files(out)
    for name in ("run.json", "gw_matrix.parquet", "gw_matrix.npy", "communities.json",
                 "heatmap.png", "report.html"):
        assert name in files
    assert any(f.startswith("pairs/") and f.endswith(".parquet") for f in files)
    assert any(f.startswith("activations/checkpoint=main/") and f.endswith(".parquet") for f in files)
    hidden = [f for f in files if os.path.basename(f).startswith((".", "_"))]
    assert hidden == [f"pairs/{MADE_WITH}"], "temporary files left"  # and the pairs' settings record
    info = result.config.model_dump()
    assert info["probe"]["n_samples"] == 24
    L = len(result.layers["main"])
    assert L == 5 and result.matrix.shape == (L, L) and result.pairs.num_rows == L * (L - 1) // 2
    assert sum(len(g) for g in result.groups["main"]) == L
    assert all(v == "ran" for v in result.stages.values())


def test_load_run_matches_pairwise_gw_on_stored_activations(tiny_run):
    from gwray.activations.store import ActivationStore
    from gwray.gw.pairwise import pairwise_gw

    out, result = tiny_run
    back = load_run(out)
    assert back.layers == result.layers and back.stages == {}
    np.testing.assert_array_equal(back.matrix, result.matrix)
    np.testing.assert_array_equal(np.load(out / "gw_matrix.npy"), back.matrix)
    store = ActivationStore(out)
    layers = [store.read_layer("main", name) for name in back.layers["main"]]
    cfg = back.config
    ref = pairwise_gw(layers, metric=cfg.costs.metric, normalize=cfg.costs.normalize, aligned=True,
                      starts=tuple(cfg.gw.starts), max_iter=cfg.gw.max_iter, tol=cfg.gw.tol)
    np.testing.assert_allclose(back.matrix, np.asarray(ref), rtol=1e-6, atol=1e-10)
    # the per-pair quality signal is stored in pairs/ and read back with the records
    names = back.layers["main"]
    stored = {(r["layer_a"], r["layer_b"]): r["runner_up_gap"] for r in back.pairs.to_pylist()}
    solved = {(names[r["i"]], names[r["j"]]): r["runner_up_gap"] for r in ref.records}
    assert stored.keys() == solved.keys()
    np.testing.assert_allclose([stored[k] for k in solved], list(solved.values()), rtol=1e-6, atol=1e-9)


def test_rerun_does_no_gw_work(tiny_run, monkeypatch):
    import gwray.activations.extract
    import gwray.scheduler

    out, result = tiny_run
    before = _mtimes(out, "")

    def forbidden(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(gwray.scheduler, "run_pairs", forbidden)
    monkeypatch.setattr(gwray.activations.extract, "extract", forbidden)
    again = run(result.config, out=out, progress=False)
    assert again.stages == {"activations": "skipped", "pairs": "skipped",
                            "communities": "skipped", "report": "skipped"}
    after = _mtimes(out, "")
    assert {f: t for f, t in after.items() if f != "run.json"} == \
           {f: t for f, t in before.items() if f != "run.json"}
    np.testing.assert_array_equal(again.matrix, result.matrix)


def test_changed_config_redoes_what_it_must(tiny_run, tmp_path, capsys):
    src, result = tiny_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    acts = _mtimes(out, "activations/")

    with pytest.raises(GwrayInputError, match=r"^config key graph.k: 99 groups, but checkpoint main has 5"):
        run(result.config, out=out, overrides=["graph.k=99"])  # cached activations: before any pair
    assert _mtimes(out, "pairs/") == _mtimes(src, "pairs/")
    capsys.readouterr()
    grouped = run(result.config, out=out, overrides=["graph.method=greedy", "gw.baselines=[cka, rsa]"])
    assert grouped.stages == {"activations": "skipped", "pairs": "skipped",
                              "communities": "ran", "report": "ran"}
    err = capsys.readouterr().err  # every redone stage says why
    assert "communities: graph/stability config and gw.baselines changed, greedy" in err
    assert "report: groups changed" in err
    assert grouped.communities["method"] == "greedy"
    L = len(result.layers["main"])
    assert np.asarray(grouped.communities["baselines"]["main"]["cka"]).shape == (L, L)

    cosine = run(result.config, out=out, overrides=["costs.metric=cosine"])
    assert cosine.stages == {"activations": "skipped", "pairs": "ran", "communities": "ran",
                             "report": "ran"}
    assert "pairs: costs/gw config changed, solving every pair again" in capsys.readouterr().err
    assert not np.allclose(cosine.matrix, result.matrix)
    assert cosine.pairs.num_rows == result.pairs.num_rows  # the old pairs were dropped
    assert _mtimes(out, "activations/") == acts

    resampled = run(result.config, out=out, overrides=["probe.seed=1"])  # same model and probe
    assert resampled.stages["activations"] == "ran" and resampled.stages["pairs"] == "ran"
    assert "activations of main: model/probe/layers config changed" in capsys.readouterr().err


def test_another_models_run_needs_force_and_force_replaces_it(tiny_run, tiny_hf_model, tmp_path, capsys):
    src, result = tiny_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = _mtimes(out, "")
    other = _cfg(tiny_hf_model("gpt2", layers=3, hidden=32, seed=1))
    with pytest.raises(GwrayInputError, match=rf"^run directory {out}: holds the run of .* pass --force"):
        run(other, out=out, progress=False)
    assert _mtimes(out, "") == before  # nothing touched
    (out / "activations" / "checkpoint=stale").mkdir()  # replaced means: nothing of the old run stays
    replaced = run(other, out=out, force=True)
    assert "--force: deleting" in capsys.readouterr().err
    assert len(replaced.layers["main"]) == 4 and not (out / "activations" / "checkpoint=stale").exists()
    assert load_run(out).config.model.path == other["model"]["path"]


def test_minilm_end_to_end(ray_local, minilm_dir, tmp_path):
    out = tmp_path / "minilm"
    result = run({"name": "m", "model": {"path": "minilm"}, **SMALL}, out=out, progress=False)
    assert len(result.layers["main"]) == 7  # embeddings + 6 blocks
    L = 7
    assert result.matrix.shape == (L, L) and np.allclose(result.matrix, result.matrix.T)
    assert np.all(result.matrix[~np.eye(L, dtype=bool)] > 0)
    for name in ("run.json", "communities.json", "heatmap.png", "report.html", "gw_matrix.npy"):
        assert (out / name).exists()


def test_compare_three_checkpoints(ray_local, tiny_hf_model, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, seed in ((1000, 2), (200, 0), (30, 1)):  # name order ≠ step order on purpose
        os.symlink(tiny_hf_model("gpt2", layers=3, hidden=32, seed=seed), ckpts / f"checkpoint-{step}")
    cfg = _cfg("unused", model={"source": "hf", "path": None, "checkpoints": str(ckpts / "checkpoint-*")})
    assert [c for c, _ in resolve_checkpoints(load_config(cfg))] == \
           ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    out, cfg_file = tmp_path / "cmp", tmp_path / "cmp.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    # through the Ray job entrypoint (it uses the Ray that is already up, as on a cluster)
    spec = importlib.util.spec_from_file_location("compare_job", REPO / "jobs" / "compare.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main([str(cfg_file), "--out", str(out), "--quiet"]) == 0
    result = load_run(out)
    assert result.checkpoints == ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    L = 4  # embeddings + 3 blocks
    assert all(result.gw[c].shape == (L, L) for c in result.checkpoints)
    assert sorted(result.cross) == [("checkpoint-200", "checkpoint-1000"), ("checkpoint-30", "checkpoint-200")]
    assert all(m.shape == (L, L) and np.all(m >= 0) for m in result.cross.values())
    assert result.pairs.num_rows == 3 * L * (L - 1) // 2 + 2 * L * L
    assert [m["from"] for m in result.communities["movement"]] == ["checkpoint-30", "checkpoint-200"]
    assert set(result.communities["boundaries"]) == set(result.checkpoints)
    assert (out / "timeline.png").exists() and (out / "report.html").exists()


def test_failed_first_run_leaves_nothing(ray_local, tiny_hf_model, tmp_path, monkeypatch):
    import gwray.activations.extract

    def half_then_fail(cfg, out, checkpoint, **kw):
        part = out.child("activations", f"checkpoint={checkpoint}", "layer=0", "part-0.parquet")
        part.write_bytes(b"half")
        raise GwrayInputError(f"layer 0 of {checkpoint}: NaN in sample 3")

    monkeypatch.setattr(gwray.activations.extract, "extract", half_then_fail)
    out = tmp_path / "fresh"
    with pytest.raises(GwrayInputError, match="NaN in sample 3"):
        run(_cfg(tiny_hf_model("gpt2", layers=4, hidden=32)), out=out, progress=False)
    assert not out.exists()
    with pytest.raises(GwrayInputError, match="no/such/model"):
        run(_cfg("/no/such/model"), out=out, progress=False)
    assert not out.exists()


def test_models_of_different_depths_side_by_side(ray_local, tmp_path):
    """Two toy models (2 and 4 blocks, widths 16 and 24) as the run's checkpoints: each its own
    matrix and groups, a rectangular cross matrix, per-model .npy files, no stacked .npy, the
    layer correspondence in the report, and load_run by id (``matrix`` refuses to pick one)."""
    from gwray.models.toy import build_model, default_meta, save_toy, write_probe

    dirs = []
    for name, depth, width in (("small", 2, 16), ("big", 4, 24)):
        meta = default_meta("digits", depth=depth, width=width, hidden=32)
        dirs.append(str(save_toy(build_model(meta), meta, tmp_path / name)))
    probe = write_probe(dirs[0], tmp_path / "probe.npy", n=24)
    out = tmp_path / "run"
    (out / "gw_matrix.npy").parent.mkdir()
    np.save(out / "gw_matrix.npy", np.zeros((2, 3, 3)))  # stale: an earlier run of equal depths
    cfg = {"name": "models", "model": {"source": "toy", "path": None, "checkpoints": dirs},
           "probe": {"source": str(probe), "n_samples": 24}, "layers": {"pooling": "flatten"},
           "compare": {"cross": "consecutive"}, "resources": {"workers": 2, "batch_pairs": 4}}
    result = run(cfg, out=out, progress=False)
    back = load_run(out)
    assert back.checkpoints == ["small", "big"]  # listed order: the names carry no step
    assert back.gw["small"].shape == (3, 3) and back.gw["big"].shape == (5, 5)
    assert back.cross[("small", "big")].shape == (3, 5)
    assert set(back.groups) == {"small", "big"}
    assert sum(map(len, back.groups["big"])) == 5
    for c in ("small", "big"):
        np.testing.assert_array_equal(np.load(out / "gw" / f"{c}.npy"), back.gw[c])
    assert not (out / "gw_matrix.npy").exists()
    with pytest.raises(ValueError, match=r"gw\[id\]"):
        back.matrix
    corr = back.correspondence("small", "big")
    M = back.cross[("small", "big")]
    assert list(corr) == back.layers["small"]
    assert [back.layers["big"].index(v) for v in corr.values()] == list(M.argmin(axis=1))
    html = (out / "report.html").read_text()
    assert "closest layer of big" in html and "cross-checkpoint GW matrix small to big" in html
    assert result.report and back.pairs.num_rows == 3 + 10 + 15
