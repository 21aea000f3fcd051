"""The FLUX.1 Kontext API: request/response model, the BFL and reseller clients, the retry policy, prices."""

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
