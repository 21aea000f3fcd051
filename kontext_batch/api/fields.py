"""Typed reads of the fields of an API's JSON body: a value of the wrong type reads as absent."""

from __future__ import annotations

__all__ = ["opt_float", "opt_int", "opt_str"]


def opt_float(value: object) -> float | None:
    """A number from a JSON field, or None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def opt_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
