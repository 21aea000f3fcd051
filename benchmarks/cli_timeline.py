"""``kontext-batch`` with a timeline of its own start and end: where the time before the first submit
and after the last store goes, in milliseconds from the command's start, without a profiler.

    python benchmarks/cli_timeline.py START_EPOCH run MANIFEST -o OUT --wait

``START_EPOCH`` is ``time.time()`` when the caller started this process (``run.py --timeline``
passes it), so the interpreter's own start is counted too. The command runs as ``python -m
kontext_batch`` would run it; a few of its steps are wrapped by name to record when they began and
how long they took, and the timeline goes to stderr when the command exits (before the interpreter's
teardown, which the caller sees as the rest up to the process's exit). A step that a later change
renamed or removed is left out of the timeline, never an error: this is a measuring aid, and the
command must behave as the real one.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable
from typing import Any

T0 = float(sys.argv[1]) if len(sys.argv) > 1 else time.time()
MARKS: list[tuple[str, float]] = [("interpreter up (python, site)", time.time())]
STEPS: dict[str, list[float]] = {}  # label -> [calls, total s, first start, last end]


def wrap(owner: Any, name: str, label: str) -> None:
    """Record calls of ``owner.name`` under ``label`` (nothing when it does not exist)."""
    inner: Callable[..., Any] | None = getattr(owner, name, None)
    if inner is None:
        return

    def timed(*a: Any, **k: Any) -> Any:
        start = time.time()
        try:
            return inner(*a, **k)
        finally:
            end = time.time()
            step = STEPS.setdefault(label, [0, 0.0, start, end])
            step[0] += 1
            step[1] += end - start
            step[3] = end

    setattr(owner, name, timed)


def report() -> None:
    def ms(t: float) -> str:
        return f"{(t - T0) * 1000:9.1f} ms"

    out = [f"cli timeline (ms from the command's start; {len(sys.modules)} modules loaded):"]
    out += [f"{ms(t)}  {label}" for label, t in MARKS]
    for label, (n, total, first, last) in sorted(STEPS.items(), key=lambda kv: kv[1][2]):
        out.append(f"{ms(first)}  {label}: {total * 1000:.1f} ms in {int(n)} call(s), last ended at {ms(last).strip()}")
    out.append(f"{ms(time.time())}  exit handlers (the interpreter's teardown follows)")
    print("\n".join(out), file=sys.stderr, flush=True)


def instrument() -> None:
    """Wrap the steps of the start and of the end that issue 22 asks about."""
    import kontext_batch.cli.context as context  # noqa: PLC0415 - timed as an import of its own
    import kontext_batch.cli.watch as watch  # noqa: PLC0415
    import kontext_batch.coord.ends as ends  # noqa: PLC0415
    import kontext_batch.run.enqueue as enqueue  # noqa: PLC0415
    import kontext_batch.run.view as view  # noqa: PLC0415
    import kontext_batch.steps.dispatch as dispatch  # noqa: PLC0415
    import kontext_batch.workers.sender as sender  # noqa: PLC0415
    import kontext_batch.workers.trust as trust  # noqa: PLC0415

    MARKS.append(("imports done (the CLI; Celery loads only if the CLI sends a step)", time.time()))
    for owner, name, label in (
        (context, "check_redis", "runtime: check_redis (PING)"),
        (trust, "trust_redis", "trusted: trust_redis (eviction policy, persistence)"),
        (context, "refuse_other_protocols", "trusted: refuse_other_protocols"),
        (watch, "start_run", "start_run"),
        (enqueue, "_check_output_free", "  _check_output_free"),
        (enqueue, "manifest_footprint", "  manifest_footprint"),
        (enqueue, "read_memory", "  read_memory (INFO)"),
        (enqueue, "_register", "  _register"),
        (enqueue, "_existing_outputs", "  _existing_outputs (list the store)"),
        (enqueue._Enqueue, "run", "  _Enqueue.run (the pass, then queue)"),
        (enqueue._Enqueue, "_valid", "    _valid (spec, skip check)"),
        (enqueue._Enqueue, "_flush", "    _flush (Redis writes)"),
        (enqueue._Enqueue, "_queue", "    _queue (wait lists, demand, dispatch)"),
        (enqueue, "hand_over", "      hand_over (a nudge to the workers; dispatch here if none heard it)"),
        (dispatch, "dispatch", "        dispatch here (slots granted, submit messages sent)"),
        (sender, "_celery_schedule", "        Celery loaded and configured for a send"),
        (watch, "follow_run", "follow_run (--wait)"),
        (watch, "take_look", "  take_look (one look's reads)"),
        (ends.EndWatch, "wait", "  EndWatch.wait (the --wait look interval; cut short by the run's end)"),
        (view.time, "sleep", "  time.sleep, any caller (the look interval when not subscribed)"),
        (watch, "summarize", "  summarize (the final reads)"),
    ):
        wrap(owner, name, label)


def main() -> None:
    import kontext_batch.cli as cli  # noqa: PLC0415 - its import is the first thing timed

    MARKS.append(("import kontext_batch.cli", time.time()))
    instrument()
    atexit.register(report)
    sys.argv = ["kontext-batch", *sys.argv[2:]]
    cli.main()


if __name__ == "__main__":
    main()
