"""What the pipeline needs from an API provider, and the factory that picks one from settings.

==========  ===============================  ============================================
provider    class                            KONTEXT_API_BASE
==========  ===============================  ============================================
bfl         :class:`KontextClient`           global | eu | us | any http(s) URL
reseller    :class:`ResellerClient`          the reseller's API root (``.../v1``)
==========  ===============================  ============================================
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import httpx

from kontext_batch.api.client import KontextClient
from kontext_batch.api.models import KontextRequest, PollResult, Sample, Task
from kontext_batch.api.reseller import ResellerClient
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.errors import ConfigError
from kontext_batch.settings import Settings

__all__ = ["KontextProvider", "make_provider"]


@runtime_checkable
class KontextProvider(Protocol):
    """Submit, poll, download: the three calls every provider dialect offers. Thread-safe."""

    name: str
    output_formats: tuple[str, ...]  # what ``output_format`` may ask for

    def submit(self, endpoint: str, request: KontextRequest) -> Task:
        """Create a task; raises RequestInvalid before sending what the dialect cannot express."""
        ...

    def poll(self, polling_url: str) -> PollResult:
        """Look at a task once, at the ``Task.polling_url`` submit returned."""
        ...

    def download(self, sample_url: str) -> Sample:
        """Fetch the image of a Ready task."""
        ...

    def close(self) -> None: ...


def make_provider(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> KontextProvider:
    """The provider ``settings.provider`` names, with its base, key, timeout and retry policy.

    Raises ConfigError for an unknown provider or a missing key.
    """
    providers: dict[str, type[KontextClient | ResellerClient]] = {"bfl": KontextClient, "reseller": ResellerClient}
    cls = providers.get(settings.provider)
    if cls is None:
        raise ConfigError(f"unknown provider {settings.provider!r}: use bfl or reseller")
    return cls(
        settings.api_key,
        settings.api_base,
        timeout_s=settings.http_timeout_s,
        retry=RetryPolicy.from_settings(settings),
        transport=transport,
        allow_private_urls=settings.allow_private_urls,
        max_sample_bytes=settings.max_sample_bytes,
    )
