"""The commands' exit codes: one code per kind of problem, whichever command meets it.

:data:`EXIT_MEANINGS` is the table; the group's ``--help`` shows it and README's "Exit codes" is
checked against it (tests/test_cli_bad_input.py), so a change is made here once. A problem a
command reports in one line and exits 2 for (a file it cannot read or write, an unknown run) is
:class:`Refused`; the library's own errors reach :func:`~kontext_batch.cli.commands.main`, which
exits 2 for them too. :data:`EXIT_CODES` maps the ways a followed run can end to their codes.
"""

from __future__ import annotations

import textwrap
from typing import Final

import click

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED_ROWS",
    "EXIT_INTERRUPTED",
    "EXIT_MEANINGS",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "Refused",
    "exit_help",
]

EXIT_OK: Final = 0
EXIT_FAILED_ROWS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_INTERRUPTED: Final = 130

EXIT_MEANINGS: Final = (
    (EXIT_OK, "every row succeeded (or was skipped)"),
    (
        EXIT_FAILED_ROWS,
        "rows failed beyond `--max-failures` (a count, or a fraction when < 1); `validate`: invalid rows",
    ),
    (
        EXIT_USAGE,
        "bad usage or settings; a file that is missing, unreadable or unwritable (a manifest, `--ids`, "
        "`--inputs-root`, `results -o`); a manifest that cannot be read as one; an unknown run, or one "
        "gone from Redis that the command cannot act on: nothing was queued",
    ),
    (
        EXIT_STOPPED,
        "the run stopped: out of credits, key refused, budget reached, results.csv not writable, cancelled, "
        "its state lost from Redis; or `--timeout` passed (the run goes on)",
    ),
    (EXIT_INTERRUPTED, "interrupted"),
)

EXIT_CODES: Final = {
    "succeeded": EXIT_OK,
    "rows_failed": EXIT_FAILED_ROWS,
    "stopped": EXIT_STOPPED,
    "timed_out": EXIT_STOPPED,
    "lost": EXIT_STOPPED,
}


class Refused(click.ClickException):
    """Raised by a command for a problem it reports in one ``Error:`` line and exits 2 for: a file it
    cannot use (naming it), an unknown run, a run gone from Redis."""

    exit_code = EXIT_USAGE


def exit_help() -> str:
    """The table as the group's ``--help`` epilog (click keeps ``\\b`` paragraphs unwrapped)."""
    lines = [
        textwrap.fill(meaning.replace("`", ""), 88, initial_indent=f"{code:>3}  ", subsequent_indent=" " * 5)
        for code, meaning in EXIT_MEANINGS
    ]
    return "Exit codes:\n\n\b\n" + "\n".join(lines)
