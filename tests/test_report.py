"""gwray.report: build_report on run directories written by hand after DESIGN.md."""
import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gwray import find_subnetworks
from gwray.errors import GwrayInputError
from gwray.graph.stability import StabilityResult
from gwray.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def planted(labels, seed=0):
    lab = np.asarray(labels)
    D = np.where(lab[:, None] == lab[None, :], 0.02, 0.1)
    N = np.random.default_rng(seed).uniform(0, 0.02, D.shape)
    D = D + (N + N.T) / 2
    np.fill_diagonal(D, 0.0)
    return D


def fake_baselines(D):
    """CKA, RSA (similarities, diagonal 1) and identity distortion (a distance) for a GW matrix D."""
    return {"cka": (1 - D / D.max()).tolist(), "rsa": (1 - 2 * D / D.max()).tolist(),
            "identity": (1.5 * D).tolist()}


def make_run(root, checkpoints, method="contiguous", communities=True, stability=False,
             baselines=False, n_null=19):
    """A run dir as the pipeline leaves it: run.json, gw_matrix.parquet, pairs/, communities.json
    (with boundaries, movement and, given baselines=True, baseline matrices).
    checkpoints: list of (id, step, labels)."""
    root.mkdir(parents=True, exist_ok=True)
    layers = {c: [f"blocks.{i}" for i in range(len(lab))] for c, _, lab in checkpoints}
    info = {"name": "handmade", "gwray_version": "0.1.0", "probe_hash": "abc123",
            "checkpoints": [{"id": c, "path": None, "step": s} for c, s, _ in reversed(checkpoints)],
            "layers": layers, "config": {"graph": {"method": method, "k": "auto"}}, "stages": {}}
    (root / "run.json").write_text(json.dumps(info))
    rows, recs, comm = [], [], {"method": "contiguous" if method == "all" else method,
                                "checkpoints": {}, "stability": {}, "baselines": {}}
    for r, (c, _, lab) in enumerate(checkpoints):
        D, names = planted(lab, seed=r), layers[c]
        for i in range(len(names)):
            for j in range(len(names)):
                rows.append({"checkpoint": c, "layer_i": names[i], "layer_j": names[j],
                             "gw": D[i, j], "lower_bound": 0.9 * D[i, j]})
                if i < j:
                    recs.append({"checkpoint_a": c, "layer_a": names[i], "checkpoint_b": c,
                                 "layer_b": names[j], "gw": D[i, j], "lower_bound": 0.9 * D[i, j],
                                 "init": "identity" if (i + j) % 3 else "product",
                                 "iterations": np.int32(5 + i), "marginal_error": 1e-12,
                                 "seconds": 0.01, "n": np.int32(64), "solver": "cg-lap"})
        found = find_subnetworks(D, method=method, names=names, n_null=n_null)
        comm["checkpoints"][c] = (found.to_dict() if method == "all" else
                                  {"methods": {method: found.to_dict()}, "agreement": {}})
        if baselines:
            comm["baselines"][c] = fake_baselines(D)
        if stability:
            L = len(names)
            st = StabilityResult(np.eye(L) * 0.5 + 0.5, np.array([1.0, 0.8]), np.zeros((2, L), int),
                                 np.asarray(lab), 0.8, 51, 0, names)
            comm["stability"][c] = st.to_dict()
    bounds = {c: [names[i] for i in range(1, len(lab)) if lab[i] != lab[i - 1]]
              for (c, _, lab), names in zip(checkpoints, layers.values())}
    comm["boundaries"] = bounds
    comm["movement"] = [{"from": a, "to": b, "added": [n for n in bounds[b] if n not in bounds[a]],
                         "removed": [n for n in bounds[a] if n not in bounds[b]]}
                        for a, b in zip(list(bounds), list(bounds)[1:])]
    pq.write_table(pa.Table.from_pylist(rows), root / "gw_matrix.parquet")
    cross = [{"checkpoint_a": a, "checkpoint_b": b, "layer_i": x, "layer_j": y,
              "gw": 0.01 * abs(i - j), "lower_bound": 0.0}
             for (a, _, la), (b, _, lb) in zip(checkpoints, checkpoints[1:])
             for i, x in enumerate(layers[a]) for j, y in enumerate(layers[b])]
    if cross:
        (root / "cross").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(cross), root / "cross" / "gw_matrix.parquet")
    (root / "pairs").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(recs), root / "pairs" / "part-0.parquet")
    if communities:
        (root / "communities.json").write_text(json.dumps(comm))
    return root, comm


THREE = [("step-100", 100, [0] * 6 + [1] * 6), ("step-200", 200, [0] * 4 + [1] * 4 + [2] * 4),
         ("step-300", 300, [0] * 3 + [1] * 5 + [2] * 4)]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root, comm = make_run(tmp_path_factory.mktemp("multi") / "run", THREE, method="all", stability=True)
    return root, comm, build_report(str(root))


def _imgs(html):
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', html)


def test_files_and_embedded_images(multi):
    root, comm, path = multi
    assert path == root / "report.html"
    for name in ("heatmap.png", "gap.png", "dendrogram.png", "timeline.png"):
        assert (root / name).read_bytes().startswith(PNG), name
    html = path.read_text()
    assert "<img" in html and not re.search(r'src="(?!data:)', html)  # nothing external
    imgs = _imgs(html)
    # per checkpoint heatmap, co-assignment, gap, dendrogram (4 × 3) + timeline + 2 cross matrices
    assert len(imgs) == 15 and all(base64.b64decode(b).startswith(PNG) for b in imgs)


def test_html_lists_every_group_scores_and_settings(multi):
    root, comm, path = multi
    html = path.read_text()
    for c, entry in comm["checkpoints"].items():
        assert f"Checkpoint {c}" in html
        for m, r in entry["methods"].items():
            assert r["k_reason"] in html
            for g in r["groups"]:
                assert f"{g[0]} – {g[-1]}" in html or ", ".join(g) in html
    assert "blocks.0 – blocks.3; blocks.4 – blocks.7; blocks.8 – blocks.11" in html
    for word in ("silhouette", "modularity", "within/between", "adjusted Rand", "mean ARI",
                 "median relative gap", "identity: ", "Run settings", "&quot;graph&quot;",
                 "Layer correspondence across checkpoints"):
        assert word in html, word
    # checkpoints in step order although run.json lists them in reverse
    assert html.index("Checkpoint step-100") < html.index("Checkpoint step-200") < html.index("Checkpoint step-300")


def test_single_checkpoint_without_communities_json(tmp_path):
    root, _ = make_run(tmp_path / "one", [("main", None, [0, 0, 0, 1, 1, 2, 2, 2])],
                       method="louvain", communities=False)
    path = build_report(root)
    html = path.read_text()
    assert not (root / "timeline.png").exists() and not (root / "communities.json").exists()
    assert "computed by the report" in html and "blocks.5 – blocks.7" in html
    assert len(_imgs(html)) == 3


def test_report_of_real_pairwise_gw_output(tmp_path):
    """Matrix, bounds and pair records from pairwise_gw on layers in two regimes → two groups."""
    from gwray.gw.pairwise import pairwise_gw

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4))
    layers = [np.tanh(0.5 * x) @ np.linalg.qr(rng.normal(size=(4, 4)))[0] for _ in range(3)]
    layers += [np.sin(3 * x) * np.abs(x) @ np.linalg.qr(rng.normal(size=(4, 4)))[0] for _ in range(3)]
    res = pairwise_gw(layers)
    root, names = tmp_path / "pw", [f"h{i}" for i in range(6)]
    make_run(root, [("main", None, [0] * 6)], communities=False)
    pq.write_table(pa.Table.from_pylist(
        [{"checkpoint": "main", "layer_i": names[i], "layer_j": names[j], "gw": res.gw[i, j],
          "lower_bound": res.lower_bound[i, j]} for i in range(6) for j in range(6)]), root / "gw_matrix.parquet")
    recs = [{k: v for k, v in r.items() if k not in ("i", "j")} | {
        "checkpoint_a": "main", "layer_a": names[r["i"]], "checkpoint_b": "main", "layer_b": names[r["j"]]}
        for r in res.records]
    pq.write_table(pa.Table.from_pylist(recs), root / "pairs" / "part-0.parquet")
    info = json.loads((root / "run.json").read_text())
    (root / "run.json").write_text(json.dumps(info | {"layers": {"main": names}}))
    html = build_report(root).read_text()
    assert "h0 – h2; h3 – h5" in html and "start that won" in html


def test_noncontiguous_groups_are_flagged(tmp_path):
    root, _ = make_run(tmp_path / "nc", [("main", None, [0, 0, 1, 1, 0, 0, 1, 1])], method="spectral")
    html = build_report(root).read_text()
    assert "not contiguous in depth" in html and "blocks.0, blocks.1, blocks.4, blocks.5" in html


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The same two-checkpoint run built without and with baseline matrices → both reports."""
    base = tmp_path_factory.mktemp("two")
    plain, _ = make_run(base / "plain", THREE[:2])
    withb, comm = make_run(base / "withb", THREE[:2], baselines=True)
    return build_report(plain).read_text(), build_report(withb).read_text(), comm


def test_baselines_beside_gw_one_figure_per_checkpoint(two):
    plain, withb, comm = two
    assert len(_imgs(withb)) == len(_imgs(plain)) + 2  # one more figure per checkpoint
    for c in ("step-100", "step-200"):
        assert f'alt="GW matrix of {c} beside cka, rsa, identity"' in withb
    # baseline figure inside its checkpoint section, right after the heatmap
    sec = withb[withb.index("Checkpoint step-200"):]
    assert sec.index("GW distance heatmap") < sec.index("GW beside the baselines") < sec.index("<h3>Groups")
    for row in ("<td><code>cka</code></td><td>linear CKA (debiased)</td><td>similar</td>",
                "<td><code>rsa</code></td><td>RSA: Spearman of cost matrices</td><td>similar</td>",
                "<td><code>identity</code></td><td>identity-coupling distortion</td><td>distant</td>",
                "<td><code>gw</code></td><td>GW distance</td><td>distant</td>"):
        assert withb.count(row) == 2, row
    pngs = [base64.b64decode(b) for b in _imgs(withb)]
    assert all(p.startswith(PNG) for p in pngs)


def test_without_baselines_nothing_changes(two, tmp_path):
    plain, _, _ = two
    # heatmap, gap, dendrogram per checkpoint + timeline + one cross matrix
    assert len(_imgs(plain)) == 8
    text = re.sub(r'src="data:image/png;base64,[^"]+"', "", plain)  # base64 may spell "CKA"
    assert "baselines" not in text and "CKA" not in text
    root, _ = make_run(tmp_path / "nokey", THREE[:2])
    comm = json.loads((root / "communities.json").read_text())
    del comm["baselines"]  # communities.json from before gw.baselines existed
    (root / "communities.json").write_text(json.dumps(comm))
    assert len(_imgs(build_report(root).read_text())) == 8


def test_only_some_baselines(tmp_path):
    root, comm = make_run(tmp_path / "some", [("main", None, [0] * 4 + [1] * 4)], baselines=True)
    comm["baselines"]["main"].pop("identity")
    (root / "communities.json").write_text(json.dumps(comm))
    html = build_report(root).read_text()
    assert len(_imgs(html)) == 4 and 'beside cka, rsa"' in html and "<code>identity</code>" not in html


def test_movement_table_under_timeline(two):
    plain, _, comm = two
    assert comm["movement"] == [{"from": "step-100", "to": "step-200", "added": ["blocks.4", "blocks.8"],
                                 "removed": ["blocks.6"]}]
    row = "<tr><td>step-100</td><td>step-200</td><td>blocks.4, blocks.8</td><td>blocks.6</td></tr>"
    assert row in plain
    assert plain.index("timeline of group boundaries") < plain.index(row) < plain.index("Layer correspondence")


def _edit_comm(root, change):
    path = root / "communities.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))


def _drop_pair(path, a, b):
    rows = [r for r in pq.read_table(path).to_pylist() if {r["layer_i"], r["layer_j"]} != {a, b}]
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("damage, match", [
    (lambda r: (r / "run.json").unlink(), "no run.json"),
    (lambda r: (r / "gw_matrix.parquet").unlink(), "no gw_matrix.parquet"),
    (lambda r: _drop_pair(r / "gw_matrix.parquet", "blocks.0", "blocks.1"),
     r"gw_matrix.parquet: no gw value for checkpoint 'main' pair \(blocks.0, blocks.1\)"),
    (lambda r: (r / "run.json").write_text(json.dumps(
        json.loads((r / "run.json").read_text()) | {"layers": {"main": ["a", "b", "c", "d"]}})),
     "gw_matrix.parquet: layer 'blocks.0' of checkpoint 'main' is not in run.json"),
    (lambda r: (r / "communities.json").write_text(json.dumps({"method": "louvain", "checkpoints": {}})),
     "communities.json: no 'louvain' groups for checkpoint 'main'"),
    (lambda r: _edit_comm(r, {"baselines": {"main": {"cka": [[1.0, 0.5], [0.5, 1.0]]}}}),
     r"communities.json: baseline 'cka' of checkpoint 'main' has shape \(2, 2\), expected \(4, 4\)"),
    (lambda r: _edit_comm(r, {"baselines": {"main": {"svcca": np.eye(4).tolist()}}}),
     "communities.json: unknown baseline 'svcca' for checkpoint 'main'"),
    (lambda r: _edit_comm(r, {"baselines": {"other": {"cka": np.eye(4).tolist()}}}),
     "communities.json: baselines for checkpoint 'other', which is not in run.json"),
    (lambda r: _edit_comm(r, {"baselines": {"main": {"rsa": "high"}}}),
     "communities.json: baseline 'rsa' of checkpoint 'main' is not a numeric matrix"),
])
def test_bad_run_dirs(tmp_path, damage, match):
    root, _ = make_run(tmp_path / "bad", [("main", None, [0, 0, 1, 1])])
    damage(root)
    with pytest.raises(GwrayInputError, match=match) as e:
        build_report(root)
    assert "\n" not in str(e.value)
    assert not (root / "report.html").exists() and not (root / "heatmap.png").exists()


CHECK_JS = """<script>window.addEventListener('load',()=>{const im=[...document.images];
document.body.setAttribute('data-imgcheck', im.length+':'+im.filter(i=>i.complete&&i.naturalWidth>0).length);});
</script>"""


def test_report_renders_in_headless_chromium(multi, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it as root)")
    root, _, path = multi
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", CHECK_JS + "</body>"))
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-imgcheck="(\d+):(\d+)"', dom.stdout)
    assert m, f"chromium gave no DOM: {dom.stderr[-500:]}"
    assert m.group(1) == m.group(2) == "15", f"broken images: {m.group(0)}"
    shot = tmp_path / "shot.png"
    subprocess.run(base + ["--window-size=1200,2000", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG)


def test_build_report_on_s3(tmp_path, s3_bucket):
    """The same run directory on an S3 endpoint (moto, local): read and written through Location."""
    from gwray.storage import Location

    _, _, fs = s3_bucket
    loc = Location(fs, "gwray-runs/report-run")
    local, _ = make_run(tmp_path / "run", [("main", None, [0] * 4 + [1] * 4)])
    for f in local.rglob("*"):
        if f.is_file():
            loc.child(str(f.relative_to(local))).write_bytes(f.read_bytes())
    where = build_report(loc)
    assert where == "s3://gwray-runs/report-run/report.html"
    html = loc.child("report.html").read_bytes().decode()
    assert len(_imgs(html)) == 3 and "blocks.4 – blocks.7" in html
    assert loc.child("heatmap.png").read_bytes().startswith(PNG)


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure the report draws, drawn on an Agg canvas, instead of its PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from gwray.report import figures

    figs = []

    def keep(fig):
        FigureCanvasAgg(fig).draw()
        figs.append(fig)
        return PNG

    monkeypatch.setattr(figures, "_png", keep)
    return figs


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_small_heatmap_cells_carry_values_and_the_band_is_labelled(drawn):
    from gwray.report import figures

    labels = [0, 0, 1, 1, 1, 2]
    D = planted(labels)
    figures.heatmap(D, [f"l{i}" for i in range(6)], labels, normalize="mean")
    ax, bar = drawn[0].axes
    cells = [t for t in ax.texts if t.get_position()[1] >= 0]
    assert sorted(t.get_text() for t in cells) == sorted(f"{v:.2g}" for v in D.ravel())
    for t in cells:  # each value sits in its own cell
        j, i = t.get_position()
        assert t.get_text() == f"{D[int(i), int(j)]:.2g}"
    band = [t.get_text() for t in ax.texts if t.get_position()[1] < 0]
    assert "group" in band and sorted(b for b in band if b != "group") == ["1", "2", "3"]
    assert bar.get_ylabel() == "GW distance (costs ÷ their mean)"
    drawn.clear()
    big = planted([0] * 13 + [1] * 12)
    figures.heatmap(big, [f"l{i}" for i in range(25)], None)  # L = 25: too small to read, none
    assert _texts(drawn[0].axes[0]) == [] and drawn[0].axes[1].get_ylabel() == "GW distance"


def test_scatter_legend_covers_no_point(drawn):
    from gwray.report import figures

    rng = np.random.default_rng(0)
    D = planted([0] * 4 + [1] * 4)
    lb = D * rng.uniform(0.0, 1.0, D.shape)  # points all over the square, the upper left too
    figures.gap_view(D, (lb + lb.T) / 2, [f"l{i}" for i in range(8)])
    scatter_ax = drawn[0].axes[-1]
    box = scatter_ax.get_legend().get_window_extent()
    points = scatter_ax.collections[0].get_offsets()
    pixels = scatter_ax.transData.transform(points)
    inside = (pixels[:, 0] >= box.x0) & (pixels[:, 0] <= box.x1) & (pixels[:, 1] >= box.y0) & (pixels[:, 1] <= box.y1)
    assert len(points) == 28 and not inside.any()


@pytest.mark.parametrize("normalize, label", [("max", "GW distance (costs ÷ their max)"),
                                              ("none", "GW distance (raw costs)")])
def test_every_gw_axis_says_how_costs_were_normalised(tmp_path, drawn, normalize, label):
    root = tmp_path / "run"
    make_run(root, [("a", 1, [0, 0, 1, 1]), ("b", 2, [0, 1, 1, 1])], baselines=True)
    info = json.loads((root / "run.json").read_text())
    info["config"]["costs"] = {"metric": "euclidean", "normalize": normalize}
    (root / "run.json").write_text(json.dumps(info))
    build_report(root)
    gw_axes = [t for fig in drawn for ax in fig.axes
               for t in (ax.get_ylabel(), ax.get_title()) if re.search(r"GW distance\b(?!s)", t)]
    # per checkpoint: heatmap bar, dendrogram axis, baselines panel (title and bar); one cross bar
    assert len(gw_axes) >= 2 * 4 + 1 and all(label in t for t in gw_axes), gw_axes
