"""The emulator validates submits as BFL's FastAPI does: 422 bodies built from the published spec.

Given BFL's OpenAPI for flux-kontext-max, when a request breaks one constraint of one property,
then the emulator answers 422 with FastAPI's ``{"detail": [{"loc": ["body", field], ...}]}``; auth
problems answer 403 with a string detail, before the body is looked at.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kontext_batch.emulator import Emulator, EmulatorConfig
from tests.conftest import unavailable
from tests.emulator_fixtures import KEY, OTHER_KEY, emu, fast_config, http, submit

__all__ = ["emu", "http"]  # fixtures used by name

# BFL's published OpenAPI lives in shared/reference beside the checkout (not copied into the repo).
SPEC_NAME = "bfl-openapi-kontext-max.yaml"
ROOT = Path(__file__).resolve().parents[1]


def _origin() -> Path | None:
    """The checkout this one was cloned from, when that is a folder on this machine: a clone made
    elsewhere (CI's clean clone of main, /tmp/fresh) finds shared/ beside its origin."""
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    if not url or "://" in url or not Path(url).is_dir():
        return None
    return Path(url).resolve()


def _spec_candidates() -> list[Path]:
    found = [Path(os.environ["KONTEXT_REFERENCE_DIR"]) / SPEC_NAME] if os.environ.get("KONTEXT_REFERENCE_DIR") else []
    for checkout in (ROOT, _origin()):
        if checkout is not None:
            found += [
                checkout.parent / "shared" / "reference" / SPEC_NAME,
                checkout / "shared" / "reference" / SPEC_NAME,
            ]
    return found


SPEC_PATH = next((p for p in _spec_candidates() if p.exists()), Path(SPEC_NAME))


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        unavailable(
            f"BFL OpenAPI file {SPEC_NAME} not found in shared/reference beside the checkout or its origin "
            "(or set KONTEXT_REFERENCE_DIR)"
        )
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def _inputs_schema(spec: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = spec["components"]["schemas"]["FluxKontextProInputs"]
    return schema


def _branch(spec: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an ``anyOf`` property, with ``$ref`` resolved."""
    options = prop.get("anyOf", [prop])
    branch = next(o for o in options if o.get("type") != "null")
    if "$ref" in branch:
        name = branch["$ref"].rsplit("/", 1)[1]
        resolved: dict[str, Any] = spec["components"]["schemas"][name]
        return resolved
    return dict(branch)


def bad_values(spec: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(field, bad value, why) for every constraint the spec states on every property."""
    cases: list[tuple[str, Any, str]] = []
    for name, prop in _inputs_schema(spec)["properties"].items():
        branch = _branch(spec, prop)
        kind = branch.get("type")
        if "enum" in branch:
            cases.append((name, "gif", "not in enum"))
        if kind == "string":
            cases.append((name, 12345, "not a string"))
        if kind == "integer":
            cases.append((name, "twelve", "not an integer"))
            cases.append((name, 1.5, "a fraction"))
        if kind == "boolean":
            cases.append((name, "maybe", "not a boolean"))
        if "minimum" in branch:
            cases.append((name, branch["minimum"] - 1, "below minimum"))
        if "maximum" in branch:
            cases.append((name, branch["maximum"] + 1, "above maximum"))
        if "minLength" in branch:
            cases.append((name, "", "shorter than minLength"))
        if "maxLength" in branch:
            value = "https://example.com/" if branch.get("format") == "uri" else ""
            cases.append((name, value + "a" * branch["maxLength"], "longer than maxLength"))
        if branch.get("format") == "uri":
            cases.append((name, "not a url", "not a URI"))
    # Rules BFL documents in prose rather than in the schema.
    cases += [
        ("aspect_ratio", "30:9", "wider than 21:9"),
        ("aspect_ratio", "1:3", "taller than 9:21"),
        ("aspect_ratio", "wide", "not W:H"),
        ("aspect_ratio", "0:1", "zero side"),
        # The emulator's literal reading of "W:H": what the documents do not describe is refused,
        # so a client that leans on leniency (spaces, other separators) fails here, not in production.
        ("aspect_ratio", " 16:9", "leading space"),
        ("aspect_ratio", "16 : 9", "spaces around the colon"),
        ("aspect_ratio", "16/9", "slash separator"),
        ("aspect_ratio", "1.5:1", "decimal side"),
        ("aspect_ratio", "-16:9", "signed side"),
        ("aspect_ratio", "2101:900", "just wider than 21:9"),
        ("aspect_ratio", "9" * 40 + ":1", "absurdly long"),
        ("prompt", "x" * 10_001, "over 10,000 characters"),
    ]
    return cases


def test_every_constraint_of_the_spec_answers_422_at_its_field(
    emu: Emulator, http: httpx.Client, spec: dict[str, Any]
) -> None:
    cases = bad_values(spec)
    checked = {name for name, _, _ in cases}
    assert {"prompt", "seed", "output_format", "webhook_url", "safety_tolerance", "prompt_upsampling"} <= checked
    for name, value, why in cases:
        body = {"prompt": "a cat", name: value}
        resp = submit(http, emu.base_url, body)
        assert resp.status_code == 422, f"{name}={value!r} ({why}) answered {resp.status_code}"
        detail = resp.json()["detail"]
        assert isinstance(detail, list)
        assert ["body", name] in [e["loc"] for e in detail], f"{name} ({why}): {detail}"
        for entry in detail:
            assert isinstance(entry["msg"], str)
            assert isinstance(entry["type"], str)
    assert emu.stats()["submits"] == 0


def test_the_required_prompt_is_required(emu: Emulator, http: httpx.Client, spec: dict[str, Any]) -> None:
    assert _inputs_schema(spec)["required"] == ["prompt"]
    resp = submit(http, emu.base_url, {"seed": 1})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert resp.json()["detail"][0]["type"] == "missing"


def test_the_emulator_schema_has_the_spec_fields_and_limits(
    emu: Emulator, http: httpx.Client, spec: dict[str, Any]
) -> None:
    ours = http.get(f"{emu.base_url}/openapi.json").json()["components"]["schemas"]["FluxKontextInputs"]
    theirs = _inputs_schema(spec)
    assert set(ours["properties"]) == set(theirs["properties"])
    assert ours["required"] == theirs["required"]
    for name, prop in theirs["properties"].items():
        want = _branch(spec, prop)
        options = ours["properties"][name].get("anyOf", [ours["properties"][name]])
        got = next(o for o in options if o.get("type") != "null")
        for limit in ("minimum", "maximum", "minLength", "maxLength", "format"):
            if limit in want:
                assert got.get(limit) == want[limit], f"{name}.{limit}"
        if "default" in prop:
            assert ours["properties"][name].get("default") == prop["default"], name


def test_a_valid_body_with_every_field_is_accepted(emu: Emulator, http: httpx.Client) -> None:
    body = {
        "prompt": "ein fantastisches bild",
        "input_image": None,
        "seed": 42,
        "aspect_ratio": "21:9",
        "output_format": "webp",
        "webhook_url": "http://127.0.0.1:9/unused",
        "webhook_secret": "s",
        "prompt_upsampling": True,
        "safety_tolerance": 6,
        "some_future_field": {"ignored": True},
    }
    resp = submit(http, emu.base_url, body, endpoint="flux-kontext-max")
    assert resp.status_code == 200, resp.text
    assert resp.json()["output_mp"] == round(1568 * 672 / 1e6, 2)


@pytest.mark.parametrize("headers", [{}, {"x-key": ""}, {"x-key": OTHER_KEY}])
def test_a_missing_or_unknown_key_is_403_before_validation(
    emu: Emulator, http: httpx.Client, headers: dict[str, str]
) -> None:
    resp = http.post(f"{emu.base_url}/v1/flux-kontext-pro", headers=headers, json={"safety_tolerance": 99})
    assert resp.status_code == 403
    detail = resp.json()["detail"]
    assert isinstance(detail, str)
    assert "Authentication" in detail
    assert OTHER_KEY not in resp.text


def test_without_configured_keys_any_non_empty_key_is_accepted(http: httpx.Client) -> None:
    with Emulator(EmulatorConfig(time_scale=0.01)) as open_emu:
        assert submit(http, open_emu.base_url, {"prompt": "x"}, key="anything").status_code == 200
        assert submit(http, open_emu.base_url, {"prompt": "x"}, key="").status_code == 403


@pytest.mark.parametrize("endpoint", ["flux-kontext-pro", "flux-kontext-max", "flux-2-pro", "flux.1-dev_x"])
def test_any_endpoint_name_is_served(emu: Emulator, http: httpx.Client, endpoint: str) -> None:
    resp = submit(http, emu.base_url, {"prompt": "x"}, endpoint=endpoint)
    assert resp.status_code == 200
    assert resp.json()["cost"] == {"flux-kontext-max": 8}.get(endpoint, 4)


@pytest.mark.parametrize("endpoint", ["Flux-Pro", "-leading-dash", "get_result", "credits"])
def test_names_that_are_not_endpoints_answer_404_or_405(emu: Emulator, http: httpx.Client, endpoint: str) -> None:
    resp = submit(http, emu.base_url, {"prompt": "x"}, endpoint=endpoint)
    assert resp.status_code in (404, 405)
    assert isinstance(resp.json()["detail"], str)


def test_a_missing_id_on_get_result_is_422(emu: Emulator, http: httpx.Client) -> None:
    resp = http.get(f"{emu.base_url}/v1/get_result", headers={"x-key": KEY})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "id"]


def test_fast_config_is_what_the_suite_assumes() -> None:
    config = fast_config()
    assert config.latency_for("flux-kontext-pro").median * config.time_scale < 1


@pytest.mark.parametrize("ratio", ["21:9", "9:21", "7:3", "3:7", "16:9", "1:1", "2100:900"])
def test_ratios_at_and_inside_the_documented_range_are_accepted(emu: Emulator, http: httpx.Client, ratio: str) -> None:
    resp = submit(http, emu.base_url, {"prompt": "a cat", "aspect_ratio": ratio})
    assert resp.status_code == 200, resp.text
