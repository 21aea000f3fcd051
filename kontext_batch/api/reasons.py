"""The API's words as one plain line, for results.csv, ``status`` and the logs: what an error answer
or a task's end says (:func:`api_message`; a task's whole reason is ``PollResult.reason``).

A reason is a sentence someone reading a results file can act on, never a Python or JSON repr: the
API's own message is kept, on one line, and cut at :data:`MESSAGE_CHARS` (saying so) so no reason
carries a whole response body. Both dialects word the same outcome alike:

=====================  ========================================================================
outcome                reason
=====================  ========================================================================
moderated              ``Content Moderated: Content Filter`` (``Request Moderated: ...``), BFL's own
Error, Failed          ``the API failed the task (Error): Internal error while generating ...``
Task not found         ``the API does not know the task (Task not found, HTTP 404): ...``
=====================  ========================================================================

Masking the key is the client's (it scrubs every body before it is read); nothing here sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["MESSAGE_CHARS", "api_message", "cut"]

#: Longest API message a reason carries; a traceback or an HTML page pasted into ``message`` is cut.
MESSAGE_CHARS: Final = 300
#: Where an API puts its words, in the order we trust them (BFL: ``message``/``detail``; reseller:
#: ``error.message``; FastAPI: ``msg``).
_WORDS_AT: Final = ("message", "detail", "error", "msg", "description", "reason")


def cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line, cut to about ``limit`` characters with a note of how long it was."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return f"{line[:limit].rstrip()}… (cut; {len(line):,} characters in all)"


def api_message(found: object, limit: int = MESSAGE_CHARS) -> str:
    """The words in an API's ``detail``/``details``/``error``: a string as it is; the message inside a
    dict (or, without one, its ``name: value`` pairs); a list's items joined. "" when there are none."""
    return cut(_words(found), limit)


def _words(found: object) -> str:
    if found is None:
        return ""
    if isinstance(found, str):
        return found
    if isinstance(found, Mapping):
        for name in _WORDS_AT:
            inner = _words(found.get(name))
            if inner:
                return inner
        return "; ".join(f"{k}: {w}" for k, v in found.items() if (w := _words(v)))
    if isinstance(found, Sequence) and not isinstance(found, bytes | bytearray):
        return "; ".join(w for item in found if (w := _words(item)))
    return str(found)
