"""The provider of a command that has no API key and needs none: ``status``, ``results``, ``follow``, ``cancel``.

Those commands only read or mark run state in Redis. Giving them this stand-in, rather than a client,
lets an operator without the key look after a run; any API call it is asked for is a ConfigError
naming the variable, never a request sent without a key.
"""

from __future__ import annotations

from typing import NoReturn

from kontext_batch.api.models import KontextRequest, PollResult, Sample, Task
from kontext_batch.errors import ConfigError

__all__ = ["KeylessProvider"]


class KeylessProvider:
    """A :class:`~kontext_batch.api.provider.KontextProvider` whose every API call raises ConfigError."""

    output_formats: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name

    def _refuse(self) -> NoReturn:
        raise ConfigError("no API key: set KONTEXT_API_KEY")

    def submit(self, endpoint: str, request: KontextRequest) -> Task:
        self._refuse()

    def poll(self, polling_url: str) -> PollResult:
        self._refuse()

    def download(self, sample_url: str) -> Sample:
        self._refuse()

    def close(self) -> None:
        return None
