"""Keys from flags, files and the environment; constant-time matching of every key; nothing of
a key in the configuration's repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import socket_address
from paddler_trio.environment_variables import EnvironmentVariable
from paddler_trio.security.api_keys import ApiKeys
from paddler_trio.security.secret_sources import (
    SecretSourceError,
    collect_keys,
    collect_secret,
)

KEYS = EnvironmentVariable("KEYS")
SECRET = EnvironmentVariable("SECRET")


def test_keys_add_up_from_every_source_without_blanks_or_duplicates(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotation\nfile-1\n\n  file-2  \nflag-1\n")
    environment = {"KEYS": "env-1, ,file-1,env-2"}
    assert collect_keys(["flag-1"], [keys], KEYS, environment) == ("flag-1", "file-1", "file-2", "env-1", "env-2")
    assert collect_keys([], [], KEYS, {}) == ()


def test_unreadable_or_empty_key_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(SecretSourceError, match="holds no key"):
        collect_keys([], [empty], KEYS, {})
    with pytest.raises(SecretSourceError, match="cannot read the key file"):
        collect_keys([], [tmp_path / "missing"], KEYS, {})


def test_secret_prefers_flag_then_file_then_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    environment = {"SECRET": " from-env "}
    assert collect_secret("from-flag", secret_file, SECRET, environment) == "from-flag"
    assert collect_secret(None, secret_file, SECRET, environment) == "from-file"
    assert collect_secret(None, None, SECRET, environment) == "from-env"
    assert collect_secret(None, None, SECRET, {}) is None


def test_api_keys_accept_any_configured_key_only() -> None:
    keys = ApiKeys.of(["alpha", "beta"])
    assert keys.required
    assert keys.accepts("alpha") and keys.accepts("beta")
    assert not keys.accepts("alph") and not keys.accepts("alphax") and not keys.accepts("")
    assert not ApiKeys.of([]).required
    assert "alpha" not in repr(keys)


def test_config_repr_hides_keys_and_secret() -> None:
    config = BalancerConfig(
        inference_addr=socket_address("127.0.0.1:1"),
        management_addr=socket_address("127.0.0.1:2"),
        inference_api_keys=("inference-secret-key",),
        management_api_keys=("management-secret-key",),
        agent_secret="agent-secret-value",
    )
    text = repr(config)
    assert "secret-key" not in text and "agent-secret-value" not in text
