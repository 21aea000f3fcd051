"""How soon a worker's consumer reconnects to the broker after losing it: the schedule of its tries.

Celery's consumer reconnects through ``Connection.ensure_connection`` with kombu's defaults (first
retry after 2 s, then 4 s, 6 s ... up to 30 s) and no way to set them: the interval keys that kombu
reads from the transport options (``_extract_failover_opts``) serve ``default_channel`` and
``ensure`` only. A Redis restart (a ``docker compose restart``: down about 2 s) then cost a worker
6 s with no job consumed: it tried at once, after 2 s (a few ms before Redis was back), and after 4 s
more. Here the consumer's connection reads the same transport-option keys, so one schedule, set in
:mod:`kontext_batch.workers.config`, serves every path: short first tries for a short outage, then
a capped back-off for a long one (one connect and one log line per try, never a hot loop).
"""

from __future__ import annotations

from typing import Any, Final

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection as KombuConnection

__all__ = ["AMQP", "RECONNECT_SCHEDULE", "Connection"]

#: Seconds between tries: 0.25, 0.5, 0.75 ... (kombu's back-off is arithmetic), at most 5. Tries at
#: 0, 0.25, 0.75, 1.5, 2.5, 3.75 s ... after the loss (one just past a 2 s restart); ~20 in the first
#: minute, then 12 a minute.
RECONNECT_SCHEDULE: Final[dict[str, float]] = {"interval_start": 0.25, "interval_step": 0.25, "interval_max": 5.0}


class Connection(KombuConnection):  # type: ignore[misc]
    """A kombu connection whose ``ensure_connection`` follows the interval keys of its transport options."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        # Celery passes (errback, max_retries) and a callback, never the intervals: fill those unset.
        for key in RECONNECT_SCHEDULE:
            if key in self.transport_options:
                kwargs.setdefault(key, self.transport_options[key])
        return super().ensure_connection(*args, **kwargs)


class AMQP(CeleryAMQP):  # type: ignore[misc]
    """Celery's AMQP helpers with :class:`Connection`: every connection the app makes is one."""

    Connection = Connection
