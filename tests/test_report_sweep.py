"""The report for many checkpoints: one bounded, offline page whose slider changes the shown
checkpoint, whose matrix and timeline name their layers and checkpoints, and whose summary says
what it folds away; at the users' scale, 100 checkpoints × 80 layers."""
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gwray import find_subnetworks
from gwray.report import build_report
from test_report import PNG, planted

C, L = 100, 80

SWEEP_JS = """<script>
window.addEventListener('load',()=>{const s=document.getElementById('sweep-slider'),
 m=document.getElementById('sweep-matrix'),t=document.getElementById('sweep-timeline'),b=document.body;
 const D=JSON.parse(document.getElementById('sweep-data').textContent),M=D.margin;
 const ink=(cv,x,y,w,h)=>cv.getContext('2d').getImageData(x,y,w,h).data.some((v,i)=>i%4===3&&v>0);
 b.setAttribute('data-before',m.dataset.checkpoint+'|'+document.getElementById('sweep-label').textContent);
 const px0=m.toDataURL();s.value='0';s.dispatchEvent(new Event('input'));
 b.setAttribute('data-after',m.dataset.checkpoint+'|'+document.getElementById('sweep-label').textContent);
 b.setAttribute('data-redrawn',String(m.toDataURL()!==px0));
 b.setAttribute('data-groups',String(document.querySelectorAll('#sweep-groups li').length));
 const cell=Math.floor((m.width-M)/80),r=m.getBoundingClientRect(),sx=r.width/m.width;
 b.setAttribute('data-names',String(ink(m,0,M,M-2,cell)&&ink(m,M,0,cell,M-2)&&!ink(m,0,0,M-2,M-2)));
 m.dispatchEvent(new MouseEvent('mousemove',{clientX:r.left+(M+cell*70.5)*sx,clientY:r.top+(M+cell*0.5)*sx}));
 b.setAttribute('data-hover',document.getElementById('sweep-hover').textContent);
 const q=t.getBoundingClientRect(),h=Math.floor((t.height-D.tl_top)/100),w=Math.floor((t.width-D.tl_left)/80);
 const at=(i,k)=>({clientX:q.left+(D.tl_left+(i+0.5)*w)*q.width/t.width,clientY:q.top+(D.tl_top+(k+0.5)*h)*q.height/t.height});
 t.dispatchEvent(new MouseEvent('mousemove',at(79,99)));
 b.setAttribute('data-tlhover',document.getElementById('sweep-hover').textContent);
 t.dispatchEvent(new MouseEvent('click',at(3,60)));
 b.setAttribute('data-clicked',m.dataset.checkpoint);});
</script>"""


def _labels(c):
    """2 groups in the first half of training, 4 in the second."""
    k = 2 if c < C // 2 else 4
    return np.arange(L) * k // L


def _sweep_run(root):
    """A finished run directory of C checkpoints × L layers (written with Arrow, not row dicts)."""
    root.mkdir(parents=True)
    ids, names = [f"step-{c:03d}" for c in range(C)], [f"blocks.{i}" for i in range(L)]
    info = {"name": "sweep", "gwray_version": "0.1.0", "probe_hash": "abc",
            "checkpoints": [{"id": c, "path": None, "step": 10 * k} for k, c in enumerate(ids)],
            "layers": {c: names for c in ids}, "config": {"graph": {"method": "contiguous"}}, "stages": {}}
    (root / "run.json").write_text(json.dumps(info))
    i, j = np.divmod(np.arange(L * L), L)
    mats = [planted(_labels(k), seed=k) for k in range(C)]
    pq.write_table(pa.table({"checkpoint": np.repeat(ids, L * L), "layer_i": np.tile(np.take(names, i), C),
                             "layer_j": np.tile(np.take(names, j), C),
                             "gw": np.concatenate([D.ravel() for D in mats]),
                             "lower_bound": np.concatenate([0.9 * D.ravel() for D in mats])}),
                   root / "gw_matrix.parquet")
    comm = {"method": "contiguous", "stability": {}, "baselines": {}, "checkpoints": {
        c: {"methods": {"contiguous": find_subnetworks(D, method="contiguous", names=names,
                                                       n_null=0).to_dict()}, "agreement": {}}
        for c, D in zip(ids, mats)}}
    (root / "communities.json").write_text(json.dumps(comm))
    return root


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    root = _sweep_run(tmp_path_factory.mktemp("hundred") / "run")
    return root, build_report(str(root))


def test_report_for_100_checkpoints_of_80_layers_is_bounded(hundred):
    from gwray.report.interactive import SIZE_BOUND

    root, path = hundred
    html = path.read_text()
    assert path.stat().st_size < SIZE_BOUND  # 10 MiB
    data = json.loads(re.search(r"id='sweep-data'>(.*?)</script>", html).group(1))
    assert len(data["checkpoints"]) == C and len(data["gw"]["step-000"]) == L * (L - 1) // 2
    assert data["labels"]["step-000"][-1] == 1 and data["labels"]["step-099"][-1] == 3
    # one full section (the last checkpoint's) instead of 100, and the summary says so by name
    assert html.count("<h2 id='ckpt-") == 1 and "<h2 id='ckpt-step-099'>" in html
    assert ("100 checkpoints. Listed here: the last 4 (step-096 – step-099); the 96 before them "
            "(step-000 – step-095) are folded below the list. Full sections (heatmap, groups, "
            "stability, solver certainty): step-099; the 99 others (step-000 – step-098) are in "
            "the slider and the timeline.") in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # offline: nothing fetched


def test_slider_names_and_timeline_work_in_headless_chromium(hundred, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it as root)")
    _, path = hundred
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", SWEEP_JS + "</body>"))
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--window-size=1200,1600", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', dom))
    assert attrs.get("before", "").startswith("step-099|step-099 (step 990)"), dom[-300:]
    assert attrs["after"].startswith("step-000|step-000 (step 0)")
    assert attrs["redrawn"] == "true" and attrs["groups"] == "2"  # step-000 has 2 groups
    assert attrs["names"] == "true"  # layer names left of the rows and above the columns
    assert re.fullmatch(r"blocks\.0 × blocks\.70: GW \S+", attrs["hover"]), attrs["hover"]
    assert attrs["tlhover"] == "step-099, blocks.79: group 4"  # the timeline's last row, last layer
    assert attrs["clicked"] == "step-060"  # a click on a timeline row shows that checkpoint
    shots = []
    for k in (0, 99):  # the page opens at #ckpt=K: two screenshots of two checkpoints differ
        shot = tmp_path / f"shot{k}.png"
        subprocess.run(base + ["--window-size=1200,1400", f"--screenshot={shot}",
                               path.as_uri() + f"#ckpt={k}"], capture_output=True, timeout=120)
        shots.append(shot.read_bytes())
    assert all(s.startswith(PNG) for s in shots) and shots[0] != shots[1]
