"""`python jobs/experiments.py --quick`: the results pipeline end to end (tiny sizes, two seeds).

Checks the pipeline of the results, not the numbers: every stage runs, results.json holds every
table's fields, every table of docs/results.md and docs/null_model.md renders from it, the figures
are drawn, and a rerun resumes (no stage is computed twice).
"""
import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _job(name):
    """A module of jobs/ (importable by name, as the stage processes import it)."""
    if str(REPO / "jobs") not in sys.path:
        sys.path.insert(0, str(REPO / "jobs"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert _job("experiments").main(["--quick", "--out", str(out), "--jobs", "2"]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_table_has_its_fields(quick):
    out, results = quick
    s = results["summary"]
    assert set(results["meta"]) >= {"command", "commit", "date", "load_average", "settings", "stage_cpu_s"}
    for setup in ("planted", "digits_mlp", "digits_cnn", "modular_joint", "modular_curriculum", "minilm", "lm"):
        e = s["structure"][setup]
        assert len(e["seeds"]) == 2
        for kind in ("gw", "cka", "rsa", "identity", "gw_shuffled", "gw_wide", "gw_best"):
            g = e["groupings"][kind]
            assert len(g["p"]) == 2 and set(g["verdict"]) >= {"significant", "established"}
            assert 0 <= g["agreement"]["interval"][0] <= g["agreement"]["mean"] + 1e-12
        assert set(e["solver"]) == {"wide", "shuffled", "best"} and e["solver"]["best"]["rel_max"] <= 1e-12
    assert s["structure"]["digits_mlp"]["accuracy"]["test"]["n"] == 2 and "strategies" in s["structure"]
    units = {"digits_mlp": 2, "modular_joint": 2, "lm": 2, "minilm": s["compression"]["minilm"]["n_eval"]}
    for setup, metrics in (("digits_mlp", ("accuracy", "healed")), ("modular_joint", ("accuracy", "healed")),
                           ("lm", ("perplexity", "healed")), ("minilm", ("knn10_kept",))):
        for m in metrics:
            for k, e in s["compression"][setup][m].items():
                assert set(e["rules"]) == {"groups", "gw_io", "cka_groups", "bi", "angular", "random"}
                assert {"groups - gw_io", "groups - cka_groups", "groups - random"} <= set(e["diffs"])
                assert all(d["n"] == units[setup] for d in e["diffs"].values())  # model seeds, or sentences
    assert {"none", "gw group 1", "all blocks"} <= set(s["finetune"]["conditions"])
    assert set(s["null"]) == {"contiguous", "spectral", "greedy", "louvain"}
    assert {"modular_joint", "minilm"} <= set(s["probes"]) and s["selection"]["digits_mlp"]["chosen"] in (0.01, 0.1)


@pytest.mark.slow
def test_doc_tables_render_from_the_json(quick):
    out, results = quick
    render = _job("exp_render")
    blocks = render.blocks(results["meta"], results["summary"])
    missing = [n for n, md in blocks.items() if "(not computed)" in md and n != "demo"]  # --quick skips the demo
    assert not missing
    for doc, names in render.DOCS.items():
        text = (REPO / "docs" / doc).read_text()
        filled = render.fill(text, blocks)
        for name in names:
            assert f"<!-- BEGIN {name} -->\n{blocks[name]}<!-- END {name} -->" in filled
    assert "python jobs/experiments.py --quick" in blocks["structure"]
    for fig in ("pvalues", "planted_matrices", "decodability", "compression"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5_000


@pytest.mark.slow
def test_a_rerun_resumes(quick):
    out, results = quick
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert _job("experiments").main(["--quick", "--out", str(out), "--jobs", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == results["summary"]
