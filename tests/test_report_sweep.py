"""The report for many checkpoints: one bounded, offline page whose slider changes the shown checkpoint."""
import json
import re
import shutil
import subprocess

import pytest

from gwray.report import build_report
from test_report import PNG, make_run


SWEEP_JS = """<script>
window.addEventListener('load',()=>{const s=document.getElementById('sweep-slider'),
 m=document.getElementById('sweep-matrix'),b=document.body;
 b.setAttribute('data-before',m.dataset.checkpoint+'|'+document.getElementById('sweep-label').textContent);
 const px0=m.toDataURL();s.value='0';s.dispatchEvent(new Event('input'));
 b.setAttribute('data-after',m.dataset.checkpoint+'|'+document.getElementById('sweep-label').textContent);
 b.setAttribute('data-redrawn',String(m.toDataURL()!==px0));
 b.setAttribute('data-groups',String(document.querySelectorAll('#sweep-groups li').length));
 const r=m.getBoundingClientRect();m.dispatchEvent(new MouseEvent('mousemove',{clientX:r.left+r.width*0.9,clientY:r.top+2}));
 b.setAttribute('data-hover',document.getElementById('sweep-hover').textContent);});
</script>"""


def _many(root, count, layers):
    """``count`` checkpoints of ``layers`` layers whose groups move: 2 groups early, 4 late."""
    ckpts = []
    for c in range(count):
        k = 2 if c < count // 2 else 4
        ckpts.append((f"step-{c:03d}", 10 * c, [i * k // layers for i in range(layers)]))
    return make_run(root, ckpts, n_null=0)  # the report's size, not the test of 100 matrices


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    root, _ = _many(tmp_path_factory.mktemp("hundred") / "run", 100, 32)
    return root, build_report(str(root))


def test_report_for_100_checkpoints_of_32_layers_is_bounded(hundred):
    from gwray.report.interactive import SIZE_BOUND

    root, path = hundred
    html = path.read_text()
    assert path.stat().st_size < SIZE_BOUND  # 3 MiB
    data = json.loads(re.search(r"id='sweep-data'>(.*?)</script>", html).group(1))
    assert len(data["checkpoints"]) == 100 and len(data["gw"]["step-000"]) == 32 * 31 // 2
    assert data["labels"]["step-000"][-1] == 1 and data["labels"]["step-099"][-1] == 3
    # one full section (the last checkpoint's) instead of 100
    assert html.count("<h2 id='ckpt-") == 1 and "<h2 id='ckpt-step-099'>" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # offline: nothing fetched


def test_slider_changes_the_checkpoint_in_headless_chromium(hundred, tmp_path):
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
    attrs = dict(re.findall(r'data-(before|after|redrawn|groups|hover)="([^"]*)"', dom))
    assert attrs.get("before", "").startswith("step-099|step-099 (step 990)"), dom[-300:]
    assert attrs["after"].startswith("step-000|step-000 (step 0)")
    assert attrs["redrawn"] == "true" and attrs["groups"] == "2"  # step-000 has 2 groups
    assert re.fullmatch(r"blocks\.0 × blocks\.2\d: GW \S+", attrs["hover"]), attrs["hover"]
    shots = []
    for k in (0, 99):  # the page opens at #ckpt=K: two screenshots of two checkpoints differ
        shot = tmp_path / f"shot{k}.png"
        subprocess.run(base + ["--window-size=1200,1400", f"--screenshot={shot}",
                               path.as_uri() + f"#ckpt={k}"], capture_output=True, timeout=120)
        shots.append(shot.read_bytes())
    assert all(s.startswith(PNG) for s in shots) and shots[0] != shots[1]
