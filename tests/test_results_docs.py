"""docs/results.md and docs/null_model.md: every table is the rendering of docs/results.json (the
summary `python jobs/experiments.py --all --docs` wrote), with the command and commit that made it."""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_doc_tables_are_generated_from_results_json():
    sys.path.insert(0, str(REPO / "jobs"))
    spec = importlib.util.spec_from_file_location("exp_render", REPO / "jobs" / "exp_render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    results = json.loads((REPO / "docs" / "results.json").read_text())
    assert results["meta"]["command"].startswith("python jobs/experiments.py --all")
    blocks = render.blocks(results["meta"], results["summary"])
    for doc, names in render.DOCS.items():
        text = (REPO / "docs" / doc).read_text()
        assert render.fill(text, blocks) == text, f"docs/{doc}: a table differs from docs/results.json"
        for name in names:
            assert f"<!-- BEGIN {name} -->" in text and "(not computed)" not in blocks[name], (doc, name)
