"""`gwray prune` on a real run directory: written models, the table, prune.json, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gwray.cli import main
from gwray.prune import scores

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny_run(ray_local, tiny_hf_model, tmp_path_factory):
    from gwray.pipeline import run

    model_dir = tiny_hf_model("gpt2", layers=4, hidden=32)
    out = tmp_path_factory.mktemp("prune") / "run"
    cfg = {"name": "t", "model": {"source": "hf", "path": str(model_dir)},
           "probe": {"n_samples": 24, "max_tokens": 12}, "resources": {"workers": 2, "batch_pairs": 4}}
    return run(cfg, out=out, progress=False), model_dir


def _logits(path, texts):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)).logits


def test_drop_zero_writes_the_same_model(tiny_run, tmp_path, capsys):
    result, model_dir = tiny_run
    out = tmp_path / "same"
    assert main(["prune", result.out, "--drop", "0", "--method", "groups", "--eval-samples", "8", "-q",
                 "--out", str(out)]) == 0
    texts = ["A small test sentence.", "Another one, a little longer than the first."]
    assert torch.equal(_logits(out, texts), _logits(model_dir, texts))
    info = json.loads((out / "prune.json").read_text())
    assert info["method"] == "groups" and info["dropped"] == [] and info["n_blocks"] == 4
    assert "| unpruned |" in capsys.readouterr().out


def test_curve_uses_each_rule_and_held_out_text(tiny_run, tmp_path, capsys):
    from gwray.prune.command import prune

    result, _ = tiny_run
    info = prune(result.out, [1, 2], "all", heal_steps=2, seeds=2, n_eval=16, quiet=True)
    table = capsys.readouterr().out
    for row in ("unpruned", "groups", "bi", "angular", "random"):
        assert f"| {row} |" in table
    rows = {(r["method"], r["k"], r["seed"]): r for r in info["perplexities"]}
    D, names = result.matrix, result.layers[result.checkpoints[0]]
    groups = result.groups[result.checkpoints[0]]
    assert rows[("groups", 2, 0)]["dropped"] == sorted(scores.group_order(groups, D, names)[:2])
    assert rows[("bi", 1, 0)]["dropped"] == [int(np.argmin(info["scores"]["bi"]))]
    start = int(np.argmin(info["scores"]["angular"]["2"]))
    assert rows[("angular", 2, 0)]["dropped"] == [start, start + 1]
    assert rows[("random", 2, 1)]["dropped"] == scores.random_choice(4, 2, 1)
    assert all(r["healed"] != r["perplexity"] for r in info["perplexities"])  # healing changed the weights
    assert info["eval"]["texts"] == 16 and info["eval"]["probe_samples_removed"] == 0


def test_eval_file_drops_probe_samples(tiny_run, tmp_path):
    from gwray.activations.probes import load_probe
    from gwray.prune.command import prune

    result, _ = tiny_run
    probe = load_probe(result.config.probe).texts
    path = tmp_path / "eval.txt"
    path.write_text("\n".join(probe[:3] + ["A held-out sentence.", "And a second one here."]) + "\n")
    info = prune(result.out, [1], "bi", eval_source=str(path), quiet=True)
    assert info["eval"]["texts"] == 2 and info["eval"]["probe_samples_removed"] == 3


def _edited_run(result, tmp_path, **model):
    copy = tmp_path / "edited"
    shutil.copytree(result.out, copy)
    info = json.loads((copy / "run.json").read_text())
    info["config"]["model"].update(model)
    if "path" in model:
        for c in info["checkpoints"]:
            c["path"] = model["path"]
    (copy / "run.json").write_text(json.dumps(info))
    return copy


@pytest.mark.parametrize("case", ["too_many", "factory", "unsupported", "empty_eval", "out_exists"])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tiny_run, tiny_hf_model, tmp_path, capsys):
    result, _ = tiny_run
    run_dir, args, expect = result.out, ["--drop", "1"], ""
    if case == "too_many":
        args, expect = ["--drop", "1", "4"], "--drop 4"
    elif case == "factory":
        run_dir, expect = _edited_run(result, tmp_path, source="factory", factory="pkg.mod:fn"), "model.source is 'factory'"
    elif case == "unsupported":
        run_dir = _edited_run(result, tmp_path, path=str(tiny_hf_model("bert", layers=2, hidden=32)))
        expect = "architecture 'bert'"
    elif case == "empty_eval":
        (tmp_path / "empty.txt").write_text("\n\n")
        args, expect = ["--drop", "1", "--eval", str(tmp_path / "empty.txt")], "empty.txt: empty"
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "mine.txt").write_text("keep")
        args, expect = ["--drop", "1", "--method", "bi"], "already exists"
    out = tmp_path / "out"
    existed = out.exists()
    capsys.readouterr()
    assert main(["prune", str(run_dir), *args, "--method", "bi", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert out.exists() == existed and not list(tmp_path.glob(".out.tmp-*"))
    if existed:
        assert (out / "mine.txt").read_text() == "keep"
