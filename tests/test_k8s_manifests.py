"""k8s/: every manifest validates against the KubeRay CRD schemas, and follows our policies.

The CRDs (RayCluster, RayJob with their OpenAPI v3 schemas) live outside the repository: in the
directory ``GWRAY_KUBERAY_CRDS`` names, else ``../shared/kuberay-crds/`` next to the repository
root; the schema tests skip without them (k8s/README.md says how to get them).
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = Path(os.environ.get("GWRAY_KUBERAY_CRDS") or ROOT.parent / "shared" / "kuberay-crds")
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
IMAGE_HOME = "/home/ray/gwray"  # WORKDIR of k8s/Dockerfile: the repository's files live here
MANIFESTS = ["raycluster.yaml", "rayjob-analyze.yaml", "rayjob-compare.yaml", "rayjob-large-llm.yaml"]
RAYJOBS = [m for m in MANIFESTS if m.startswith("rayjob-")]


def pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [re.search(r"==([\w.]+)", d).group(1) for d in deps if re.match(r"ray\b", d)]
    return pin


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def strict(schema):
    """The CRD schema with unknown fields rejected, as ``kubectl apply`` (strict field
    validation, the default since Kubernetes 1.27) rejects them: objects with declared
    properties get ``additionalProperties: false``."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validators():
    missing = [f for f in CRD_FILES.values() if not (CRDS / f).is_file()]
    if missing:
        pytest.skip(f"KubeRay CRDs {', '.join(missing)} not found in {CRDS}: set GWRAY_KUBERAY_CRDS to a "
                    "directory holding them, from a KubeRay release (helm-chart/kuberay-operator/crds/ of "
                    "github.com/ray-project/kuberay at the operator's tag) or a cluster (`kubectl get crd "
                    "rayjobs.ray.io -o yaml > ray.io_rayjobs.yaml`, likewise rayclusters.ray.io)")
    jsonschema = pytest.importorskip("jsonschema")
    out = {}
    for kind, fname in CRD_FILES.items():
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML
        crd = yaml.load((CRDS / fname).read_text(), Loader=loader)
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        schema = strict(version["schema"]["openAPIV3Schema"])
        out[kind] = (f"{crd['spec']['group']}/{version['name']}", jsonschema.Draft7Validator(schema))
    return out


def errors(validators, doc) -> list[str]:
    api, validator = validators[doc["kind"]]
    errs = [f"apiVersion {doc['apiVersion']} != {api}"] if doc["apiVersion"] != api else []
    return errs + [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                   for e in validator.iter_errors(doc)]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_specs(doc: dict) -> dict[str, dict]:
    """Every pod template of a manifest: head, each worker group, the RayJob submitter."""
    spec = cluster_spec(doc)
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])})
    if doc["kind"] == "RayJob":
        pods["submitter"] = doc["spec"]["submitterPodTemplate"]["spec"]
    return pods


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_crd(validators, name):
    assert errors(validators, load(name)) == []


def _break_required(d):
    del cluster_spec(d)["headGroupSpec"]


def _break_type(d):
    cluster_spec(d)["workerGroupSpecs"][0]["maxReplicas"] = "four"


def _break_unknown_field(d):
    cluster_spec(d)["workerGroupSpecs"][0]["maxReplica"] = 4


def _break_container(d):
    del cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]


def _break_quantity(d):
    cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "8 GB"


@pytest.mark.parametrize("breaker", [_break_required, _break_type, _break_unknown_field,
                                     _break_container, _break_quantity])
@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-analyze.yaml"])
def test_broken_copy_fails(validators, name, breaker):
    doc = copy.deepcopy(load(name))
    breaker(doc)
    assert errors(validators, doc), f"{breaker.__name__} on {name} was not caught"


def test_every_manifest_is_tested():
    found = {p.name for p in K8S.glob("*.yaml")}
    assert found == set(MANIFESTS) | {"configmap.yaml"}, found


@pytest.mark.parametrize("name", MANIFESTS)
def test_pods_non_root_with_limits(name):
    for pod_name, pod in pod_specs(load(name)).items():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, pod_name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", pod_name
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{name} {pod_name}/{c['name']}"
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], where
            assert not csc.get("privileged") and csc.get("runAsUser", 1000) != 0, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where} {part}"


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    num, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(num) * units.get(unit, 1)


@pytest.mark.parametrize("name", MANIFESTS)
def test_object_store_fits_shm_and_memory(name):
    """Ray's object store lives in /dev/shm (a memory emptyDir): a store larger than the
    emptyDir's sizeLimit gets the pod evicted, so each group sets it explicitly below both."""
    spec = cluster_spec(load(name))
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        pod = g["template"]["spec"]
        (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        (c,) = pod["containers"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        store = float(g["rayStartParams"]["object-store-memory"])
        assert store < _bytes(shm["emptyDir"]["sizeLimit"]) < _bytes(c["resources"]["limits"]["memory"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_gpu_group(name):
    groups = {g["groupName"]: g for g in cluster_spec(load(name))["workerGroupSpecs"]}
    gpu = groups.pop("gpu")
    (c,) = gpu["template"]["spec"]["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and c["image"].endswith("-gpu")
    for other in groups.values():  # no GPUs asked for outside the GPU group
        for c in other["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and not c["image"].endswith("-gpu")
    assert cluster_spec(load(name))["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("name", MANIFESTS)
def test_ray_version_and_images_match_pin(name):
    ray = pinned_ray()
    doc = load(name)
    assert cluster_spec(doc)["rayVersion"] == ray
    for pod in pod_specs(doc).values():
        for c in pod["containers"]:
            tag = c["image"].rsplit(":", 1)[1]
            assert re.fullmatch(rf"[\w.]+-ray{re.escape(ray)}-(cpu|gpu)", tag), c["image"]


def test_dockerfile_base_is_pinned_ray_and_non_root():
    text = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pinned_ray())}$", text, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{PLATFORM\}$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'pip install ".[minilm,s3]"' in text
    for src in re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path


def config_map() -> dict[str, str]:
    doc = load("configmap.yaml")
    assert doc["kind"] == "ConfigMap" and doc["apiVersion"] == "v1"
    return doc["data"]


@pytest.mark.parametrize("name, script, min_ckpts", [("rayjob-analyze.yaml", "jobs/analyze.py", 1),
                                                     ("rayjob-compare.yaml", "jobs/compare.py", 2),
                                                     ("rayjob-large-llm.yaml", "jobs/analyze.py", 1)])
def test_rayjob_entrypoint_script_and_config(name, script, min_ckpts):
    from gwray.config import load_config

    doc = load(name)
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1] == f"{IMAGE_HOME}/{script}"
    assert (ROOT / script).is_file()
    # the config: a key of the gwray-config ConfigMap, mounted on the head (the driver's pod)
    head = pod_specs(doc)["head"]
    (vol,) = [v for v in head["volumes"] if v.get("configMap", {}).get("name") == "gwray-config"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == vol["name"]]
    path = Path(argv[2])
    assert str(path.parent) == mount["mountPath"] and mount["readOnly"] is True
    cfg = load_config(yaml.safe_load(config_map()[path.name]))
    assert cfg.output.startswith("s3://")
    assert (cfg.model.checkpoints is not None) == (min_ckpts > 1)
    if name == "rayjob-analyze.yaml":  # the MiniLM analysis runs without GPUs
        assert cfg.resources.gpus_per_worker == 0 and cfg.model.shards == 1


def job_config(doc: dict):
    """The run config a RayJob's entrypoint reads: its ConfigMap entry, validated."""
    from gwray.config import load_config

    return load_config(yaml.safe_load(config_map()[Path(shlex.split(doc["spec"]["entrypoint"])[2]).name]))


def _gpus(c) -> int:
    return int(c["resources"]["limits"].get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("name", RAYJOBS)
def test_gpu_group_holds_the_configs_gpus(name):
    """At full scale the GPU group holds every GPU actor of the config at once: shard actors
    (shards x gpus_per_shard), Ray Data model actors and GW workers (workers x gpus_per_worker),
    each within one pod's GPUs and CPUs."""
    doc = load(name)
    res, model = (cfg := job_config(doc)).resources, cfg.model
    shard_gpus = model.shards * res.gpus_per_shard if model.shards > 1 else 0
    extract_gpus = res.extract_actors * res.gpus_per_extract_actor if model.shards == 1 else 0
    need = shard_gpus + extract_gpus + res.workers * res.gpus_per_worker
    gpu = {g["groupName"]: g for g in cluster_spec(doc)["workerGroupSpecs"]}["gpu"]
    (c,) = gpu["template"]["spec"]["containers"]
    assert gpu["maxReplicas"] * _gpus(c) >= need, (name, need)
    assert max(res.gpus_per_shard, res.gpus_per_worker, res.gpus_per_extract_actor) <= _gpus(c)
    if res.gpus_per_worker:  # GPU GW workers also take their CPUs on the GPU nodes
        assert gpu["maxReplicas"] * float(c["resources"]["limits"]["cpu"]) >= res.workers * res.cpus_per_worker


@pytest.mark.parametrize("name", RAYJOBS)
def test_model_and_probe_files_are_mounted_where_the_config_reads_them(name):
    """Every pod (the driver on the head, shard / extraction actors on workers) sees the model
    directory and checkpoints at the config's paths; the head (where the probe is read) the probe."""
    doc = load(name)
    cfg = job_config(doc)
    model_paths = [] if cfg.model.path == "minilm" else [cfg.model.path]  # minilm: inside the image
    model_paths += [cfg.model.checkpoints] if isinstance(cfg.model.checkpoints, str) else cfg.model.checkpoints or []
    probe = [] if cfg.probe.source.startswith("builtin:") else [cfg.probe.source]
    for pod_name, pod in pod_specs(doc).items():
        if pod_name == "submitter":
            continue
        (c,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])
                  if "persistentVolumeClaim" in volumes[m["name"]] and m.get("readOnly")]
        for path in model_paths + (probe if pod_name == "head" else []):
            assert any(Path(path).is_relative_to(m) for m in mounts), (name, pod_name, path)


def test_large_llm_job_runs_the_shipped_template():
    from gwray.config import load_config

    assert job_config(load("rayjob-large-llm.yaml")) == load_config(ROOT / "configs" / "large-llm.yaml")


def test_configmap_configs_load():
    from gwray.config import load_config

    for key, text in config_map().items():
        assert key.endswith(".yaml")
        load_config(yaml.safe_load(text))


SECRETY = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


def _containers(doc):
    for pod in pod_specs(doc).values():
        yield from pod["containers"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_no_inline_secrets(name):
    text = (K8S / name).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN|aws_secret_access_key\s*[:=]", text, re.I)
    env = [e for c in _containers(load(name)) for e in c.get("env", [])]
    creds = [e for e in env if SECRETY.search(e["name"])]
    assert {e["name"] for e in creds} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for e in creds:
        assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "gwray-s3", e
    assert all(yaml.safe_load_all((K8S / f).read_text()) for f in MANIFESTS)
    assert not any(d.get("kind") == "Secret" for f in K8S.glob("*.yaml")
                   for d in yaml.safe_load_all(f.read_text()) if d)


def test_readme_pins_operator_and_covers_the_guide():
    text = (K8S / "README.md").read_text()
    assert re.search(r"helm install kuberay-operator kuberay/kuberay-operator --version \d+\.\d+\.\d+", text)
    for topic in ("docker build", "kubectl create secret generic gwray-s3", "gwray-models",
                  "kubectl apply -f k8s/rayjob-analyze.yaml", "Sizing", "resume", "report.html"):
        assert topic in text, topic
