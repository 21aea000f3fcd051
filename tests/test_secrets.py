"""The API key never leaves the worker's memory: after a full run, search everything the system wrote.

A run with a distinctive key, API faults (so error paths log too), moderated and failing rows, and
DEBUG worker logs. Then the key, its base64 forms (at each of the three byte alignments, standard and
URL-safe alphabets) and its URL-encoded forms are searched for in: every worker log line, the CLI's
stdout and stderr (``run --wait``, ``status``, ``status --json``, ``results``), results.csv, every
sidecar and output object, every Redis key name and value (strings, hashes, lists, sets, sorted sets,
streams; Celery's queues included), sampled while the run is in flight and again at the end, every
command sent to Redis during the run (``MONITOR``: each broker message's body decoded), and the
emulator's stats.

Positive controls show the search finds the key where it is: in the environment the CLI got, and in a
broker-shaped message built here with the key in its body.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import redis

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.local import WorkerPool
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import System, product_image, write_csv

KEY = "sk-live-SECRET-9f8e7d"


def needles(secret: str) -> list[bytes]:
    """The forms the key could take in bytes we read: raw, URL-encoded, and base64 at any offset.

    A base64 blob holds the key's encoding only at one of three byte alignments; for each we keep the
    characters that depend on the key alone (dropping the ones shared with its neighbours).
    """
    raw = secret.encode()
    out = {raw, raw.lower(), quote(secret, safe="").encode(), quote_plus(secret).encode()}
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * pad + raw).rstrip(b"=")
            start = (pad * 8 + 5) // 6  # chars touched by the padding bytes
            end = len(text) - (1 if (pad + len(raw)) % 3 else 0)  # the last char may mix with what follows
            out.add(text[start:end])
    return sorted(out)


NEEDLES = needles(KEY)


def leaks(data: bytes) -> list[bytes]:
    """The forms of the key found in ``data`` (the raw key case-insensitively)."""
    hits = [n for n in NEEDLES if n in data]
    if KEY.lower().encode() in data.lower() and KEY.encode() not in hits:
        hits.append(KEY.encode())
    return hits


def _decoded_broker_bodies(value: bytes) -> list[bytes]:
    """kombu stores a message as JSON whose ``body`` is base64: decode it so the search sees the args."""
    out: list[bytes] = []
    try:
        msg = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return out
    candidates = msg if isinstance(msg, list) else [msg]  # the unacked hash holds [message, exchange, key]
    for m in candidates:
        if isinstance(m, dict) and isinstance(m.get("body"), str):
            try:
                out.append(base64.b64decode(m["body"]))
            except ValueError:
                out.append(m["body"].encode())
    return out


def _b(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def dump_redis(r: redis.Redis) -> dict[str, bytes]:
    """Every key of the db with everything in it (and broker message bodies decoded), as bytes."""
    out: dict[str, bytes] = {}
    c: Any = r  # redis-py's sync/async union types make every call site noisy
    for key in c.scan_iter(count=1000):
        kind = _b(c.type(key)).decode()
        parts: list[bytes] = []
        if kind == "string":
            parts.append(_b(c.get(key) or b""))
        elif kind == "hash":
            for f, v in c.hgetall(key).items():
                parts += [_b(f), _b(v)]
        elif kind == "list":
            parts += [_b(v) for v in c.lrange(key, 0, -1)]
        elif kind == "set":
            parts += [_b(v) for v in c.smembers(key)]
        elif kind == "zset":
            parts += [_b(m) for m, _ in c.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in c.xrange(key):
                for f, v in fields.items():
                    parts += [_b(f), _b(v)]
        elif kind != "none":
            raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
        for p in list(parts):
            parts += _decoded_broker_bodies(p)
        out[_b(key).decode(errors="replace")] = b"\n".join([_b(key), *parts])
    return out


@contextmanager
def system_with_debug_logs(redis_url: str, log_dir: Path) -> Iterator[System]:
    cfg = EmulatorConfig(
        latency={"*": LatencySpec.fixed(0.2)},
        api_keys=(KEY,),
        seed=3,
        faults={"500": 0.1, "503": 0.05, "429": 0.1},
    )
    with Emulator(cfg) as emu:
        s = Settings(
            api_key=Secret(KEY),
            api_base=emu.base_url,
            redis_url=redis_url,
            poll_first_s=0.2,
            poll_min_s=0.05,
            retry_base_s=0.05,
            retry_max_s=0.3,
            http_timeout_s=5.0,
            lease_s=20.0,
            log_level="DEBUG",
        )
        with WorkerPool(s, n=2, concurrency=8, loglevel="DEBUG", log_dir=log_dir) as pool:
            yield System(emu, s, pool)


def _manifest(tmp: Path) -> Path:
    img = product_image(tmp / "shoe.jpg", (150, 30, 30), (200, 150))
    rows: list[dict[str, object]] = [
        {
            "id": f"s{i}",
            "model": "max" if i % 3 == 0 else "pro",
            "prompt": f"white background {i}",
            "input_image": img.name,
        }
        for i in range(10)
    ]
    rows += [
        {"id": "mod", "model": "pro", "prompt": "[emulator:content-moderated] a row", "input_image": img.name},
        {"id": "err", "model": "pro", "prompt": "[emulator:error] a row", "input_image": None},
    ]
    return write_csv(tmp / "m.csv", ["id", "model", "prompt", "input_image"], rows)


class RedisMonitor(threading.Thread):
    """Every command sent to the test's Redis db while the run is in flight (``MONITOR``): each broker
    message goes through it whole, however briefly it waits in its queue (a worker takes it at once,
    and kombu keeps no copy in Redis while it runs)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url, socket_timeout=0.5)
        self.db = int(self.r.connection_pool.connection_kwargs.get("db", 0))
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.found: dict[str, list[bytes]] = {}
        self.commands = 0
        self.bodies_decoded = 0

    def run(self) -> None:
        with self.r.monitor() as m:
            self.listening.set()
            while not self.stop.is_set():
                try:
                    cmd = m.next_command()
                except redis.exceptions.TimeoutError:
                    continue
                if not cmd or cmd["db"] != self.db:
                    continue
                self.commands += 1
                text = str(cmd["command"]).encode()
                blobs = [text]
                for body in _BODY.findall(text):
                    blobs.append(base64.b64decode(body))
                    self.bodies_decoded += blobs[-1].count(b'[["')  # a task body: ``[[ref, token], {}, {...}]``
                for blob in blobs:
                    if hits := leaks(blob):
                        self.found[text[:60].decode(errors="replace")] = hits


#: A kombu message's base64 body, as a publish's JSON carries it.
_BODY = re.compile(rb'"body": "([A-Za-z0-9+/=]+)"')


class RedisSampler(threading.Thread):
    """Dumps the Redis db every 0.1 s while the run is in flight (broker messages exist only then)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url)
        self.stop = threading.Event()
        self.found: dict[str, list[bytes]] = {}
        self.samples = 0
        self.broker_keys: set[str] = set()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            dump = dump_redis(self.r)
            self.samples += 1
            for key, blob in dump.items():
                if key.startswith(("kontext.", "unacked", "_kombu")):
                    self.broker_keys.add(key)
                if hits := leaks(blob):
                    self.found[key] = hits


@pytest.mark.e2e
def test_the_key_appears_nowhere_after_a_full_run(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = _manifest(tmp_path)
    with system_with_debug_logs(redis_url, tmp_path / "logs") as system:
        env = system.env()
        # Positive controls: the search finds the key in what we hand the CLI, and in a broker message.
        assert KEY.encode() in leaks(json.dumps(env).encode())
        fake = {"body": base64.b64encode(json.dumps([["x", KEY], {}, {}]).encode()).decode(), "headers": {}}
        assert leaks(json.dumps(fake).encode())
        assert leaks(b"..." + base64.b64encode(b"{'k': '" + KEY.encode() + b"'}") + b"...")
        assert leaks(b"?key=" + quote_plus(KEY).encode())

        sampler, monitor = RedisSampler(redis_url), RedisMonitor(redis_url)
        monitor.start()
        assert monitor.listening.wait(10)
        # Positive control of the command search: a broker-shaped message with the key, sent to Redis.
        control = redis.Redis.from_url(redis_url)
        control.lpush("kb-test-control", json.dumps(fake, separators=(", ", ": ")))
        control.delete("kb-test-control")
        deadline = time.monotonic() + 10
        while not monitor.found and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.found, "the command search did not find the key in a message sent to Redis"
        monitor.found.clear()
        sampler.start()
        try:
            run = subprocess.run(
                [sys.executable, "-m", "kontext_batch", "run", str(path), "--output", str(out), "--wait"],
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        finally:
            sampler.stop.set()
            monitor.stop.set()
            sampler.join(10)
            monitor.join(10)
        assert run.returncode == 1, run.stderr[-3000:]  # two rows failed or were moderated, by design
        run_id = run.stdout.decode().splitlines()[0].strip()
        cli_outputs: dict[str, bytes] = {"run stdout": run.stdout, "run stderr": run.stderr}
        for args in (("status", run_id, "--json"), ("status",), ("results", run_id)):
            p = system.cli(*args)
            assert p.returncode == 0, (args, p.stderr[-2000:])
            name = " ".join(a for a in args if a != run_id)  # "status --json", "status", "results"
            cli_outputs[f"{name} stdout"] = p.stdout.encode()
            cli_outputs[f"{name} stderr"] = p.stderr.encode()
        stats = json.dumps(system.emu.stats()).encode()
        final_redis = dump_redis(redis.Redis.from_url(redis_url))

    found: dict[str, list[bytes]] = {}

    def search(where: str, data: bytes) -> None:
        if hits := leaks(data):
            found[where] = hits

    for name, data in cli_outputs.items():
        search(f"CLI {name}", data)
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert logs
    log_lines = 0
    for log in logs:
        for i, line in enumerate(log.read_bytes().splitlines(), 1):
            log_lines += 1
            search(f"{log.name}:{i}", line)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name == "results.csv" for f in files)
    assert sum(f.suffix == ".json" for f in files) == 10  # one sidecar per succeeded row
    for f in files:
        search(str(f.relative_to(out)), f.read_bytes())
    for key, blob in final_redis.items():
        search(f"redis {key}", blob)
    search("emulator stats", stats)
    for key, hits in sampler.found.items():
        found[f"redis (during the run) {key}"] = hits
    for command, hits in monitor.found.items():
        found[f"redis command {command}"] = hits

    assert not found, f"the API key leaked into: {sorted(found)}"
    # The search looked at something real: DEBUG logs, the run's keys, and broker messages in flight.
    assert log_lines > 100
    assert any(k.startswith("kb:run:") for k in final_redis)
    assert sampler.samples >= 3
    print(
        f"searched {log_lines} log lines, {len(files)} objects, {len(final_redis)} Redis keys at the end, "
        f"{sampler.samples} Redis samples during the run (broker keys seen: {sorted(sampler.broker_keys)}), "
        f"{monitor.commands} commands, {monitor.bodies_decoded} broker message bodies decoded"
    )
    assert sampler.broker_keys, "no Celery queue or binding was seen during the run"
    assert monitor.bodies_decoded >= 12, "fewer broker message bodies decoded than the run's rows"
    results = list(io.StringIO(cli_outputs["results stdout"].decode()))
    assert len(results) == 1 + 12
