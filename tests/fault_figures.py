"""The fault suite's figures: filled in by ``tests/test_faults.py``, printed once at the end of the session.

``FIGURES`` is a plain module-level counter; each fault test adds what it saw. The hook prints one line
(only when a fault test ran), which the issue asks to copy into its note::

    fault-suite figures: rows=... kills=... redis_restarts=... faults_injected=... retries=...
    rows_lost=0 rows_duplicated=0   (one line, wrapped here)

========================  ========================================================================
figure                    counted as
========================  ========================================================================
rows                      manifest rows run by the fault tests
kills                     worker processes killed with SIGKILL while a run was in progress
redis_restarts            times the Redis server was stopped and started again mid-run
faults_injected           faults the emulator injected (request faults and drawn outcomes)
retries                   row resubmits (sum of attempts - 1) + HTTP requests answered with an
                          injected request fault (each is tried again) + re-polls (polls the
                          emulator answered beyond those the rows recorded: repeats after a re-drive)
rows_lost                 manifest rows with no line in results.csv
rows_duplicated           extra lines for a row number already in results.csv
orphans                   API tasks created whose row recorded another task (a worker died mid-submit)
========================  ========================================================================

The hook reaches pytest either from ``tests/conftest.py`` (``from tests.fault_figures import
pytest_terminal_summary``) or by :func:`register`, which the fault tests call through a fixture.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from typing import Any, Final

import pytest

__all__ = ["FIGURES", "ORDER", "add", "figures_line", "pytest_terminal_summary", "register"]

ORDER: Final = ("rows", "kills", "redis_restarts", "faults_injected", "retries", "rows_lost", "rows_duplicated")
FIGURES: Counter[str] = Counter()
_PLUGIN_NAME: Final = "kontext-fault-figures"
_printed: list[bool] = []


def add(**figures: int) -> None:
    """Add to the session's figures (``add(rows=300, kills=5)``)."""
    for name, value in figures.items():
        FIGURES[name] += int(value)


def figures_line() -> str:
    extra = sorted(k for k in FIGURES if k not in ORDER)
    return "fault-suite figures: " + " ".join(f"{k}={FIGURES[k]}" for k in (*ORDER, *extra))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Generator[None]:
    # Outermost wrapper: the line comes after pytest's short test summary, just above the final counts.
    yield
    if not FIGURES or _printed:
        return
    _printed.append(True)
    terminalreporter.write_sep("-", "fault suite")
    terminalreporter.write_line(figures_line())


def register(config: pytest.Config) -> None:
    """Make this module a plugin of the session (once), so its summary hook runs."""
    import sys  # noqa: PLC0415 - only to hand pytest this very module object

    if not config.pluginmanager.has_plugin(_PLUGIN_NAME):
        config.pluginmanager.register(sys.modules[__name__], _PLUGIN_NAME)
