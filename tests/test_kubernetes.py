"""The Kubernetes manifests (deploy/kubernetes): they render, their core objects validate against
Kubernetes' own schemas, and what they promise of the workers holds together.

`kubectl kustomize` renders offline: no cluster, no Redis. Without kubectl the tests skip locally
and fail in CI. Objects of custom kinds (KEDA's ScaledObject and TriggerAuthentication, the
Prometheus operator's PodMonitor) have no schema in kubernetes-validate: their fields are checked
here against what KEDA 2.x and prometheus-operator document.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.conftest import unavailable

pytestmark = pytest.mark.integration  # every test reads what `kubectl kustomize` renders

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
LAYERS = ("base", "overlays/example")

# 1.31: the oldest version the manifests claim (podFailurePolicy and the PDB's
# unhealthyPodEvictionPolicy are GA from it); 1.37: the newest kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.31", "1.37")

CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}

# KEDA 2.x, ScaledObject spec (keda.sh_scaledobjects CRD).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "triggers",
    "fallback",
}
SCALE_TARGET_REF = {"name", "kind", "apiVersion", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "authenticationRef", "name", "metricType", "useCachedMetrics"}
# The redis (lists) scaler's trigger metadata, and the parameters it takes from a TriggerAuthentication.
REDIS_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
REDIS_AUTH_PARAMS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
TRIGGER_AUTH_SPEC = {
    "secretTargetRef",
    "configMapTargetRef",
    "env",
    "podIdentity",
    "hashiCorpVault",
    "azureKeyVault",
    "awsSecretManager",
    "gcpSecretManager",
    "boundServiceAccountToken",
}
# prometheus-operator, PodMonitor spec and one of its podMetricsEndpoints.
POD_MONITOR_SPEC = {
    "selector",
    "podMetricsEndpoints",
    "namespaceSelector",
    "jobLabel",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "attachMetadata",
    "scrapeClass",
}
POD_METRICS_ENDPOINT = {
    "port",
    "portNumber",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "params",
}

DEFAULT_KEY_CAP = 24  # README: 24 active tasks per key, unless the key's line says total=N
DEMAND_LIST = "kb:demand"
SECRET_NAME_HINT = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL", re.IGNORECASE)
CREDENTIAL_LOOKS = (
    re.compile(r"://[^/\s@]*:[^/\s@]+@"),  # a URL with a password in it
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"^[A-Za-z0-9_+=-]{24,}$"),  # one long token (paths have slashes, settings are short)
)

Obj = dict[str, Any]


def _render(directory: Path) -> list[Obj]:
    if shutil.which("kubectl") is None:
        unavailable("kubectl (with kustomize) is not on PATH")
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


_renders: dict[str, list[Obj]] = {}


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(layer: str) -> list[Obj]:
    if layer not in _renders:
        _renders[layer] = _render(KUBE / layer)
    return _renders[layer]


@pytest.fixture
def example() -> list[Obj]:
    if "overlays/example" not in _renders:
        _renders["overlays/example"] = _render(KUBE / "overlays/example")
    return _renders["overlays/example"]


# --- helpers ------------------------------------------------------------------------------------


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in of_kind(objs, kind) if o["metadata"]["name"] == name), None)


def component(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [
        o for o in of_kind(objs, kind) if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]
    assert len(found) == 1, f"expected one {kind} of component {name}, found {len(found)}"
    return found[0]


def pod_template(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


def pod_templates(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for o in objs:
        if o["kind"] in ("Deployment", "CronJob", "Job", "StatefulSet", "DaemonSet"):
            yield o, pod_template(o)


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def literal_env(container: Obj) -> dict[str, str]:
    return {name: str(e["value"]) for name, e in env_of(container).items() if "value" in e}


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {container['name']} has no port named {port!r}"
    return int(numbers[0])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_files(pod: Obj, container: Obj) -> set[str]:
    """Absolute paths of the files this container sees from Secrets mounted read-only."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    files: set[str] = set()
    for mount in container.get("volumeMounts", []):
        if not mount.get("readOnly") or "subPath" in mount:
            continue  # a subPath mount never sees a Secret's update
        volume = volumes[mount["name"]]
        sources = []
        if "secret" in volume:
            sources.append(volume["secret"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                sources.append(source["secret"])
        for source in sources:
            assert source.get("items"), f"volume {mount['name']}: name the Secret's keys (items) it mounts"
            files.update(f"{mount['mountPath'].rstrip('/')}/{item['path']}" for item in source["items"])
    return files


def worker(objs: list[Obj]) -> tuple[Obj, Obj, Obj]:
    """The worker Deployment, its pod template and its container."""
    deployment = component(objs, "Deployment", "worker")
    pod = pod_template(deployment)
    (container,) = pod["spec"]["containers"]
    return deployment, pod, container


def concurrency(container: Obj) -> int:
    args = [*container.get("command", []), *container.get("args", [])]
    assert "--concurrency" in args, "the worker's --concurrency is what the ScaledObject is sized on: set it"
    return int(args[args.index("--concurrency") + 1])


def secret_data(secret: Obj) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    out.update(secret.get("stringData", {}))
    return out


def key_slots(api_keys_file: str) -> int:
    """Active-task slots of a KONTEXT_API_KEYS file: each key's total=N, or the default cap."""
    slots = 0
    for line in api_keys_file.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        caps = dict(opt.partition("=")[::2] for opt in line.split()[1:])
        slots += int(caps.get("total", DEFAULT_KEY_CAP))
    return slots


def readme_exit_codes() -> set[int]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}


def dockerfile_uid() -> int:
    m = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert m, "the Dockerfile no longer creates its user with --uid"
    return int(m.group(1))


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate(objs: list[Obj], version: str) -> None:
    """Every object of a core kind is valid for the pinned versions, strictly: no unknown field."""
    checked = 0
    for o in objs:
        if (o["apiVersion"], o["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(o, version, strict=True)
        checked += 1
    assert checked >= 8


def test_every_kind_is_known(objs: list[Obj]) -> None:
    """A custom kind the tests below do not check would slip through unvalidated."""
    for o in objs:
        key = (o["apiVersion"], o["kind"])
        if key in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{o['kind']} ({o['apiVersion']}) has no schema and no check of its own here")


def test_labels(objs: list[Obj]) -> None:
    for o in objs:
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "kontext-batch", o["metadata"]["name"]
        assert labels.get("app.kubernetes.io/part-of") == "kontext-batch", o["metadata"]["name"]


# --- the workers --------------------------------------------------------------------------------


def test_worker_probes_use_the_metrics_port(objs: list[Obj]) -> None:
    _, _, c = worker(objs)
    env = literal_env(c)
    metrics_port = int(env["KONTEXT_METRICS_PORT"])
    assert env["KONTEXT_METRICS_HOST"] == "0.0.0.0"  # the kubelet probes the pod's IP
    assert env["KONTEXT_LOG_FORMAT"] == "json"
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(c, get["port"]) == metrics_port, probe


def test_worker_outlives_its_shutdown_grace(objs: list[Obj]) -> None:
    """Kubernetes must not SIGKILL a worker still finishing its steps within its own grace."""
    _, pod, c = worker(objs)
    grace_s = int(literal_env(c)["KONTEXT_SHUTDOWN_GRACE_S"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= grace_s + 10


def test_worker_reads_keys_and_credentials_from_secret_files(objs: list[Obj]) -> None:
    _, pod, c = worker(objs)
    env = literal_env(c)
    files = secret_files(pod, c)
    assert env["KONTEXT_API_KEYS"] in files
    assert env["AWS_SHARED_CREDENTIALS_FILE"] in files
    assert "KONTEXT_API_KEY" not in env_of(c)
    redis_url = env_of(c)["KONTEXT_REDIS_URL"]
    assert "secretKeyRef" in redis_url.get("valueFrom", {})


def test_worker_replicas_belong_to_keda(objs: list[Obj]) -> None:
    """A `replicas` in the Deployment would reset KEDA's count on every apply."""
    deployment, _, _ = worker(objs)
    assert "replicas" not in deployment["spec"]


def test_pod_security(objs: list[Obj]) -> None:
    """Every pod: the image's non-root user, no privilege, read-only root with /tmp on an emptyDir."""
    uid = dockerfile_uid()
    templates = list(pod_templates(objs))
    assert len(templates) == 3
    for owner, pod in templates:
        where = owner["metadata"]["name"]
        spec = pod["spec"]
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True, where
        assert sc["runAsUser"] == uid, where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        account = named(objs, "ServiceAccount", spec["serviceAccountName"])
        assert account is not None, where
        assert account["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: /tmp must be writable"
            assert "emptyDir" in volumes[tmp[0]["name"]], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: resources.{kind}"


def test_no_credential_in_plain_sight(objs: list[Obj]) -> None:
    """Env values and ConfigMaps hold settings and paths; anything secret comes from a Secret."""
    for owner, pod in pod_templates(objs):
        for c in pod["spec"]["containers"]:
            files = secret_files(pod, c)
            for name, e in env_of(c).items():
                where = f"{owner['metadata']['name']}/{c['name']} {name}"
                if "value" in e:
                    value = str(e["value"])
                    assert not any(p.search(value) for p in CREDENTIAL_LOOKS), f"{where} looks like a credential"
                    if SECRET_NAME_HINT.search(name):
                        assert value in files, f"{where}: a secret's name with a literal value not in a Secret file"
                elif SECRET_NAME_HINT.search(name):
                    assert "secretKeyRef" in e["valueFrom"], where
            for arg in [*c.get("command", []), *c.get("args", [])]:
                assert not any(p.search(str(arg)) for p in CREDENTIAL_LOOKS), f"{owner['metadata']['name']}: {arg}"
    for cm in of_kind(objs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not SECRET_NAME_HINT.search(key) or key.endswith(".csv"), f"{cm['metadata']['name']} {key}"
            if not key.endswith(".csv"):
                assert not any(p.search(value) for p in CREDENTIAL_LOOKS), f"{cm['metadata']['name']} {key}"


def test_secrets_only_as_placeholders(objs: list[Obj], layer: str) -> None:
    """The base ships no Secret; the example's are placeholders that cannot pass for real ones."""
    secrets = of_kind(objs, "Secret")
    if layer == "base":
        assert secrets == []
        return
    assert {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets} == {
        "kontext-batch-api-keys",
        "kontext-batch-aws",
        "kontext-batch-redis",
    }
    for s in secrets:
        for key, value in secret_data(s).items():
            assert "REPLACE-ME" in value, f"{s['metadata']['name']} {key}"
            assert not CREDENTIAL_LOOKS[1].search(value)


def test_pdb_and_monitor_select_the_workers(objs: list[Obj]) -> None:
    _, pod, c = worker(objs)
    labels = pod["metadata"]["labels"]
    pdb = component(objs, "PodDisruptionBudget", "worker")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert "maxUnavailable" in pdb["spec"]  # minAvailable would block drains at one replica
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"

    (monitor,) = of_kind(objs, "PodMonitor")
    spec = monitor["spec"]
    assert set(spec) <= POD_MONITOR_SPEC
    assert matches(spec["selector"]["matchLabels"], labels)
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= POD_METRICS_ENDPOINT
    assert endpoint["path"] == "/metrics"
    assert port_number(c, endpoint["port"]) == int(literal_env(c)["KONTEXT_METRICS_PORT"])


def test_network_policy_admits_each_pods_own_ports(objs: list[Obj]) -> None:
    (policy,) = of_kind(objs, "NetworkPolicy")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    for _, pod in pod_templates(objs):
        assert matches(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
        for c in pod["spec"]["containers"]:
            for port in c.get("ports", []):
                assert port["name"] in allowed


# --- the webhook receiver -----------------------------------------------------------------------


def test_webhook_receiver(objs: list[Obj]) -> None:
    deployment = component(objs, "Deployment", "webhooks")
    pod = pod_template(deployment)
    (c,) = pod["spec"]["containers"]
    args = [*c["command"], *c["args"]]
    assert args[:2] == ["kontext-batch", "webhooks"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert port_number(c, "webhooks") == port
    assert secret_files(pod, c) == set()  # it needs no API key and no storage credentials
    service = component(objs, "Service", "webhooks")
    assert matches(service["spec"]["selector"], pod["metadata"]["labels"])
    (service_port,) = service["spec"]["ports"]
    assert port_number(c, service_port["targetPort"]) == port


# --- the nightly run ----------------------------------------------------------------------------


def test_nightly_run(objs: list[Obj]) -> None:
    cron = component(objs, "CronJob", "nightly")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]
    (c,) = pod["spec"]["containers"]
    args = [*c["command"], *c["args"]]
    assert args[:3] == ["kontext-batch", "run", "/manifests/nightly.csv"]
    assert "--wait" in args
    assert "--output" in args
    # $(VAR) in args expands only from variables the container defines.
    for var in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert var in env_of(c), var
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/manifests" in mounts
    files = secret_files(pod, c)
    assert literal_env(c)["KONTEXT_API_KEYS"] in files
    assert literal_env(c)["AWS_SHARED_CREDENTIALS_FILE"] in files


def test_nightly_exit_codes(objs: list[Obj]) -> None:
    """Exit 2 (nothing queued: bad usage or manifest) fails the Job at once; so does every code
    that means the run was queued or has ended, since a retry would queue its rows again."""
    cron = component(objs, "CronJob", "nightly")
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert 0 <= job["backoffLimit"] <= 2
    (c,) = job["template"]["spec"]["containers"]
    rules = job["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob" and "onExitCodes" in r]
    assert fail, "no FailJob rule on exit codes"
    codes = fail[0]["onExitCodes"]
    assert codes["operator"] == "In"
    assert codes.get("containerName", c["name"]) == c["name"]
    assert 2 in codes["values"]
    assert set(codes["values"]) <= readme_exit_codes() - {0}
    # The FailJob rule comes before any rule that could let the same pod be retried.
    assert rules.index(fail[0]) == 0


# --- KEDA -----------------------------------------------------------------------------------------


def test_scaled_object(objs: list[Obj]) -> None:
    (so,) = of_kind(objs, "ScaledObject")
    spec = so["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    ref = spec["scaleTargetRef"]
    assert set(ref) <= SCALE_TARGET_REF
    assert ref.get("kind", "Deployment") == "Deployment"
    deployment, _, c = worker(objs)
    assert ref["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    assert isinstance(spec["maxReplicaCount"], int)
    assert spec["maxReplicaCount"] >= 1
    assert isinstance(spec["pollingInterval"], int)
    assert isinstance(spec["cooldownPeriod"], int)

    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert set(meta) <= REDIS_METADATA
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    assert meta["listName"] == DEMAND_LIST
    assert int(meta["listLength"]) == concurrency(c)  # one worker per --concurrency rows of demand
    assert meta["activationListLength"] == "0"
    assert meta["enableTLS"] in ("true", "false")
    int(meta["databaseIndex"])

    auth = named(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth is not None
    assert set(auth["spec"]) <= TRIGGER_AUTH_SPEC
    params = {}
    for ref in auth["spec"]["secretTargetRef"]:
        assert set(ref) == {"parameter", "name", "key"}
        params[ref["parameter"]] = ref
    assert set(params) <= REDIS_AUTH_PARAMS
    assert not ("tls" in params and "enableTLS" in meta)  # KEDA refuses both
    # Redis' address from exactly one place, and the password too.
    assert len({"address", "host", "addressFromEnv", "hostFromEnv"} & (set(meta) | set(params))) == 1
    assert len({"password", "passwordFromEnv"} & (set(meta) | set(params))) == 1
    for name in ("addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv", "passwordFromEnv"):
        if name in meta:
            assert meta[name] in env_of(c), f"{name}: the worker container has no {meta[name]}"


def test_replica_ceiling(objs: list[Obj], layer: str) -> None:
    """maxReplicaCount = ceil(total slots / steps per worker): the base assumes one key at the
    default cap; the example counts the keys in its api-keys Secret."""
    (so,) = of_kind(objs, "ScaledObject")
    _, _, c = worker(objs)
    if layer == "base":
        slots = DEFAULT_KEY_CAP
    else:
        (secret,) = [s for s in of_kind(objs, "Secret") if "api-keys" in secret_data(s)]
        slots = key_slots(secret_data(secret)["api-keys"])
        assert slots == 2 * DEFAULT_KEY_CAP
    assert so["spec"]["maxReplicaCount"] == math.ceil(slots / concurrency(c))


def test_example_redis_settings_agree(example: list[Obj]) -> None:
    """The pods' URL and KEDA's address, password, TLS and database are one Redis, one database."""
    (so,) = of_kind(example, "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    auth = named(example, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth is not None
    values = {}
    for ref in auth["spec"]["secretTargetRef"]:
        secret = named(example, "Secret", ref["name"])
        assert secret is not None, f"TriggerAuthentication names a Secret that is not there: {ref['name']}"
        values[ref["parameter"]] = secret_data(secret)[ref["key"]]
    _, _, c = worker(example)
    url_ref = env_of(c)["KONTEXT_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    url_secret = named(example, "Secret", url_ref["name"])
    assert url_secret is not None
    url = urlsplit(secret_data(url_secret)[url_ref["key"]])
    meta = trigger["metadata"]
    assert (meta["enableTLS"] == "true") == (url.scheme == "rediss")
    assert int(meta["databaseIndex"]) == int(url.path.strip("/") or 0)
    assert values["address"] == url.netloc.rpartition("@")[2]
    assert values["password"] == url.password


def test_example_pins_the_image(example: list[Obj]) -> None:
    for _, pod in pod_templates(example):
        for c in pod["spec"]["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name.endswith("/kontext-batch"), c["image"]
            assert tag
            assert tag != "latest"


def test_references_survive_a_name_prefix(tmp_path: Path) -> None:
    """KEDA's references are rewritten with the Deployments' (base/kustomizeconfig.yaml): an overlay
    with a namePrefix, or a generated Secret's hash suffix, leaves none dangling."""
    base = os.path.relpath(KUBE / "overlays" / "example", tmp_path)  # kustomize wants a relative path
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namePrefix: night-\nresources:\n  - {base}\n"
    )
    objs = _render(tmp_path)
    (so,) = of_kind(objs, "ScaledObject")
    assert named(objs, "Deployment", so["spec"]["scaleTargetRef"]["name"]) is not None
    (trigger,) = so["spec"]["triggers"]
    auth = named(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth is not None
    for ref in auth["spec"]["secretTargetRef"]:
        assert named(objs, "Secret", ref["name"]) is not None, ref["name"]
    for _, pod in pod_templates(objs):
        for v in pod["spec"].get("volumes", []):
            for source in v.get("projected", {}).get("sources", []):
                assert named(objs, "Secret", source["secret"]["name"]) is not None
