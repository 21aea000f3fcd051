"""A string that never shows itself: not in repr, str, f-strings, logs or pickles of settings."""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["Secret"]

_MASK: Final = "**********"


class Secret:
    """Wraps a secret value. ``reveal()`` is the only way to read it; everything else prints a mask.

    ``fingerprint`` is a short, stable, one-way digest: safe to use in Redis keys and logs to tell
    two keys apart without exposing either.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"kontext-batch:" + self._value.encode()).hexdigest()[:12]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would copy the secret into whatever carries the pickle (a task payload, a cache).
        raise TypeError("Secret values are not serialisable")
