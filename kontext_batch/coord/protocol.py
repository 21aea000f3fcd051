"""Which version of kontext-batch a process runs, and which protocol it speaks: what its heartbeat
announces, so that two versions serving one Redis during a rolling update find each other out.

:data:`PROTOCOL` is the number that changes when a change could be misread by the other version:
the task messages (names, arguments), the Redis keys or their fields, the Lua scripts' contracts.
The package version changes on every release; the protocol only when that is true, so that most
upgrades roll out with old and new workers side by side.

What each side does about another protocol:

- ``run`` and ``retry`` refuse to queue for a key whose live holders speak another protocol
  (ConfigError, exit 2, naming them): the rows would be half handled by each.
- A worker that sees a live holder of its keys with a *newer* protocol stops taking steps
  (it finishes those in hand) and lets go of its keys: the newer workers take the queue over.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

from kontext_batch.errors import ConfigError

__all__ = ["PROTOCOL", "VERSION", "Speaker", "describe", "newer", "refuse_other_protocols", "speaker_of"]

PROTOCOL: Final = 1


def _version() -> str:
    try:
        return metadata.version("kontext-batch")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION: Final = _version()


@dataclass(frozen=True)
class Speaker:
    """A live process and what it speaks."""

    proc: str
    version: str
    protocol: int


def speaker_of(proc: str, doc: Any) -> Speaker:
    """The speaker a heartbeat document describes. Heartbeats from before protocol 1 carried only
    the caps of their keys: protocol 0, version unknown."""
    if isinstance(doc, dict) and isinstance(doc.get("protocol"), int):
        return Speaker(proc, str(doc.get("version") or "unknown"), int(doc["protocol"]))
    return Speaker(proc, "older than protocol 1", 0)


def describe(speakers: list[Speaker]) -> str:
    """``host-1-ab12 (kontext-batch 0.1.0, protocol 0), ...`` for an error line."""
    return ", ".join(f"{s.proc} (kontext-batch {s.version}, protocol {s.protocol})" for s in speakers)


def refuse_other_protocols(speakers: list[Speaker]) -> None:
    """What ``run`` and ``retry`` ask before queueing: ConfigError (exit 2) naming the live holders
    of the run's keys that speak another protocol than this process."""
    other = [s for s in speakers if s.protocol != PROTOCOL]
    if other:
        raise ConfigError(
            f"live workers holding this run's keys speak another protocol than this kontext-batch "
            f"{VERSION} (protocol {PROTOCOL}): {describe(other)}; nothing was queued. Finish the rollout "
            "so that the workers and this command run the same release (README: Upgrading)"
        )


def newer(speakers: list[Speaker]) -> list[Speaker]:
    """Those that speak a newer protocol than this process: a worker seeing one steps aside."""
    return [s for s in speakers if s.protocol > PROTOCOL]
