"""docker-compose.yml: valid against the compose spec (offline), and shaped the way the README and
docs/monitoring.md say: pinned images, healthchecks and the waits on them, rotated logs, credentials
only as secret files (throwaway ones only in the emulator bundle), JSON logs, Flower behind a login.

No Docker needed: the spec check is check-jsonschema's vendored compose-spec schema, and the rest
reads the YAML (and runs the workers' entrypoint script with sh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS = PROMETHEUS_DIR / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
EMULATOR_ENV = ROOT / "deploy" / "emulator" / "emulator.env"

# Services that run once and exit: no healthcheck, others wait for them to complete.
ONE_SHOT = {"createbucket", "cli"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_the_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards the test above: the validator must be able to fail on this kind of mistake.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("stop_grace_period:", "stop_grace_periodd:"))
    result = _check_jsonschema(broken)
    assert result.returncode != 0
    assert "stop_grace_periodd" in result.stdout + result.stderr


def test_all_services_are_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "minio", "createbucket", "worker", "flower", "prometheus", "grafana", "emulator", "cli"} <= set(
        services
    )


def test_worker_scales_no_fixed_name_or_host_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "build" in worker
    assert _command(worker) == ["kontext-batch", "worker"]


def test_worker_environment_points_at_the_stack(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["worker"])
    assert env["KONTEXT_REDIS_URL"] == "redis://redis:6379/0"
    assert env["KONTEXT_OUTPUT"].startswith("s3://kontext/")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ALLOW_HTTP"] == "true"
    # The keys are a secret file (the app reads a path in KONTEXT_API_KEYS); the API base has no default.
    assert env["KONTEXT_API_KEYS"] == "/run/secrets/kontext_api_keys"
    assert "KONTEXT_API_KEY" not in env
    assert env["KONTEXT_API_BASE"].startswith("${KONTEXT_API_BASE:?")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert env["KONTEXT_TASK_EVENTS"] == "1"  # Flower, beside them, needs the workers' task events
    assert env["KONTEXT_LOG_FORMAT"] == "json"


def _entrypoint_script(svc: dict[str, Any]) -> list[str]:
    """The service's entrypoint as sh would run it (compose turns $$ into $)."""
    return [str(part).replace("$$", "$") for part in svc["entrypoint"]]


@pytest.mark.parametrize("name", ["worker", "cli"])
def test_app_containers_get_their_key_file_and_s3_credentials_as_secrets(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    svc = services[name]
    assert {"kontext_api_keys", "s3_access_key_id", "s3_secret_access_key"} <= set(svc["secrets"])
    entrypoint = _entrypoint_script(svc)
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    assert "/run/secrets/s3_access_key_id" in entrypoint[2]
    assert "/run/secrets/s3_secret_access_key" in entrypoint[2]


@pytest.mark.integration
def test_the_secrets_entrypoint_exports_the_files_and_runs_the_command(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    # Run the worker's entrypoint with sh, the secret files in a temporary folder, and a command
    # that prints what it got: the credentials in its environment, its arguments unchanged.
    (tmp_path / "s3_access_key_id").write_text("AKIDEXAMPLE", encoding="utf-8")
    (tmp_path / "s3_secret_access_key").write_text("secret with spaces\n", encoding="utf-8")
    sh, flag, script, *rest = _entrypoint_script(services["worker"])
    script = script.replace("/run/secrets/", f"{tmp_path}/")
    probe = [
        sys.executable,
        "-c",
        "import os, sys; e = os.environ; print(e['AWS_ACCESS_KEY_ID'], e['AWS_SECRET_ACCESS_KEY'], sys.argv[1:], "
        "sep='|')",
        "a b",
        "c",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [sh, flag, script, *rest, *probe], capture_output=True, text=True, timeout=30, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AKIDEXAMPLE|secret with spaces|['a b', 'c']"
    # A missing file stops the container instead of starting it without credentials.
    (tmp_path / "s3_secret_access_key").unlink()
    result = subprocess.run(
        [sh, flag, script, *rest, *probe], capture_output=True, text=True, timeout=30, check=False, env=env
    )
    assert result.returncode != 0
    assert "AKIDEXAMPLE" not in result.stdout


def test_credentials_are_secret_files_in_one_required_folder(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    secrets = compose["secrets"]
    assert {"kontext_api_keys", "s3_access_key_id", "s3_secret_access_key", "grafana_admin_password"} <= set(secrets)
    for name, secret in secrets.items():
        assert secret["file"].startswith("${KONTEXT_SECRETS_DIR:?"), name
        assert secret["file"].endswith(f"/{name}"), name
    used = {s for svc in services.values() for s in svc.get("secrets", [])}
    assert used == set(secrets)  # every secret used, none undefined
    minio = _env(services["minio"])
    assert minio["MINIO_ROOT_USER_FILE"] == "s3_access_key_id"
    assert minio["MINIO_ROOT_PASSWORD_FILE"] == "s3_secret_access_key"
    assert _env(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"


# Variables that hold a credential (their names end so): KONTEXT_API_KEYS, AWS_SECRET_ACCESS_KEY, FLOWER_BASIC_AUTH...
_CREDENTIAL_VAR = re.compile(r"(?:^|_)(?:KEYS?|KEY_ID|SECRET|PASSWORD|TOKEN|AUTH)$")


def test_no_credential_has_a_default_or_a_value_in_the_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    defaults = [m.group(1) for m in re.finditer(r"\$\{(\w+):?-", text) if _CREDENTIAL_VAR.search(m.group(1))]
    assert defaults == []
    # The emulator bundle's throwaway values stay in the bundle.
    bundle = _env_file(EMULATOR_ENV)
    throwaways = [bundle["FLOWER_BASIC_AUTH"]] + [
        (ROOT / bundle["KONTEXT_SECRETS_DIR"] / name).read_text(encoding="utf-8").strip()
        for name in ("kontext_api_keys", "s3_secret_access_key", "grafana_admin_password")
    ]
    assert [t for t in throwaways if t in text] == []
    for name, svc in services.items():
        for var, value in _env(svc).items():
            if _CREDENTIAL_VAR.search(var):
                # Only a required ${VAR:?...} from the operator, or the path of a secret file.
                assert value.startswith(("${", "/run/secrets/")), (name, var)
                assert ":-" not in value, (name, var)


def test_the_emulator_bundle_sets_every_required_variable_and_secret(compose: dict[str, Any]) -> None:
    env = _env_file(EMULATOR_ENV)
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text(encoding="utf-8")))
    assert required == {"KONTEXT_SECRETS_DIR", "KONTEXT_API_BASE", "FLOWER_BASIC_AUTH"}
    assert required <= set(env)
    assert env["KONTEXT_API_BASE"] == "http://emulator:8765"  # its throwaway key only ever goes there
    folder = (ROOT / env["KONTEXT_SECRETS_DIR"]).resolve()
    assert folder.is_relative_to(ROOT / "deploy" / "emulator")
    for name in compose["secrets"]:
        assert (folder / name).read_text(encoding="utf-8").strip(), name
    assert len((folder / "s3_secret_access_key").read_text(encoding="utf-8")) >= 8  # MinIO's minimum
    assert re.fullmatch(r"[^:]+:.+", env["FLOWER_BASIC_AUTH"])


_PINNED = re.compile(r"v?\d+\.\d+\.\d+(-[a-z0-9]+)?|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z")


def test_every_image_is_pinned_to_a_release(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = str(svc["image"])
        _, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        if "build" in svc:
            assert image == "kontext-batch:local", name  # built here from the Dockerfile
            continue
        assert tag != "latest", name
        assert _PINNED.fullmatch(tag), f"{name}: {image} is not an exact release"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart", "no") == "no" or "tools" in svc.get("profiles", []), name
            continue
        check = svc.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert check["test"] not in (["NONE"], "NONE"), name
        assert not check.get("disable", False), name
        assert svc["restart"] == "unless-stopped", name


def test_every_dependency_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, spec in deps.items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == wanted, (name, dep)
            assert "healthcheck" in services[dep] or dep in ONE_SHOT, (name, dep)


def test_every_service_rotates_its_logs(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        logging = svc.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 2, name


def test_host_ports_are_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_worker_health_is_its_readyz_on_the_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    port = _env(worker)["KONTEXT_METRICS_PORT"]
    test = " ".join(worker["healthcheck"]["test"])
    assert test.startswith("CMD python -c ")  # the image has python, not curl or wget
    assert f"http://127.0.0.1:{port}/readyz" in test


def test_worker_waits_for_redis_and_the_bucket(services: dict[str, dict[str, Any]]) -> None:
    deps = services["worker"]["depends_on"]
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["createbucket"]["condition"] == "service_completed_successfully"
    # The emulator is optional (profile): the worker must still start without it.
    assert deps["emulator"]["required"] is False


def test_redis_persists_with_aof_on_a_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = _command(redis)
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--maxmemory" in cmd  # a limit, or noeviction never applies and the 90 % alert never fires
    volumes = [str(v) for v in redis["volumes"]]
    assert any(v.endswith(":/data") for v in volumes)
    assert volumes[0].split(":")[0] in compose["volumes"]
    assert "healthcheck" in redis


def test_bucket_is_created_by_a_one_shot_mc_service(services: dict[str, dict[str, Any]]) -> None:
    mc = services["createbucket"]
    assert mc["image"].startswith("minio/mc")
    assert mc["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(str(part) for part in mc["entrypoint"])
    assert "mc mb --ignore-existing local/kontext" in script
    assert "healthcheck" in services["minio"]


def test_emulator_is_only_in_the_emulator_profile(services: dict[str, dict[str, Any]]) -> None:
    emulator = services["emulator"]
    assert emulator["profiles"] == ["emulator"]
    cmd = _command(emulator)
    assert cmd[:2] == ["kontext-batch", "emulator"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8765"
    for name, svc in services.items():
        if name not in ("emulator", "cli"):
            assert "profiles" not in svc, f"{name} would not start with a plain `docker compose up`"


def test_cli_is_a_tools_profile_service_with_the_manifests(services: dict[str, dict[str, Any]]) -> None:
    cli = services["cli"]
    assert cli["profiles"] == ["tools"]
    assert cli["entrypoint"][-1] == "kontext-batch"  # after the secrets entrypoint: `run --rm cli status` works
    assert cli["entrypoint"][:3] == services["worker"]["entrypoint"][:3]
    assert _env(cli)["KONTEXT_REDIS_URL"] == _env(services["worker"])["KONTEXT_REDIS_URL"]
    assert any(str(v).startswith("./manifests:") for v in cli["volumes"])


def test_flower_watches_the_same_broker(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower")
    env = _env(flower)
    assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert any(str(p).endswith("5555:5555") for p in flower["ports"])
    # A login the operator must set; the API is never opened to anonymous callers.
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])  # the one page without a login


def test_dockerfile_is_slim_non_root_and_holds_no_secrets() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms
    assert all(f == "python:3.11-slim" for f in froms)
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert "KONTEXT_API_KEY" not in text
    assert "AWS_SECRET_ACCESS_KEY" not in text


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    # Where the compose plugin exists, it is the authority; a CLI without the plugin or daemon is fine.
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    result = subprocess.run(
        [
            *["docker", "compose", "-f", str(COMPOSE), "--env-file", str(EMULATOR_ENV)],
            *["--profile", "emulator", "--profile", "tools", "config", "--quiet"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_workers_serve_metrics_on_the_compose_network_only(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["worker"])
    assert env["KONTEXT_METRICS_PORT"].isdigit()
    assert env["KONTEXT_METRICS_HOST"] == "0.0.0.0"  # reachable by Prometheus's container
    assert "ports" not in services["worker"]  # ...and not published on the host


def test_prometheus_scrapes_every_worker_replica(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prom["volumes"]}
    # The whole folder: prometheus.yml and the rules.yml its rule_files names, relative to it.
    assert (ROOT / mounts["/etc/prometheus"]).resolve() == PROMETHEUS_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in _command(prom)
    assert mounts["/prometheus"] in compose["volumes"]
    assert all(str(p).startswith("127.0.0.1:") for p in prom["ports"])

    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kontext-worker"]
    (sd,) = job["dns_sd_configs"]
    # Replicas have no names: Docker's DNS answers the service name with one A record each.
    assert sd["names"] == ["worker"]
    assert sd["type"] == "A"
    assert str(sd["port"]) == _env(services["worker"])["KONTEXT_METRICS_PORT"]
    assert all((PROMETHEUS_DIR / f).is_file() for f in config["rule_files"])
