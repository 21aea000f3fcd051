"""The pool registry against real Redis: pools read back by id, refused keys."""

from __future__ import annotations

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.pools import Pool, Pools
from kontext_batch.errors import ConfigError

KEYS = Keys("kbtest")


def test_a_registered_pool_is_read_back_by_another_process(redis_client: redis.Redis) -> None:
    pool = Pool.of(["b", "a", "a"])
    Pools(redis_client, KEYS).register_pool(pool)
    assert Pools(redis_client, KEYS).pool(pool.id) == Pool(pool.id, ("a", "b"))


def test_an_unknown_pool_is_a_config_error(redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="no key pool 'nope'"):
        Pools(redis_client, KEYS).pool("nope")


def test_keys_out_are_remembered_until_cleared(redis_client: redis.Redis) -> None:
    p = Pools(redis_client, KEYS)
    p.mark_key_out("a", "403")
    assert p.keys_out() == {"a": "403"}
    p.clear_keys_out(["a"])
    assert p.keys_out() == {}
