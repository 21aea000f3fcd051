"""What the pipeline needs from an API provider, and the factory that picks one from settings.

==========  ===============================  ============================================
provider    class                            KONTEXT_API_BASE
==========  ===============================  ============================================
bfl         :class:`KontextClient`           global | eu | us | any http(s) URL
reseller    :class:`ResellerClient`          the reseller's API root (``.../v1``)
==========  ===============================  ============================================
"""

from __future__ import annotations

from typing import Final, Literal, Protocol, runtime_checkable

import httpx

from kontext_batch.api._http import TransportWrapper
from kontext_batch.api.client import KontextClient
from kontext_batch.api.models import KontextRequest, PollResult, Sample, Task
from kontext_batch.api.reseller import ResellerClient
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.errors import ConfigError
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

__all__ = ["KontextProvider", "make_provider", "output_formats_of"]


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


_PROVIDERS: Final[dict[str, type[KontextClient | ResellerClient]]] = {"bfl": KontextClient, "reseller": ResellerClient}


def _provider_class(name: str) -> type[KontextClient | ResellerClient]:
    cls = _PROVIDERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown provider {name!r}: use bfl or reseller")
    return cls


def output_formats_of(name: str) -> tuple[str, ...]:
    """The ``output_format`` values provider ``name`` accepts."""
    return _provider_class(name).output_formats


def make_provider(
    settings: Settings,
    key: Secret | None = None,
    *,
    retry: RetryPolicy | Literal["settings"] | None = "settings",
    transport: httpx.BaseTransport | None = None,
    wrap_transport: TransportWrapper | None = None,
) -> KontextProvider:
    """The provider ``settings.provider`` names, with its base, timeout and ``key`` (default: the
    settings' key). ``retry``: the settings' policy by default; None for one attempt per call.

    Raises ConfigError for an unknown provider or a missing key.
    """
    return _provider_class(settings.provider)(
        key if key is not None else settings.api_key,
        settings.api_base,
        timeout_s=settings.http_timeout_s,
        retry=RetryPolicy.from_settings(settings) if retry == "settings" else retry,
        transport=transport,
        wrap_transport=wrap_transport,
        allow_private_urls=settings.allow_private_urls,
        max_sample_bytes=settings.max_sample_bytes,
    )
