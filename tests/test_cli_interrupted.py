"""A stop the library honours (:class:`Interrupted`) is handled as Ctrl-C's KeyboardInterrupt is:
nothing queued and 130 while checking the manifest, a detach while following, and under the private
stack of ``--local`` and ``demo`` everything stopped and 130.

The library calls are replaced by ones that raise; no Redis or worker is involved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from kontext_batch.cli import watch
from kontext_batch.cli.exits import EXIT_INTERRUPTED
from kontext_batch.errors import Interrupted
from kontext_batch.run.enqueue import RunRequest
from kontext_batch.settings import Settings

Stop = Callable[[], BaseException]
STOPS: list[Stop] = [KeyboardInterrupt, lambda: Interrupted("stop asked")]


def _raise(stop: Stop) -> Callable[..., None]:
    def raiser(*_: object, **__: object) -> None:
        raise stop()

    return raiser


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    fake = SimpleNamespace(settings=Settings())
    monkeypatch.setattr(watch, "runtime", lambda _s: fake)
    monkeypatch.setattr(watch, "trusted", lambda r: r)  # no Redis behind the fake to look at
    return fake


@pytest.mark.parametrize("stop", STOPS, ids=["KeyboardInterrupt", "Interrupted"])
def test_a_stop_while_the_manifest_is_checked_queues_nothing_and_returns_130(
    stop: Stop, rt: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(watch, "start_run", _raise(stop))
    code = watch.submit_and_follow(Settings(), RunRequest("m.csv", "out"), as_json=False)
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted while checking the manifest: nothing was queued\n"


@pytest.mark.parametrize("stop", STOPS, ids=["KeyboardInterrupt", "Interrupted"])
def test_a_stop_while_following_detaches_and_returns_130(
    stop: Stop, rt: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(watch, "follow", _raise(stop))
    assert watch.follow_run(rt, "RUN-1", as_json=True) == EXIT_INTERRUPTED  # type: ignore[arg-type]  # a stand-in runtime
    err = capsys.readouterr().err
    assert "detached from run RUN-1: it goes on without this terminal" in err
    assert "re-attach with: kontext-batch follow RUN-1" in err


@pytest.mark.parametrize("stop", STOPS, ids=["KeyboardInterrupt", "Interrupted"])
@pytest.mark.parametrize("where", ["start_run", "follow"])
def test_under_the_private_stack_a_stop_stops_everything_and_exits_130(
    stop: Stop,
    where: str,
    rt: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stopped: list[bool] = []

    @contextlib.contextmanager
    def local_stack(s: Settings, **_: object) -> Iterator[Settings]:
        try:
            yield s
        finally:
            stopped.append(True)

    monkeypatch.setattr(watch, "local_stack", local_stack)
    monkeypatch.setattr(watch, where, _raise(stop))
    if where == "follow":
        monkeypatch.setattr(watch, "start_run", lambda *_a, **_k: _queued())
    req = RunRequest("m.csv", "out", wait=True)
    with pytest.raises(SystemExit) as exited, watch.private_stack(Settings(), emulator=True, workers=1) as s2:
        watch.submit_and_follow(s2, req, as_json=True, detach=False)
    assert exited.value.code == EXIT_INTERRUPTED
    assert stopped == [True]
    assert "interrupted: stopping everything this command started" in capsys.readouterr().err


def _queued() -> SimpleNamespace:
    report = SimpleNamespace(cost_credits=0, per_endpoint={})
    return SimpleNamespace(run_id="RUN-1", total=0, queued=0, skipped=0, invalid=0, report=report)
