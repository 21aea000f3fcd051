"""Two small helpers every Redis owner here needs: decode a reply, write in bounded batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Final, TypeVar

__all__ = ["BATCH", "batched", "decode"]

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
