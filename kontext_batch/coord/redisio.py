"""Small helpers every Redis owner here needs: decode a reply, write in bounded batches, read the
clock in ms, load a Lua script from ``coord/lua/``, and queue a script on a pipeline that several
owners share (one round trip for a step's reads and writes)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from itertools import islice
from typing import Any, Final, TypeVar

import redis
from redis.client import Pipeline
from redis.commands.core import Script

__all__ = ["BATCH", "batched", "decode", "eval_in", "existing", "lua", "now_ms"]

T = TypeVar("T")

#: Items per Redis command when writing many at once: one round trip per batch, no huge commands.
BATCH: Final = 1000


def decode(v: Any) -> str:
    """A Redis reply (bytes) as text."""
    return v.decode() if isinstance(v, bytes) else str(v)


def batched(items: Iterable[T], n: int = BATCH) -> Iterator[list[T]]:
    """``items`` in lists of at most ``n`` (itertools.batched is Python 3.12+)."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def existing(r: redis.Redis, keys: Sequence[str]) -> list[bool]:
    """Whether each key exists, in one round trip (EXISTS of several keys only counts them)."""
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [bool(n) for n in pipe.execute()]


def now_ms() -> int:
    """The wall clock in ms, as leases, deadlines and heartbeats are scored in Redis."""
    return int(time.time() * 1000)


def lua(name: str) -> str:
    """The Lua script ``kontext_batch/coord/lua/{name}`` (package data), read once at import by the
    module that runs it.

    The file's opening ``--`` lines (what KEYS and ARGV hold) are left out of the text sent to
    Redis: a script queued with :func:`eval_in` travels in full with every step of every job.
    """
    lines = (resources.files("kontext_batch.coord") / "lua" / name).read_text(encoding="utf-8").splitlines(True)
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "".join(lines)


def eval_in(pipe: Pipeline, script: Script, keys: Sequence[str], args: Sequence[str | int | float]) -> None:
    """Queue ``script`` on ``pipe`` by its body (EVAL; Redis caches it by digest). Queued as EVALSHA,
    redis-py would first ask SCRIPT EXISTS on every execute: one more round trip than it saves."""
    body = script.script
    pipe.eval(body if isinstance(body, str) else decode(bytes(body)), len(keys), *keys, *args)
