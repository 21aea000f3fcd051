"""Options that more than one command takes, the ``duration`` type of ``--timeout``, and
:func:`parse_duration`, the days-and-weeks reading of ``prune --older-than``."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click

__all__ = ["DELIMITER", "INPUTS_ROOT", "MAX_FAILURES", "MODEL", "SHEET", "TIMEOUT", "Duration", "parse_duration"]


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``15m``, ``2h`` or ``1h30m``: seconds as a float."""

    name = "duration"
    _UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        try:
            return float(text)
        except ValueError:
            pass
        total, num = 0.0, ""
        for ch in text:
            if ch.isdigit() or ch == ".":
                num += ch
            elif ch in self._UNITS and num:
                total += float(num) * self._UNITS[ch]
                num = ""
            else:
                self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m", param, ctx)
        if num or total <= 0:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m", param, ctx)
        return total


TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=Duration(),
    default=None,
    help="With --wait: stop waiting after this long (90s, 15m, 2h); the run goes on. Exit 3.",
)

MAX_FAILURES = click.option(
    "--max-failures",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Rows allowed to fail before the wait exits 1: a count, or a fraction when < 1.",
)

MODEL = click.option(
    "--model",
    envvar="KONTEXT_MODEL",
    show_envvar=True,
    default="pro",
    show_default=True,
    help="Model for rows without one: pro (4 credits an image) or max (8).",
)

DELIMITER = click.option(
    "--delimiter",
    type=click.Choice([",", ";", "tab"]),
    default=None,
    help="A CSV manifest's column separator (default: read from its header line).",
)

SHEET = click.option("--sheet", default=None, help="An .xlsx manifest's sheet to read (default: the first).")

INPUTS_ROOT = click.option(
    "--inputs-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="KONTEXT_INPUTS_ROOT",
    show_envvar=True,
    default=None,
    help="Refuse local input images outside this folder (symlinks resolved).",
)

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(raw: str) -> float:
    """``90m``, ``36h``, ``7d``, ``2w`` or plain seconds, in seconds; BadParameter for anything else."""
    text = raw.strip().lower()
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"{raw!r} is no duration: give e.g. 7d, 36h, 90m or seconds") from None
    if value < 0:
        raise click.BadParameter(f"{raw!r}: a duration cannot be negative")
    return value
