"""Hand free slots to waiting rows and send their submit tasks.

Below both sides: the enqueue side (a new run, ``retry``) and the workers (a slot freed, the sweeper)
call it alike.
"""

from __future__ import annotations

from kontext_batch.gate import Gate, Grant
from kontext_batch.runtime import Runtime

__all__ = ["dispatch"]


def dispatch(rt: Runtime, gate: Gate, *, keep_one: bool = False) -> Grant | None:
    """Give free slots of ``gate`` to waiting rows and send their submit tasks.

    With ``keep_one`` the first grant is returned instead of sent, for the caller to submit itself.
    """
    grants = rt.gate.dispatch(gate)
    kept = grants.pop(0) if keep_one and grants else None
    for g in grants:
        rt.scheduler.submit(g.ref, g.token)
    return kept
