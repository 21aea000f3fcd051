"""The request's rules (api/models.py's table) hold before anything is sent, for every field."""

from __future__ import annotations

from typing import Any

import pytest

from kontext_batch.api.models import KontextRequest
from kontext_batch.errors import RequestInvalid

pytestmark = pytest.mark.unit

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": " \t"}, "prompt", "blank"),
    ({"prompt": "x" * 10_001}, "prompt", "at most 10,000"),
    ({"prompt": 7}, "prompt", "string"),
    ({"input_image": ""}, "input_image", "not empty"),
    ({"input_image_3": "data:image/png;base64,AAAA"}, "input_image_3", "data: URI"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"seed": 2**63}, "seed", "less than or equal to"),
    ({"seed": True}, "seed", "integer"),
    ({"seed": 1.5}, "seed", "integer"),
    ({"aspect_ratio": "22:9"}, "aspect_ratio", "between 21:9 and 9:21"),
    ({"aspect_ratio": "wide"}, "aspect_ratio", "W:H"),
    ({"aspect_ratio": 16}, "aspect_ratio", "string"),
    ({"output_format": "gif"}, "output_format", "jpeg, png, webp"),
    ({"webhook_url": "ftp://hook.test/x"}, "webhook_url", "http(s)"),
    ({"webhook_url": "https://h.test/" + "x" * 2083}, "webhook_url", "at most 2,083"),
    ({"webhook_secret": 5}, "webhook_secret", "string"),
    ({"prompt_upsampling": "yes"}, "prompt_upsampling", "true or false"),
    ({"prompt_upsampling": 1}, "prompt_upsampling", "true or false"),
    ({"safety_tolerance": 7}, "safety_tolerance", "less than or equal to 6"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"guidance_scale": 10.5}, "guidance_scale", "between 1 and 10"),
    ({"guidance_scale": float("nan")}, "guidance_scale", "number"),
    ({"negative_prompt": ["blur"]}, "negative_prompt", "string"),
    ({"colour": "red"}, "colour", "not a request field"),
]


@pytest.mark.parametrize(("fields", "field", "needle"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_each_rule_refuses_with_the_field_named(fields: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        KontextRequest.build(**{"prompt": "x", **fields})
    assert [e.field for e in info.value.errors] == [field]
    assert needle in info.value.errors[0].msg


def test_every_bad_field_is_listed_in_the_tables_order() -> None:
    with pytest.raises(RequestInvalid) as info:
        KontextRequest.build(prompt=" ", seed=-1, output_format="bmp", steps=99)
    assert [e.field for e in info.value.errors] == ["prompt", "seed", "output_format", "steps"]


def test_a_missing_prompt_and_a_direct_construction_are_refused_too() -> None:
    with pytest.raises(RequestInvalid) as info:
        KontextRequest.build(seed=1)
    assert [e.field for e in info.value.errors] == ["prompt"]
    with pytest.raises(RequestInvalid):
        KontextRequest(prompt="x", safety_tolerance=9)  # not only build() checks


def test_edges_pass_and_values_take_their_normal_form() -> None:
    request = KontextRequest.build(
        prompt="x" * 10_000,
        seed=0,
        aspect_ratio=" 9 : 21 ",
        output_format="webp",
        safety_tolerance=6,
        steps=50,
        guidance_scale=1,
        prompt_upsampling=False,
    )
    assert request.aspect_ratio == "9:21"
    assert request.guidance_scale == 1.0
    assert isinstance(request.guidance_scale, float)
    assert request.set_fields() == {
        "prompt": "x" * 10_000,
        "seed": 0,
        "aspect_ratio": "9:21",
        "output_format": "webp",
        "prompt_upsampling": False,
        "safety_tolerance": 6,
        "steps": 50,
        "guidance_scale": 1.0,
    }


def test_the_webhook_secret_shows_only_in_the_body_it_is_sent_in() -> None:
    request = KontextRequest.build(prompt="p", webhook_url="https://hook.test/x", webhook_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(request)
    assert "s3cr3t-value" not in str(request.set_fields())
    assert request.bfl_body() == {"prompt": "p", "webhook_url": "https://hook.test/x", "webhook_secret": "s3cr3t-value"}


def test_a_request_is_frozen() -> None:
    request = KontextRequest.build(prompt="p")
    with pytest.raises(AttributeError):
        request.prompt = "q"  # type: ignore[misc]
