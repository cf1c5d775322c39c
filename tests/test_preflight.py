"""Which run directories a run may reuse: same model and probe (a training run that gained a
checkpoint included), not another model's or probe's run without --force."""
from __future__ import annotations

import json

import pytest

from gwray.config import load_config
from gwray.errors import GwrayInputError
from gwray.preflight import check_run_owner
from gwray.storage import Location

CKPTS = {"source": "hf", "path": None, "checkpoints": "/m/run/checkpoint-*"}


def _ckpts(*steps):
    return [(f"checkpoint-{s}", f"/m/run/checkpoint-{s}") for s in steps]


def _previous(tmp_path, model, ckpts):
    cfg = load_config({"model": model})
    info = {"config": cfg.model_dump(mode="json"), "checkpoints": [{"id": c, "path": p} for c, p in ckpts]}
    (tmp_path / "run.json").write_text(json.dumps(info))
    return Location.parse(tmp_path)


@pytest.mark.parametrize("model, ckpts, changes", [
    ({"path": "/m/a"}, [("main", None)], {"layers": {"pooling": "last"}, "costs": {"metric": "cosine"}}),
    (CKPTS, _ckpts(100, 200), {}),
])
def test_same_model_and_probe_reuse_the_directory(tmp_path, model, ckpts, changes):
    loc = _previous(tmp_path, model, ckpts)
    grown = ckpts + _ckpts(300) if model is CKPTS else ckpts  # a new checkpoint of the same run
    assert check_run_owner(loc, load_config({"model": model, **changes}), grown, force=False) is None


@pytest.mark.parametrize("model, ckpts, new_model, new_ckpts, probe", [
    ({"path": "/m/a"}, [("main", None)], {"path": "/m/b"}, [("main", None)], {}),
    ({"path": "/m/a"}, [("main", None)], {"path": "/m/a"}, [("main", None)], {"source": "/p/other.txt"}),
    (CKPTS, _ckpts(100, 200), CKPTS, [("step-1", "/m/other/step-1")], {}),
    ({"path": "/m/a"}, [("main", None)], CKPTS, _ckpts(100), {}),
])
def test_another_models_or_probes_run_needs_force(tmp_path, model, ckpts, new_model, new_ckpts, probe):
    loc = _previous(tmp_path, model, ckpts)
    cfg = load_config({"model": new_model, "probe": probe})
    with pytest.raises(GwrayInputError, match=rf"^run directory {tmp_path}: holds the run of .*--force"):
        check_run_owner(loc, cfg, new_ckpts, force=False)
    assert check_run_owner(loc, cfg, new_ckpts, force=True)  # described, for the caller to delete
