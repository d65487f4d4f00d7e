"""One name per setting: the new name is read, an old one still works with one deprecation
warning, and when both are set the new one wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from paddler_trio.agent.model_cache_directory import model_cache_directory
from paddler_trio.environment_variables import (
    INFERENCE_API_KEY,
    MANAGEMENT_API_KEY,
    EnvironmentVariable,
)
from paddler_trio.security.secret_sources import collect_keys

pytestmark = pytest.mark.usefixtures("fresh_deprecation_warnings")

RENAMED = EnvironmentVariable("PADDLER_NEW", old_names=("PADDLER_OLD",))


def deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_the_new_name_is_read_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert RENAMED.lookup({"PADDLER_NEW": "value"}) == ("PADDLER_NEW", "value")
        assert RENAMED.read({"PADDLER_NEW": "value"}) == "value"
    assert deprecations(caplog) == []


def test_an_old_name_is_still_read_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert RENAMED.lookup({"PADDLER_OLD": "value"}) == ("PADDLER_OLD", "value")
        assert RENAMED.read({"PADDLER_OLD": "value"}) == "value"
    assert deprecations(caplog) == ["$PADDLER_OLD is deprecated: set $PADDLER_NEW instead"]


def test_the_new_name_wins_when_both_are_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert RENAMED.read({"PADDLER_NEW": "new", "PADDLER_OLD": "old"}) == "new"
    assert deprecations(caplog) == ["$PADDLER_OLD is deprecated and ignored: $PADDLER_NEW is set and wins"]


def test_blank_values_count_as_unset(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert RENAMED.read({}) is None
        assert RENAMED.read({"PADDLER_NEW": " ", "PADDLER_OLD": ""}) is None
        assert RENAMED.read({"PADDLER_NEW": "", "PADDLER_OLD": "old"}) == "old"
    assert deprecations(caplog) == ["$PADDLER_OLD is deprecated: set $PADDLER_NEW instead"]


@pytest.mark.parametrize(
    ("variable", "new_name", "old_name"),
    [
        (INFERENCE_API_KEY, "PADDLER_INFERENCE_API_KEY", "PADDLER_INFERENCE_API_KEYS"),
        (MANAGEMENT_API_KEY, "PADDLER_MANAGEMENT_API_KEY", "PADDLER_MANAGEMENT_API_KEYS"),
    ],
)
def test_api_key_variables(
    variable: EnvironmentVariable, new_name: str, old_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert collect_keys([], [], variable, {new_name: "new-1,new-2"}) == ("new-1", "new-2")
        assert deprecations(caplog) == []

        assert collect_keys(["flag"], [], variable, {old_name: "old-1, old-2"}) == ("flag", "old-1", "old-2")
        assert deprecations(caplog) == [f"${old_name} is deprecated: set ${new_name} instead"]

        assert collect_keys([], [], variable, {new_name: "new", old_name: "old"}) == ("new",)


def test_the_download_cache_reads_paddlers_name_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PADDLER_TRIO_MODELS_DIR", str(tmp_path / "bundled"))
    monkeypatch.delenv("PADDLER_CACHE_DIR", raising=False)
    with caplog.at_level(logging.WARNING):
        # The old name only ever moved the bundled models (tests/test_bundled_models.py).
        assert model_cache_directory() == tmp_path / "xdg" / "paddler"
        monkeypatch.setenv("PADDLER_CACHE_DIR", str(tmp_path / "cache"))
        assert model_cache_directory() == tmp_path / "cache"
    assert deprecations(caplog) == []
