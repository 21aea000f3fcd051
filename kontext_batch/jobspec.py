"""A row as workers see it: what to send, where to write, and the digest that makes re-runs skip it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kontext_batch.io.names import SIDECAR_SUFFIX

__all__ = ["JobSpec"]


@dataclass(frozen=True)
class JobSpec:
    """One manifest row, staged: ``images`` are URIs a worker on any machine can read."""

    row: int
    id: str
    endpoint: str
    prompt: str
    params: dict[str, Any]
    images: list[str]
    digests: list[str]
    output_name: str
    output_format: str
    extra: dict[str, str] = field(default_factory=dict)
    #: The input references as the manifest gave them (field -> cell), for results.csv.
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def job_key(self) -> str:
        """Same inputs and parameters -> same key; the sidecar keeps it so a re-run can skip the row."""
        material = {
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "params": self.params,
            "inputs": self.digests,
            "output_name": self.output_name,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    @property
    def sidecar_name(self) -> str:
        return self.output_name + SIDECAR_SUFFIX

    def to_json(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies every field, 40 % of a 1,000,000-row enqueue.
        return {
            "row": self.row,
            "id": self.id,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "params": self.params,
            "images": self.images,
            "digests": self.digests,
            "output_name": self.output_name,
            "output_format": self.output_format,
            "extra": self.extra,
            "inputs": self.inputs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobSpec:
        return cls(**d)
