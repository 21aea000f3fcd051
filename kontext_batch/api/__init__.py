"""The FLUX.1 Kontext API: request/response model, the BFL and reseller clients, the retry policy, prices.

The names below load on first use: importing a submodule (the manifest check reads
:mod:`.models` and :mod:`.prices`) runs this file first, and eager imports here made it load the
HTTP clients too (httpx, tenacity: ~55 ms of the CLI's start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kontext_batch.api.client import KontextClient
    from kontext_batch.api.models import KontextRequest, PollResult, Sample, Status, Task, endpoint_for_model
    from kontext_batch.api.provider import KontextProvider, make_provider
    from kontext_batch.api.reseller import ResellerClient
    from kontext_batch.api.retry import RetryPolicy, is_retryable

__all__ = [
    "KontextClient",
    "KontextProvider",
    "KontextRequest",
    "PollResult",
    "ResellerClient",
    "RetryPolicy",
    "Sample",
    "Status",
    "Task",
    "endpoint_for_model",
    "is_retryable",
    "make_provider",
]

_HOME: Final = {
    "KontextClient": "client",
    "KontextProvider": "provider",
    "make_provider": "provider",
    "ResellerClient": "reseller",
    "RetryPolicy": "retry",
    "is_retryable": "retry",
    **dict.fromkeys(["KontextRequest", "PollResult", "Sample", "Status", "Task", "endpoint_for_model"], "models"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
