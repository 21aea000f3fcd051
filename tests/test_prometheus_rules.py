"""deploy/prometheus: the alert rules load and pass their unit tests, and name only contract metrics.

promtool (Prometheus's own checker) is the authority on PromQL and on what the rules do: these tests
run ``promtool check`` and ``promtool test rules`` on the repository's files. Without promtool they
skip locally and fail in CI (scripts/setup installs it). The metric contract is
deploy/prometheus/metrics-contract.yml; tests/test_grafana.py holds the dashboard to it too, with the
helpers here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
CONTRACT = PROMETHEUS_DIR / "metrics-contract.yml"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        unavailable("promtool not installed (scripts/setup installs it)")
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# --- The contract and what an expression uses --------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A series name a rule or panel may select, with the labels it has and their closed value sets."""

    labels: frozenset[str]
    values: dict[str, frozenset[str]] = field(default_factory=dict)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def contract_metrics() -> dict[str, dict[str, Any]]:
    metrics = _yaml(CONTRACT)["metrics"]
    assert isinstance(metrics, dict)
    return metrics


def recorded_names() -> set[str]:
    return {r["record"] for g in _yaml(RULES)["groups"] for r in g["rules"] if "record" in r}


def known_series() -> dict[str, Series]:
    """Every selectable name: contract metrics (histograms as _bucket, _count, _sum), Prometheus's own
    series, and the recording rules of rules.yml (which have no labels)."""
    doc = _yaml(CONTRACT)
    known: dict[str, Series] = {}
    for name, spec in doc["metrics"].items():
        labels = frozenset(spec["labels"]) | TARGET_LABELS
        values = {k: frozenset(v) for k, v in (spec.get("values") or {}).items()}
        if spec["type"] == "histogram":
            known[f"{name}_bucket"] = Series(labels | {"le"}, values)
            known[f"{name}_count"] = Series(labels, values)
            known[f"{name}_sum"] = Series(labels, values)
        else:
            known[name] = Series(labels, values)
    for name, spec in doc["builtin"].items():
        known[name] = Series(frozenset(spec["labels"]))
    for name in recorded_names():
        known[name] = Series(frozenset())
    return known


_MATCHERS = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan"}
)
_LITERAL_ALTERNATIVES = re.compile(r"[\w*-]+(?:\|[\w*-]+)*")


@dataclass
class Usage:
    """What a PromQL expression refers to."""

    names: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, label, op, value
    grouping: set[str] = field(default_factory=set)


def usage(expr: str) -> Usage:
    """The series names, label matchers and grouping labels of ``expr`` (a regex reading, enough for
    the rules and panels here; promtool checks the syntax itself)."""
    found = Usage()
    for m in _MATCHERS.finditer(expr):
        name = m.group(1) or ""
        for label, op, value in _MATCHER.findall(m.group(2)):
            if label == "__name__":
                name = value
            found.matchers.append((name, label, op, value))
    rest = _MATCHERS.sub(lambda m: f" {m.group(1) or ''} ", expr)
    rest = _RANGE.sub(" ", rest)
    for m in _GROUPING.finditer(rest):
        found.grouping |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    rest = _GROUPING.sub(" ", rest)
    for m in _IDENT.finditer(rest):
        word = m.group()
        if word.lower() in _KEYWORDS or rest[m.end() :].lstrip().startswith("("):
            continue  # a keyword or a function
        found.names.add(word)
    return found


def contract_problems(expr: str, known: dict[str, Series]) -> list[str]:
    """Why ``expr`` steps outside the contract: unknown names, labels or label values. Empty: it does not."""
    used = usage(expr)
    problems = [f"unknown metric {name}" for name in sorted(used.names - set(known))]
    if not used.names:
        problems.append("selects no metric")
    for name, label, op, value in used.matchers:
        series = known.get(name)
        if series is None:
            continue
        if label not in series.labels:
            problems.append(f"{name} has no label {label!r}")
            continue
        allowed = series.values.get(label)
        if allowed is not None and _LITERAL_ALTERNATIVES.fullmatch(value):
            bad = [v for v in value.split("|") if v not in allowed]
            problems += [f"{name}{{{label}{op}...}}: {v!r} is not one of {sorted(allowed)}" for v in bad]
    labels = frozenset().union(*(known[n].labels for n in used.names if n in known)) | TARGET_LABELS
    problems += [
        f"groups by {label!r}, which none of {sorted(used.names)} has" for label in sorted(used.grouping - labels)
    ]
    return problems


def test_the_contract_reader_sees_names_labels_and_values() -> None:
    # Guards the tests that rely on it: each kind of mistake must be caught.
    known = known_series()
    assert contract_problems('sum by (status) (rate(kontext_rows_finished_total{status="failed"}[5m]))', known) == []
    assert contract_problems("rate(kontext_rows_finishd_total[5m])", known) == [
        "unknown metric kontext_rows_finishd_total"
    ]
    assert contract_problems('kontext_rows_finished_total{state="failed"}', known) == [
        "kontext_rows_finished_total has no label 'state'"
    ]
    assert contract_problems('kontext_rows_finished_total{status=~"failed|moderate"}', known) == [
        "kontext_rows_finished_total{status=~...}: 'moderate' is not one of "
        "['budget', 'cancelled', 'failed', 'invalid', 'moderated', 'skipped', 'succeeded']"
    ]
    assert contract_problems("max by (pool) (kontext_run_rows_left)", known) == [
        "groups by 'pool', which none of ['kontext_run_rows_left'] has"
    ]
    assert (
        contract_problems("histogram_quantile(0.9, sum by (le) (rate(kontext_row_duration_seconds_bucket[5m])))", known)
        == []
    )
    assert contract_problems("vector(1)", known) == ["selects no metric"]


# --- The rule files ----------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(RULES)["groups"] for r in g["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


@pytest.mark.integration
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_promtool_accepts_the_config_and_finds_its_rule_files() -> None:
    # `check config` also loads every rule_files entry, relative to the config's folder, as the server does.
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@pytest.mark.integration
def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_the_unit_tests_fail_when_the_deadline_moves(tmp_path: Path) -> None:
    # Guards the test above: rules_test.yml must depend on the deadline it claims to test.
    rules = RULES.read_text(encoding="utf-8")
    assert rules.count("expr: vector(6)") == 1
    (tmp_path / "rules.yml").write_text(rules.replace("expr: vector(6)", "expr: vector(7)"), encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    result = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "KontextNightlyRunLate" in result.stdout + result.stderr


@pytest.mark.integration
def test_the_deadline_takes_fractions_of_an_hour(tmp_path: Path) -> None:
    # docs/monitoring.md says 7.5 means 07:30 UTC.
    rules = RULES.read_text(encoding="utf-8").replace("expr: vector(6)", "expr: vector(7.5)")
    (tmp_path / "rules.yml").write_text(rules, encoding="utf-8")
    cases = [("31h29m", 27000), ("31h30m", 113400)]  # day 2, 07:29 (day 1's deadline) and 07:30
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "15m",
                "input_series": [{"series": 'up{job="kontext-worker"}', "values": "1x200"}],
                "promql_expr_test": [
                    {
                        "expr": "kontext:nightly_deadline_timestamp_seconds",
                        "eval_time": at,
                        "exp_samples": [{"labels": "kontext:nightly_deadline_timestamp_seconds", "value": value}],
                    }
                    for at, value in cases
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test), encoding="utf-8")
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_and_a_one_line_runbook() -> None:
    alerts = _alerts()
    assert len(alerts) >= 10
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = alert.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        runbook = annotations.get("runbook", "")
        assert runbook.strip(), f"{name}: no runbook"
        assert "\n" not in runbook.strip(), f"{name}: the runbook is one line"


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    names = {a["alert"] for a in _alerts()}
    assert {
        "KontextNightlyRunLate",
        "KontextLastRunFailed",
        "KontextFailedRowsHigh",
        "KontextRowsWaitForUnheldKey",
        "KontextRateLimited",
        "KontextBudgetNearlySpent",
        "KontextRedisMemoryHigh",
        "KontextRunStalled",
        "KontextWorkerDown",
        "KontextNoLiveWorkers",
    } <= names


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _yaml(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_the_nightly_deadline_is_one_setting_at_the_top() -> None:
    (setting,) = [r for r in _rules() if r.get("record") == "kontext:nightly_deadline_hour_utc"]
    assert re.fullmatch(r"vector\(\d+(\.\d+)?\)", setting["expr"].strip())
    (late,) = [a for a in _alerts() if a["alert"] == "KontextNightlyRunLate"]
    assert "kontext:nightly_deadline_timestamp_seconds" in late["expr"]


def test_rules_use_only_contract_metrics_labels_and_values() -> None:
    known = known_series()
    problems = {}
    for rule in _rules():
        if found := contract_problems(rule["expr"], known):
            problems[rule.get("alert") or rule["record"]] = found
    # The settings are constants, and select nothing on purpose.
    for name in ("kontext:nightly_deadline_hour_utc", "kontext:nightly_window_hours"):
        assert problems.pop(name, None) == ["selects no metric"], name
    assert problems == {}


def test_unit_test_input_series_are_contract_series() -> None:
    # A typo in an input series would make a "does not fire" case pass for the wrong reason.
    known = known_series()
    problems = {}
    for case in _yaml(RULES_TEST)["tests"]:
        for series in case["input_series"]:
            if found := contract_problems(series["series"], known):
                problems[series["series"]] = found
    assert problems == {}


def test_counters_are_summed_and_cluster_gauges_are_never_summed_raw() -> None:
    # Cluster gauges are exported once, maybe twice during a hand-over: sum(gauge) would double them.
    # They go through max (by their labels) first; counters and histograms are rates, summed.
    metrics = contract_metrics()
    cluster = {n for n, m in metrics.items() if m["aggregate"] == "max"}
    for rule in _rules():
        for name in cluster:
            raw_sum = rf"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(\s*{name}\b"
            assert not re.search(raw_sum, rule["expr"]), (rule.get("alert") or rule["record"], name)
    assert all(m["type"] in {"counter", "histogram"} for n, m in metrics.items() if m["aggregate"] == "sum")
    assert all(n.endswith("_total") for n, m in metrics.items() if m["type"] == "counter")


def test_the_monitoring_doc_covers_every_metric_alert_and_runbook() -> None:
    # docs/monitoring.md lists every contract metric and every alert with its runbook, verbatim.
    text = MONITORING_DOC.read_text(encoding="utf-8")
    missing = [name for name in contract_metrics() if f"`{name}`" not in text]
    missing += [a["alert"] for a in _alerts() if f"`{a['alert']}`" not in text]
    missing += [a["annotations"]["runbook"] for a in _alerts() if a["annotations"]["runbook"] not in text]
    assert "kontext:nightly_deadline_hour_utc" in text
    assert missing == []
