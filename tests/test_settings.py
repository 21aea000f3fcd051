"""Settings: read once from the environment, never showing secrets."""

import pickle
from pathlib import Path

import pytest

from kontext_batch.errors import ConfigError
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings


def test_repr_and_messages_never_show_the_key_or_the_redis_password() -> None:
    s = Settings.from_env({"KONTEXT_API_KEY": "sk-abc123", "KONTEXT_REDIS_URL": "redis://:pw-xyz@h:6379/0"})
    assert "sk-abc123" not in repr(s)
    assert "pw-xyz" not in repr(s)
    assert "pw-xyz" not in s.redis_display
    assert s.redis_display == "redis://:***@h:6379/0"
    assert s.api_key.reveal() == "sk-abc123"


def test_round_trip_through_a_child_environment() -> None:
    s = Settings.from_env({"KONTEXT_API_KEY": "k", "KONTEXT_API_BASE": "eu", "KONTEXT_MAX_ACTIVE_MODELS": "a=2,b=3"})
    assert Settings.from_env(s.to_env()) == s
    assert s.api_base == "https://api.eu.bfl.ai"
    assert s.cap_for("a") == 2
    assert s.cap_for("flux-kontext-pro") == 24


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KONTEXT_MAX_ACTIVE": "abc"}, "KONTEXT_MAX_ACTIVE"),
        ({"KONTEXT_API_BASE": "ftp://x"}, "KONTEXT_API_BASE"),
        ({"KONTEXT_PROVIDER": "other"}, "KONTEXT_PROVIDER"),
        ({"KONTEXT_MAX_ACTIVE_MODELS": "max"}, "KONTEXT_MAX_ACTIVE_MODELS"),
        ({"KONTEXT_LEASE_S": "0"}, "KONTEXT_LEASE_S"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_secret_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))


def test_a_missing_keys_file_is_an_error_not_a_key(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "kontext_api_keys"
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_env({"KONTEXT_API_KEYS": str(missing)})
    missing.parent.mkdir()
    missing.write_text("key-one total=12\n# a comment\nkey-two\n", encoding="utf-8")
    keys = Settings.from_env({"KONTEXT_API_KEYS": str(missing)}).api_keys
    assert [(k.secret.reveal(), k.max_active) for k in keys] == [("key-one", 12), ("key-two", None)]
