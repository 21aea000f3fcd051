"""What both API dialects share: loading input images, admitting a task, rendering, webhooks.

One :class:`Runtime` lives in ``app.state.runtime``. It owns the state, an ``httpx.AsyncClient``
(input-image URLs, webhooks), a small thread pool for Pillow and the background webhook tasks.
Nothing here blocks the event loop: image decoding and rendering run in the pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Literal

import httpx
from starlette.types import Scope

from kontext_batch.emulator import images
from kontext_batch.emulator.config import EmulatorConfig
from kontext_batch.emulator.images import InputImageError, RenderSpec
from kontext_batch.emulator.placeholders import PlaceholderSamples
from kontext_batch.emulator.state import EmulatorState
from kontext_batch.emulator.task import READY, REQUEST_MODERATED, TaskRecord
from kontext_batch.emulator.webhooks import deliver_webhook

__all__ = ["Runtime", "SubmitParams", "other_host"]

log = logging.getLogger(__name__)

_IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")
_SWAP = {"127.0.0.1": "localhost", "localhost": "127.0.0.1", "[::1]": "localhost"}


def other_host(host: str) -> str:
    """``127.0.0.1:P`` <-> ``localhost:P`` (``[::1]`` -> localhost); other names stay as they are."""
    name, sep, port = host.rpartition(":")
    if not sep or name == "" or port.endswith("]"):
        name, port = host, ""
    swapped = _SWAP.get(name.lower(), name)
    return f"{swapped}:{port}" if port else swapped


@dataclass(frozen=True)
class SubmitParams:
    """A validated submit, whichever dialect it came in."""

    prompt: str
    images: tuple[str | None, ...]
    seed: int | None
    aspect_ratio: str | None
    output_format: str
    prompt_upsampling: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = None


class Runtime:
    """Shared engine behind the routes. :meth:`start`/:meth:`stop` run in the app's lifespan."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config)
        self._http: httpx.AsyncClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._check_pool: ThreadPoolExecutor | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.placeholders = PlaceholderSamples()
        self.stopping = asyncio.Event()
        #: Set by the server: aborts the connection a request (its ASGI scope) came on, without an
        #: answer; returns False when it cannot find it. None where the server offers no such thing.
        self.drop_connection: Callable[[Scope], Awaitable[bool]] | None = None

    async def start(self) -> None:
        self.stopping = asyncio.Event()
        # Futures belong to one event loop: a restarted app starts with an empty cache.
        self.placeholders = PlaceholderSamples()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=True)
        self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="emulator-render")
        # Input checks get their own threads: a submit must not queue behind a burst of renders.
        self._check_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-check")

    async def stop(self) -> None:
        self.stopping.set()
        await self.cancel_background()
        if self._http is not None:
            await self._http.aclose()
        for pool in (self._pool, self._check_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def cancel_background(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("emulator runtime not started")
        return self._http

    async def _fetch(self, url: str) -> bytes:
        try:
            async with self.http.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise InputImageError(f"fetching the input image answered HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > images.MAX_INPUT_BYTES:
                        raise InputImageError("input image larger than 20 MB")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise InputImageError(f"input image URL could not be fetched: {type(exc).__name__}") from None

    async def load_inputs(self, values: Sequence[str | None]) -> list[tuple[bytes, tuple[int, int]]]:
        """Bytes and size of every given input image. Raises InputImageError naming the field."""
        out: list[tuple[bytes, tuple[int, int]]] = []
        for name, value in zip(_IMAGE_FIELDS, values, strict=False):
            if value is None:
                continue
            try:
                if value.strip().lower().startswith(("http://", "https://")):
                    data = await self._fetch(value.strip())
                else:
                    data = images.decode_base64_image(value)
                loop = asyncio.get_running_loop()
                size = await loop.run_in_executor(self._check_pool, images.check_image, data)
            except InputImageError as exc:
                raise InputImageError(f"{name}: {exc}") from None
            out.append((data, size))
        return out

    def _rendered(self, task: TaskRecord, fut: asyncio.Future[bytes]) -> None:
        if fut.cancelled():
            return
        if (exc := fut.exception()) is not None:
            log.error("emulator: rendering the sample of %s failed: %r", task.id, exc)
            return
        self.state.hold_sample(task, len(fut.result()))

    def _start_sample(self, task: TaskRecord, params: SubmitParams, inputs: list[bytes]) -> None:
        """Give ``task`` the future of its sample: its own render, or the shared placeholder (fast)."""
        width, height = task.size
        if self.config.render == "fast":
            before = self.placeholders.renders
            # Shared bytes are not the task's own: they stay out of the per-task memory account.
            task.sample = self.placeholders.sample(self._pool, width, height, task.output_format)
            self.state.samples_rendered += self.placeholders.renders - before
            return
        spec = RenderSpec(params.prompt, task.seed, width, height, task.output_format, inputs)
        loop = asyncio.get_running_loop()
        task.sample = loop.run_in_executor(self._pool, images.render, spec)
        self.state.samples_rendered += 1
        task.sample.add_done_callback(partial(self._rendered, task))

    async def submit(
        self,
        *,
        key_fp: str,
        endpoint: str,
        params: SubmitParams,
        host: str,
        scheme: str,
        dialect: Literal["bfl", "reseller"],
        model: str | None = None,
    ) -> TaskRecord:
        """Create a task. Raises InputImageError (400) or state.Rejected (429/402)."""
        inputs = await self.load_inputs(params.images)
        size = images.bucket_for(params.aspect_ratio, self.config.default_ratio, inputs[0][1] if inputs else None)
        # From here to state.add nothing awaits: the cap/credit check and the new task are one step.
        state = self.state
        cost = state.admit(key_fp, endpoint)
        outcome = state.draw_outcome(params.prompt)
        now = state.now()
        latency = 0.0 if outcome == REQUEST_MODERATED else state.latency_s(endpoint)
        seed = params.seed if params.seed is not None else state.rng.getrandbits(32)
        swap = self.config.poll_host_swap and dialect == "bfl"
        task = TaskRecord(
            id=state.new_id(),
            endpoint=endpoint,
            key_fp=key_fp,
            dialect=dialect,
            model=model,
            prompt=params.prompt,
            result_prompt=params.prompt + (", highly detailed" if params.prompt_upsampling else ""),
            seed=seed,
            output_format=params.output_format,
            size=size,
            cost=cost,
            submitted_at=now,
            ready_at=now + latency,
            outcome=outcome,
            submit_host=host,
            poll_host=other_host(host) if swap else host,
            scheme=scheme,
            webhook_url=params.webhook_url,
            webhook_secret=params.webhook_secret,
            input_mp=round(sum(w * h for _, (w, h) in inputs) / 1e6, 2),
        )
        state.add(task)
        if outcome == READY:
            self._start_sample(task, params, [d for d, _ in inputs])
        if params.webhook_url:
            job = asyncio.create_task(deliver_webhook(state, self.http, task, self.config.webhook_form))
            self._background.add(job)
            job.add_done_callback(self._background.discard)
        return task
