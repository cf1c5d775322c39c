import pytest

from gwray.config import RunConfig, load_config, parse_overrides
from gwray.errors import GwrayInputError


def test_three_line_config_gets_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel:\n  path: minilm\n")
    cfg = load_config(p)
    assert cfg.gw.starts == ["identity", "mixed", "product", "entropic", "random:auto"]
    assert cfg.costs.normalize == "mean"
    assert cfg.probe.n_samples is None and cfg.graph.k == "auto"  # None: whole probe, at most 1024


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
    with pytest.raises(GwrayInputError, match=rf"^config file {tmp_path}: is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize("text, where", [
    ("name: x\nmodel:\n  path: [minilm\n", "line 4, column 1"),        # unclosed flow sequence
    ("name: x\ngw:\n  max_iter: 5\n   tol: 1\n", "line 4, column 7"),  # bad indentation
    ("name: x\n\tgw: 1\n", "line 2, column 1"),                         # a tab
])
def test_invalid_yaml_names_line_and_column(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(GwrayInputError, match=rf"^config file {path} {where}: invalid YAML \("):
        load_config(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_config_file_is_an_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(GwrayInputError, match=rf"^config file {path}: empty"):
        load_config(path)


@pytest.mark.parametrize("data, line", [
    ({"gw": {"max_itr": 3}}, "config key gw.max_itr: unknown key (did you mean gw.max_iter?)"),
    ({"modle": {"path": "x"}}, "config key modle: unknown key (did you mean model?)"),
    ({"probe": {"n_sample": 3}}, "config key probe.n_sample: unknown key (did you mean probe.n_samples?)"),
    ({"resources": {"wrokers": 3}}, "config key resources.wrokers: unknown key (did you mean resources.workers?)"),
    ({"gw": {"zzz": 3}}, "config key gw.zzz: unknown key"),  # nothing close: no guess
])
def test_unknown_key_suggests_the_closest(data, line):
    with pytest.raises(GwrayInputError) as err:
        load_config(data)
    assert str(err.value) == line


def test_hash_depends_only_on_named_sections():
    a, b = RunConfig(), load_config({"graph": {"method": "louvain"}})
    assert a.hash("model", "probe") == b.hash("model", "probe")
    assert a.hash() != b.hash()
