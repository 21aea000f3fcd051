"""deploy/grafana: the dashboard's queries parse, name only contract metrics, and reach the provisioned
Prometheus; the provisioning files fit docker-compose.yml's mounts.

Every panel query is written into a rule file as a recording rule and checked by promtool (without
promtool: skipped locally, failed in CI). The metric contract and its reader are in
tests/test_prometheus_rules.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.test_prometheus_rules import contract_problems, known_series, promtool, usage

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "kontext-batch.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "kontext-batch.yml"
COMPOSE = ROOT / "docker-compose.yml"

# Grafana's own variables, as promtool should see them. Any other `$` is a template variable the
# dashboard does not define.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "24h"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are left out."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query."""
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in _panels(dashboard) for t in p["targets"]]


def _as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _promtool_parses(exprs: list[str], tmp_path: Path) -> tuple[bool, str]:
    rules = {
        "groups": [{"name": "panels", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = promtool("check", "rules", str(path))
    return result.returncode == 0, result.stdout + result.stderr


def test_every_panel_has_queries_and_a_place_on_the_grid(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    assert len(panels) >= 15
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for r in dashboard["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']} has no query"
        assert all(t.get("expr", "").strip() for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]


def test_every_query_goes_to_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    (source,) = _yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_queries_use_only_grafana_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard.get("templating", {}).get("list", []) == []
    leftovers = {where: expr for where, expr in _exprs(dashboard) if "$" in _as_promql(expr)}
    assert leftovers == {}


@pytest.mark.integration
def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    ok, output = _promtool_parses([_as_promql(expr) for _, expr in _exprs(dashboard)], tmp_path)
    assert ok, output


@pytest.mark.integration
def test_the_parse_check_rejects_a_broken_query(tmp_path: Path) -> None:
    # Guards the test above: the same path must fail on a query Prometheus would refuse.
    ok, output = _promtool_parses(["sum by (status) (rate(kontext_rows_finished_total[1m])"], tmp_path)
    assert not ok
    assert "panel:q0" in output or "parse error" in output


def test_queries_use_only_contract_metrics_labels_and_values(dashboard: dict[str, Any]) -> None:
    known = known_series()
    problems = {where: found for where, expr in _exprs(dashboard) if (found := contract_problems(expr, known))}
    assert problems == {}


def test_the_dashboard_shows_what_issue_20_asks_for(dashboard: dict[str, Any]) -> None:
    used = set().union(*(usage(expr).names for _, expr in _exprs(dashboard)))
    assert {
        "kontext_active_tasks",  # throughput against the cap, per key
        "kontext_active_cap",
        "kontext_rows_finished_total",  # rows by status
        "kontext_credits_spent_total",  # credits
        "kontext_row_duration_seconds_bucket",  # row latency percentiles
        "kontext_waiting_rows",  # waiting rows
        "kontext_api_rate_limited_total",  # 429s
        "kontext_redis_used_memory_bytes",  # Redis memory against maxmemory
        "kontext_redis_maxmemory_bytes",
        "kontext_run_last_finished_timestamp_seconds",  # last run's outcome and time
    } <= used
    quantiles = {
        float(q)
        for _, expr in _exprs(dashboard)
        for q in re.findall(r"histogram_quantile\(\s*([\d.]+)\s*,.*kontext_row_duration_seconds_bucket", expr)
    }
    assert {0.5, 0.9, 0.99} <= quantiles


def test_provisioning_matches_the_compose_mounts() -> None:
    services = _yaml(COMPOSE)["services"]
    grafana = services["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    (provider,) = _yaml(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert (ROOT / mounts[provider["options"]["path"]]).resolve() == DASHBOARD.parent
    (source,) = _yaml(DATASOURCES)["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname in services  # the compose service name, resolved on the compose network
    prometheus = services[str(url.hostname)]
    assert any(str(p).endswith(f":{url.port}") for p in prometheus["ports"])
    assert grafana["depends_on"][url.hostname]["condition"] == "service_healthy"
