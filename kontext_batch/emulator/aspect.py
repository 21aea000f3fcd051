"""The emulator's own reading of the documented ``aspect_ratio`` rule, kept apart from the client's.

BFL's OpenAPI types the field as a string, "Aspect ratio of the image between 21:9 and 9:21"; the
reseller documents "format such as 16:9, Range: 21:9 - 9:21". Read literally:

========================  ===================================================================
accepted                  two positive decimal integers joined by one colon: ``16:9``, ``1:1``
range                     21:9 (widest) to 9:21 (tallest), both ends included
refused (422)             spaces, signs, decimals, a zero side, other separators, outside range
========================  ===================================================================

The emulator refuses what the documents do not describe (``" 16:9"``, ``16/9``): a client that
sends those would be relying on leniency the real API does not promise.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["TALLEST", "WIDEST", "parse_aspect_ratio", "ratio_in_range"]

#: (width, height) of the widest and the tallest documented ratio.
WIDEST: Final = (21, 9)
TALLEST: Final = (9, 21)
#: Longer strings are refused before any arithmetic: no real ratio needs them.
_MAX_CHARS: Final = 32
_RATIO_RE: Final = re.compile(r"([0-9]+):([0-9]+)")


def ratio_in_range(width: int, height: int) -> bool:
    """True when width:height lies between 9:21 and 21:9 (cross-multiplied: exact for integers)."""
    return width * WIDEST[1] <= height * WIDEST[0] and width * TALLEST[1] >= height * TALLEST[0]


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """``"16:9"`` -> ``(16, 9)``. Raises ValueError saying which part of the rule ``value`` breaks."""
    m = _RATIO_RE.fullmatch(value) if len(value) <= _MAX_CHARS else None
    if m is None:
        raise ValueError(f"aspect_ratio must be W:H with whole numbers, like 16:9; got {value!r}")
    width, height = int(m.group(1)), int(m.group(2))
    if width == 0 or height == 0:
        raise ValueError(f"aspect_ratio sides must be at least 1; got {value!r}")
    if not ratio_in_range(width, height):
        raise ValueError(f"aspect_ratio must lie between 21:9 and 9:21; got {value!r}")
    return width, height
