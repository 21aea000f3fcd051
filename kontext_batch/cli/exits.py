"""The command's exit codes, and the one each way a followed run can end maps to.

0 every row succeeded (or was skipped); 1 rows failed beyond the allowed threshold; 2 bad usage,
settings or manifest (nothing was queued); 3 the run stopped (out of credits, key refused, or
cancelled) or its state was lost from Redis (``results`` of such a run too); 130 interrupted.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_CODES", "EXIT_FAILED_ROWS", "EXIT_INTERRUPTED", "EXIT_STOPPED", "EXIT_USAGE"]

EXIT_FAILED_ROWS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_CODES: Final = {
    "succeeded": 0,
    "rows_failed": EXIT_FAILED_ROWS,
    "stopped": EXIT_STOPPED,
    "timed_out": EXIT_STOPPED,
    "lost": EXIT_STOPPED,
}
