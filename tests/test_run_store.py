"""The run store against real Redis: what it raises for rows it does not have."""

from __future__ import annotations

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunStore
from kontext_batch.errors import PermanentError, RunNotFound


def test_a_missing_row_is_run_not_found(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, Keys("kbtest"))
    runs.put_rows("r1", [(1, {"prompt": "x"})])
    assert runs.row("r1", 1) == {"prompt": "x"}
    with pytest.raises(RunNotFound, match="run r1 has no row 2") as caught:
        runs.row("r1", 2)
    assert (caught.value.run_id, caught.value.row) == ("r1", 2)
    assert isinstance(caught.value, PermanentError)
