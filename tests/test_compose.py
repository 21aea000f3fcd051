"""docker-compose.yml: valid against the compose spec (offline), and shaped the way the README says.

No Docker needed: the spec check is check-jsonschema's vendored compose-spec schema, and the rest
reads the YAML.
"""

from __future__ import annotations

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


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards the test above: the validator must be able to fail on this kind of mistake.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("stop_grace_period:", "stop_grace_periodd:"))
    result = _check_jsonschema(broken)
    assert result.returncode != 0
    assert "stop_grace_periodd" in result.stdout + result.stderr


def test_all_services_are_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "minio", "createbucket", "worker", "flower", "prometheus", "emulator", "cli"} <= set(services)


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
    # The key comes from the host's environment, never from the file.
    assert env["KONTEXT_API_KEY"].startswith("${KONTEXT_API_KEY")
    assert env["KONTEXT_API_BASE"] == "${KONTEXT_API_BASE:-http://emulator:8765}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert env["KONTEXT_TASK_EVENTS"] == "1"  # Flower, beside them, needs the workers' task events


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
    assert cli["entrypoint"] == ["kontext-batch"]
    assert _env(cli)["KONTEXT_REDIS_URL"] == _env(services["worker"])["KONTEXT_REDIS_URL"]
    assert any(str(v).startswith("./manifests:") for v in cli["volumes"])


def test_flower_watches_the_same_broker(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower")
    assert _env(flower)["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert any(str(p).endswith("5555:5555") for p in flower["ports"])


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


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    # Where the compose plugin exists, it is the authority; a CLI without the plugin or daemon is fine.
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--profile", "emulator", "--profile", "tools", "config", "--quiet"],
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
