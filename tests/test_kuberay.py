"""infra/kuberay/: the RayJob of the paper-scale run, checked without a Kubernetes cluster.

Nothing here talks to a cluster. The manifest is validated against the OpenAPI v3 schema of
KubeRay's own RayJob CRD the way the API server applies it (`kubectl apply` with its default
strict field validation), plus the checks KubeRay's operator makes before it creates anything;
then against what the rest of the repo assumes: the paper preset's Ray Train workers fit the GPU
worker group, the entrypoint is the preset command, one shared path everywhere, the stages'
`ray.init` can run inside the job.

The CRD is KubeRay's file as released, kept unchanged with its licence in infra/kuberay/crd/ (see
infra/kuberay/README.md); $KUBERAY_RAYJOB_CRD points the tests at another copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from btbnet.config import deep_merge

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERAY = REPO_ROOT / "infra" / "kuberay"
RAYJOB_FILE = KUBERAY / "rayjob.yaml"
SHARED_FILE = KUBERAY / "shared.yaml"
DOCKERFILE = KUBERAY / "Dockerfile"
CLUSTER_FILE = REPO_ROOT / "infra" / "cluster.yaml"
PAPER_FILE = REPO_ROOT / "infra" / "presets" / "paper.yaml"
PARAMS_FILE = REPO_ROOT / "params.yaml"

# KubeRay v1.7.0, ray-operator/config/crd/bases/ray.io_rayjobs.yaml (the Helm chart 1.7.0 installs the same file).
CRD_NAME = "ray.io_rayjobs.yaml"
CRD_SHA256 = "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"
CRD_ENV = "KUBERAY_RAYJOB_CRD"
MAX_RAYJOB_NAME = 47  # KubeRay: MaxRayClusterNameLength (53) - 6
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------------------- the files


def fresh(obj: Any) -> Any:
    """A copy with no shared parts (YAML anchors load as one object used twice)."""
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return fresh(yaml.safe_load(RAYJOB_FILE.read_text()))


@pytest.fixture(scope="module")
def shared() -> dict[str, dict[str, Any]]:
    """shared.yaml's objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(SHARED_FILE.read_text())}


@pytest.fixture(scope="module")
def paper_params() -> dict[str, Any]:
    """params.yaml with the paper preset over it: what `infra/preset.py paper` runs with."""
    return deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), yaml.safe_load(PAPER_FILE.read_text()))


def cluster_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]


def head(job: dict[str, Any]) -> dict[str, Any]:
    return cluster_spec(job)["headGroupSpec"]


def gpu_group(job: dict[str, Any]) -> dict[str, Any]:
    (group,) = [g for g in cluster_spec(job)["workerGroupSpecs"] if g["groupName"] == "gpu"]
    return group


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first one


def pod_specs(job: dict[str, Any], shared: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", head(job)["template"]["spec"]
    for group in cluster_spec(job)["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]
    yield "mlflow", shared["Deployment"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def shared_mount(pod: dict[str, Any]) -> tuple[str, str]:
    """(claim name, mount path) of the pod's PersistentVolumeClaim volume in its first container."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims]
    return claims[mount["name"]], mount["mountPath"]


# ------------------------------------------------- the API server's checks, by JSON schema


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as plain JSON Schema (draft 4, which OpenAPI v3.0 extends).

    - An object schema with `properties` and neither `additionalProperties` nor
      `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`: the API server
      prunes unknown fields there, and `kubectl apply` (strict field validation) rejects them.
    - `nullable: true` admits null. `x-kubernetes-int-or-string` needs nothing: controller-gen
      writes it with `anyOf: [integer, string]`. Formats and the list and CEL extensions are
      handled by `Validator` below; `default` is ignored (nothing is defaulted here).
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: structural(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = structural(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [structural(s) for s in out[key]]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def list_type(validator, kind: str, instance: Any, schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-list-type: `set` items are unique, `map` items unique by their map keys."""
    if not isinstance(instance, list) or kind == "atomic":
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen = [tuple(item.get(k) for k in keys) if kind == "map" else json.dumps(item, sort_keys=True) for item in instance]
    for item in {s for s in seen if seen.count(s) > 1}:
        yield jsonschema.ValidationError(f"duplicate entry {item} in a list of type {kind!r}")


def cel_rules(validator, rules: list[dict[str, str]], instance: Any, schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-validations are CEL, which this check cannot evaluate: a field that has them is refused."""
    yield jsonschema.ValidationError(f"field with CEL rules not evaluated here: {[r['rule'] for r in rules]}")


FORMATS = jsonschema.FormatChecker(formats=())
for _name, _bits in (("int32", 32), ("int64", 64)):
    FORMATS.checks(_name)(lambda v, bits=_bits: not isinstance(v, int) or -(2 ** (bits - 1)) <= v < 2 ** (bits - 1))

Validator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": list_type, "x-kubernetes-validations": cel_rules}
)


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    found = Validator(schema, format_checker=FORMATS).iter_errors(instance)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found)


def crd_file() -> Path | None:
    candidates = [Path(os.environ[CRD_ENV])] if os.environ.get(CRD_ENV) else []
    candidates.append(REPO_ROOT / "infra" / "kuberay" / "crd" / CRD_NAME)
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    path = crd_file()
    if path is None:
        pytest.fail(f"no {CRD_NAME} (KubeRay v1.7.0) in infra/kuberay/crd/ nor at ${CRD_ENV}: see infra/kuberay/README.md")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == CRD_SHA256, f"{path} is not KubeRay v1.7.0's {CRD_NAME}"
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="module")
def rayjob_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return structural(v1["schema"]["openAPIV3Schema"])


# ------------------------------------------------------------- KubeRay's operator checks


def operator_errors(job: dict[str, Any]) -> list[str]:
    """What KubeRay 1.7.0's operator refuses in a RayJob it can create a cluster for
    (ValidateRayJobMetadata, ValidateRayJobSpec, ValidateRayClusterSpec), for the fields used here."""
    errors = []
    name, spec = job["metadata"]["name"], job["spec"]
    if len(name) > MAX_RAYJOB_NAME or not DNS1035_LABEL.fullmatch(name):
        errors.append(f"name {name!r}: a DNS-1035 label of at most {MAX_RAYJOB_NAME} characters")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0 or (ttl > 0 and not spec.get("shutdownAfterJobFinishes", False)):
        errors.append("ttlSecondsAfterFinished must be >= 0, and > 0 only with shutdownAfterJobFinishes")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(field, 1) <= 0:
            errors.append(f"{field} must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("backoffLimit must be >= 0")
    if not isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}, dict):
        errors.append("runtimeEnvYAML must be a YAML mapping")
    cluster = cluster_spec(job)
    if cluster.get("authOptions", {}).get("enableK8sTokenAuth"):
        errors.append("K8s token auth is not supported for a RayJob")
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    groups = [("head", head(job))] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    for group_name, group in groups:
        if not group["template"]["spec"].get("containers"):
            errors.append(f"{group_name}: no container")
        if {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {})) and group.get("resources"):
            errors.append(f"{group_name}: resources in both rayStartParams and resources")
        if group_name == "head":
            continue
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"{group_name}: minReplicas and maxReplicas are needed without autoscaling")
        if (low or 0) < 0 or (high or 0) < 0 or (low is not None and high is not None and low > high):
            errors.append(f"{group_name}: needs 0 <= minReplicas <= maxReplicas")
    return errors


# ---------------------------------------------------------------------------- the schema


def test_the_manifest_is_a_ray_io_v1_rayjob(rayjob, crd, rayjob_schema):
    assert rayjob["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert rayjob["kind"] == crd["spec"]["names"]["kind"] == "RayJob"
    assert schema_errors(rayjob_schema, rayjob) == []


def test_shared_objects_pass_the_crd_schemas_of_their_core_types(shared, rayjob_schema):
    """The CRD embeds Kubernetes' own types: the MLflow Deployment's pod template is checked
    against the PodTemplateSpec schema (the submitter pod template's), the Service against the
    head Service's, the claim's spec against an ephemeral volume's PersistentVolumeClaimSpec."""
    spec = rayjob_schema["properties"]["spec"]["properties"]
    head_group = spec["rayClusterSpec"]["properties"]["headGroupSpec"]["properties"]
    volume = head_group["template"]["properties"]["spec"]["properties"]["volumes"]["items"]["properties"]
    claim_spec = volume["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]
    deployment, service, claim = shared["Deployment"], shared["Service"], shared["PersistentVolumeClaim"]
    assert schema_errors(spec["submitterPodTemplate"], deployment["spec"]["template"]) == []
    assert schema_errors(head_group["headService"], service) == []
    assert schema_errors(claim_spec, claim["spec"]) == []
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


Keys = tuple[str | int, ...]


def parent_of(job: dict[str, Any], path: Keys) -> tuple[Any, str | int]:
    node = job
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


def set_path(job: dict[str, Any], path: Keys, value: Any) -> None:
    node, last = parent_of(job, path)
    node[last] = value


def rename(job: dict[str, Any], path: Keys, new: str) -> None:
    node, last = parent_of(job, path)
    node[new] = node.pop(last)


SPEC = ("spec",)
HEAD_GROUP = (*SPEC, "rayClusterSpec", "headGroupSpec")
HEAD_CONTAINER = (*HEAD_GROUP, "template", "spec", "containers", 0)
WORKER_GROUP = (*SPEC, "rayClusterSpec", "workerGroupSpecs", 0)
WORKER_POD = (*WORKER_GROUP, "template", "spec")
WORKER_LIMITS = (*WORKER_POD, "containers", 0, "resources", "limits")

# (edit, where, value, what the error says)
BROKEN = {
    "a string for a boolean": (set_path, (*SPEC, "shutdownAfterJobFinishes"), "true", "is not of type 'boolean'"),
    "a string for an integer": (set_path, (*WORKER_GROUP, "maxReplicas"), "8", "is not of type 'integer'"),
    "an int32 out of range": (set_path, (*SPEC, "ttlSecondsAfterFinished"), 2**31, "is not a 'int32'"),
    "a misspelt required field": (rename, (*WORKER_GROUP, "groupName"), "groupname", "'groupName' is a required property"),
    "a misspelt pod template": (rename, (*HEAD_GROUP, "template"), "templates", "'template' is a required property"),
    "an unknown field": (set_path, (*SPEC, "shutdownAfterJobFinish"), True, "('shutdownAfterJobFinish' was unexpected)"),
    "a field of the wrong object": (set_path, (*WORKER_POD, "gpu"), 1, "('gpu' was unexpected)"),
    "a quantity that is none": (set_path, (*WORKER_LIMITS, GPU), "one", "does not match"),
    "a variable set twice": (set_path, (*HEAD_CONTAINER, "env"), 2 * [{"name": "A", "value": "1"}], "duplicate entry ('A',)"),
    "a field with CEL rules": (set_path, (*SPEC, "managedBy"), "ray.io/kuberay-operator", "CEL rules"),
}


@pytest.mark.parametrize("change", BROKEN, ids=list(BROKEN))
def test_the_schema_refuses_a_broken_copy(rayjob, rayjob_schema, change):
    edit, where, value, message = BROKEN[change]
    broken = fresh(rayjob)
    edit(broken, where, value)
    errors = schema_errors(rayjob_schema, broken)
    assert any(message in e for e in errors), errors


def test_the_schema_leaves_maps_open(rayjob, rayjob_schema):
    """Label, selector and resource maps take any key: `additionalProperties: false` is only
    added to objects with fixed fields."""
    job = fresh(rayjob)
    set_path(job, ("metadata", "labels", "team"), "vision")
    set_path(job, (*WORKER_POD, "nodeSelector"), {"node.kubernetes.io/instance-type": "g6e.2xlarge"})
    set_path(job, (*WORKER_LIMITS, "ephemeral-storage"), "100Gi")
    assert schema_errors(rayjob_schema, job) == []


# --------------------------------------------------------------------- the operator's checks


def test_kuberay_operator_accepts_the_manifest(rayjob):
    assert operator_errors(rayjob) == []


# (where, value)
OPERATOR_BROKEN = {
    "minReplicas over maxReplicas": ((*WORKER_GROUP, "minReplicas"), 9),
    "a name too long": (("metadata", "name"), "btbnet-" + 41 * "x"),
    "a name with capitals": (("metadata", "name"), "BTBNet-paper"),
    "a TTL without shutdown": ((*SPEC, "shutdownAfterJobFinishes"), False),
    "GPUs twice": ((*HEAD_GROUP, "resources"), {"GPU": "0"}),
    "a runtime env that is a list": ((*SPEC, "runtimeEnvYAML"), "- pip"),
}


@pytest.mark.parametrize("change", OPERATOR_BROKEN, ids=list(OPERATOR_BROKEN))
def test_kuberay_operator_refuses_a_broken_copy(rayjob, change):
    broken = fresh(rayjob)
    set_path(broken, *OPERATOR_BROKEN[change])
    assert operator_errors(broken)


# ------------------------------------------------------------------------- the cluster shape


def test_gpu_workers_request_a_gpu_and_tolerate_the_gpu_taint(rayjob):
    group = gpu_group(rayjob)
    resources = ray_container(group)["resources"]
    # An extended resource is asked for as a whole number, with the request equal to the limit.
    assert resources["limits"][GPU] == resources["requests"][GPU]
    assert int(resources["limits"][GPU]) >= 1
    tolerations = group["template"]["spec"]["tolerations"]
    assert any(
        t["key"] == GPU and t.get("effect") in (None, "NoSchedule") and (t.get("operator") == "Exists" or "value" in t)
        for t in tolerations
    ), tolerations


def test_head_gets_no_gpu(rayjob):
    group = head(rayjob)
    resources = ray_container(group)["resources"]
    assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {})
    assert not any(t.get("key") == GPU for t in group["template"]["spec"].get("tolerations", []))
    # Even on a node with GPUs, Ray must not offer any there (cluster.yaml's head: GPU 0).
    cluster = yaml.safe_load(CLUSTER_FILE.read_text())
    assert group["rayStartParams"]["num-gpus"] == str(cluster["available_node_types"]["head"]["resources"]["GPU"]) == "0"


def test_paper_preset_workers_fit_the_gpu_worker_group(rayjob, paper_params):
    """train.ray of the paper preset (Ray Train: num_workers × {cpus_per_worker CPUs, 1 GPU})
    fits in maxReplicas pods of the GPU group, which match cluster.yaml's gpu_worker."""
    train = paper_params["train"]["ray"]
    group = gpu_group(rayjob)
    limits = ray_container(group)["resources"]["limits"]
    gpus, cpus = int(limits.get(GPU, 0)), cpu_cores(limits["cpu"])
    per_pod = int(cpus // train["cpus_per_worker"])
    if train["use_gpu"]:
        per_pod = min(per_pod, gpus)
    assert per_pod >= 1
    assert group["maxReplicas"] * per_pod >= train["num_workers"]
    assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    assert cluster_spec(rayjob)["enableInTreeAutoscaling"] or group["replicas"] * per_pod >= train["num_workers"]

    node = yaml.safe_load(CLUSTER_FILE.read_text())["available_node_types"]["gpu_worker"]
    assert gpus == node["resources"]["GPU"]
    assert cpus <= node["resources"]["CPU"]  # a pod fits on the node type cluster.yaml sizes for it
    assert group["maxReplicas"] == node["max_workers"]


# ------------------------------------------------------------------------ the run itself


def load_preset_script():
    spec = importlib.util.spec_from_file_location("preset", REPO_ROOT / "infra" / "preset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_runs_the_paper_preset(rayjob, shared, capsys):
    entrypoint = rayjob["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's `bash -c` line unquoted: shell syntax
    # (`cd … && …`, `;`, pipes) would run there, not in the Ray job.
    assert not re.search(r"[;&|<>`$(){}]", entrypoint), entrypoint
    python, script, *args = shlex.split(entrypoint)
    _, mount = shared_mount(head(rayjob)["template"]["spec"])
    assert python == "python" and script == f"{mount}/btbnet/infra/preset.py" and args == ["paper"]
    assert load_preset_script().main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("dvc exp run -n paper -S ")


def test_one_shared_checkout_at_one_path_everywhere(rayjob, shared):
    """Head, GPU workers and MLflow mount the one ReadWriteMany claim of shared.yaml at one path;
    PYTHONPATH is the checkout on it, and the entrypoint runs from it."""
    mounts = {name: shared_mount(pod) for name, pod in pod_specs(rayjob, shared)}
    assert len(set(mounts.values())) == 1, mounts
    ((claim, path),) = set(mounts.values())
    assert shared["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert "ReadWriteMany" in shared["PersistentVolumeClaim"]["spec"]["accessModes"]
    for group in [head(rayjob), *cluster_spec(rayjob)["workerGroupSpecs"]]:
        assert env_of(ray_container(group))["PYTHONPATH"] == f"{path}/btbnet"


def test_mlflow_and_auth_settings_are_the_same_in_every_ray_pod(rayjob, shared):
    service, mlflow = shared["Service"], shared["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    groups = [head(rayjob), *cluster_spec(rayjob)["workerGroupSpecs"]]
    envs = [env_of(ray_container(g)) for g in groups]
    assert all(env == envs[0] for env in envs)
    uri = urlsplit(envs[0]["MLFLOW_TRACKING_URI"])
    assert (uri.scheme, uri.hostname, uri.port) == ("http", service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    # MLflow 3's server answers only the Host headers it allows (`--allowed-hosts`).
    allowed = re.search(r"--allowed-hosts (\S+)", " ".join(mlflow["args"])).group(1).split(",")
    assert uri.netloc in allowed and "localhost:5000" in allowed
    assert envs[0]["MLFLOW_DISABLE_TELEMETRY"] == env_of(mlflow)["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # Token auth comes from authOptions, which sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray
    # container and the submitter alike; a value set by hand in one pod would override it there.
    assert cluster_spec(rayjob)["authOptions"]["mode"] == "token"
    for group in groups:
        names = {e["name"] for c in group["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


def stage_runtime_env(monkeypatch: pytest.MonkeyPatch, job: dict[str, Any]) -> tuple[dict, dict]:
    """(the job's runtime env, what a stage's init_ray passes to ray.init) inside this job: the
    stage inherits the head container's variables and the job's env_vars."""
    import ray

    from pipeline.runtime import cluster

    job_env = yaml.safe_load(job["spec"].get("runtimeEnvYAML", "")) or {}
    variables = {**env_of(ray_container(head(job))), **job_env.get("env_vars", {}), "RAY_ADDRESS": "10.0.0.1:6379",
                 "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": job_env})}  # what Ray gives a job's entrypoint  # fmt: skip
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(cluster, "interrupt_on_sigterm", lambda: None, raising=False)  # no handler in pytest
    cluster.init_ray()
    return job_env, calls[0]["runtime_env"]


def test_stages_can_call_ray_init_inside_the_job(rayjob, monkeypatch):
    """Ray refuses a driver's ray.init whose runtime env sets a field or variable that the job's
    runtime env (runtimeEnvYAML) sets too; a stage leaves out what the job sets (it reaches
    every worker already), so even a job that sets the tracking URI itself works."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    assert _merge_runtime_env(*stage_runtime_env(monkeypatch, rayjob)) is not None
    clashing = fresh(rayjob)
    clashing["spec"]["runtimeEnvYAML"] = "env_vars:\n  MLFLOW_TRACKING_URI: http://btbnet-mlflow:5000\n"
    job_env, driver_env = stage_runtime_env(monkeypatch, clashing)
    assert "MLFLOW_TRACKING_URI" not in driver_env["env_vars"] and _merge_runtime_env(job_env, driver_env) is not None


def test_one_image_with_the_pinned_ray_and_python(rayjob, shared):
    """Every pod runs the image of infra/kuberay/Dockerfile, whose base is Ray's image of the
    rayVersion the cluster declares, for pyproject's Ray and Python pins."""
    images = {c["image"] for _, pod in pod_specs(rayjob, shared) for c in pod["containers"]}
    assert len(images) == 1, images
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(re.search(r"==([\d.*]+)", d).group(1) for d in project["optional-dependencies"]["pipeline"] if d.startswith("ray["))
    python = re.search(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    ray_version = cluster_spec(rayjob)["rayVersion"]
    assert re.fullmatch(ray_pin.replace(".", r"\.").replace("*", r"\d+"), ray_version)
    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py{''.join(python)}-gpu$", dockerfile, re.M)
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert f"pip install --no-cache-dir {torch_pin}" in dockerfile

