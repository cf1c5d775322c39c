import pytest

from gwray.config import RunConfig, load_config, parse_overrides
from gwray.errors import GwrayInputError


def test_three_line_config_gets_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel:\n  path: minilm\n")
    cfg = load_config(p)
    assert cfg.gw.starts == ["identity", "mixed", "product"] and cfg.costs.normalize == "mean"
    assert cfg.probe.n_samples == 1024 and cfg.graph.k == "auto"


@pytest.mark.parametrize("data, key", [
    ({"gw": {"max_itr": 3}}, "gw.max_itr"),
    ({"bogus": 1}, "bogus"),
    ({"gw": {"max_iter": 0}}, "gw.max_iter"),
    ({"layers": {"pooling": "median"}}, "layers.pooling"),
    ({"costs": {"metric": "manhattan"}}, "costs.metric"),
    ({"graph": {"k": 0}}, "graph.k"),
    ({"model": {"factory": "nocolon"}}, "model.factory"),
])
def test_bad_key_or_value_is_named(data, key):
    with pytest.raises(GwrayInputError, match=rf"^config key {key}:"):
        load_config(data)


def test_overrides_parse_yaml_scalars_and_merge():
    cfg = load_config({"gw": {"max_iter": 5, "tol": 1e-3}}, ["gw.max_iter=50", "graph.k=3", "model.path=/m"])
    assert cfg.gw.max_iter == 50 and cfg.gw.tol == 1e-3 and cfg.graph.k == 3 and cfg.model.path == "/m"
    with pytest.raises(GwrayInputError, match="override 'gw.max_iter'"):
        parse_overrides(["gw.max_iter"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(GwrayInputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(GwrayInputError, match="must be a mapping"):
        load_config(bad)


def test_hash_depends_only_on_named_sections():
    a, b = RunConfig(), load_config({"graph": {"method": "louvain"}})
    assert a.hash("model", "probe") == b.hash("model", "probe")
    assert a.hash() != b.hash()
