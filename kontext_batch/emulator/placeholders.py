"""The cheap render mode (``EmulatorConfig(render="fast")``): one shared sample per size and format.

A full render costs tens of milliseconds of CPU per task; a load test of thousands of tasks would
measure the emulator's Pillow work instead of the pipeline. In fast mode a task's sample is
:func:`~.images.render_placeholder` of its (width, height, format), rendered once in the pool and
then handed to every later task of that size and format as the same future: a dictionary look-up per
task. It is still a real image of the requested size and format, so downloads and decoders see what
they would see from the API.

Output sizes are KONTEXT_BUCKETS (17) times three formats, so the default bound of 64 holds all of
them; the bound is there so that no input can grow the cache without limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import Executor
from typing import Final

from kontext_batch.emulator import images

__all__ = ["PlaceholderSamples"]

DEFAULT_MAX_ENTRIES: Final = 64
log = logging.getLogger(__name__)


class PlaceholderSamples:
    """A bounded, least-recently-used map (width, height, format) -> the future of its encoded image.

    Used only from the event loop. ``renders`` counts renderings started (cache misses).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.renders = 0
        self._cache: OrderedDict[tuple[int, int, str], asyncio.Future[bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def sample(self, pool: Executor | None, width: int, height: int, output_format: str) -> asyncio.Future[bytes]:
        """The shared future of this size's and format's image; starts rendering it on a miss."""
        key = (width, height, output_format)
        fut = self._cache.get(key)
        # A failed or cancelled rendering is not kept: the next task of that size tries again.
        if fut is not None and not (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            self._cache.move_to_end(key)
            return fut
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(pool, images.render_placeholder, width, height, output_format)
        fut.add_done_callback(_log_failure)
        self.renders += 1
        self._cache[key] = fut
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return fut


def _log_failure(fut: asyncio.Future[bytes]) -> None:
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.error("emulator: rendering a placeholder sample failed: %r", exc)
