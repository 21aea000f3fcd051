"""A job spec goes to Redis and back whole: every field is in its JSON."""

from __future__ import annotations

from dataclasses import fields

from kontext_batch.jobspec import JobSpec


def test_jobspec_json_names_every_field_and_round_trips() -> None:
    spec = JobSpec(
        3,
        "id3",
        "flux-kontext-pro",
        "p",
        {"seed": 1},
        ["u"],
        ["d"],
        "o.png",
        "png",
        {"x": "y"},
        {"input_image": "a.png"},
    )
    assert set(spec.to_json()) == {f.name for f in fields(JobSpec)}
    assert JobSpec.from_json(spec.to_json()) == spec
