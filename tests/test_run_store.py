"""The run store against real Redis: what it raises for rows it does not have."""

from __future__ import annotations

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunStore
from kontext_batch.errors import ConfigError


def test_a_missing_row_is_a_config_error(redis_client: redis.Redis) -> None:
    runs = RunStore(redis_client, Keys("kbtest"))
    runs.put_rows("r1", [(1, {"prompt": "x"})])
    assert runs.row("r1", 1) == {"prompt": "x"}
    with pytest.raises(ConfigError, match="run r1 has no row 2"):
        runs.row("r1", 2)
