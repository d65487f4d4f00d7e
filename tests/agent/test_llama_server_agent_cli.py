"""`paddler agent` flags of the llama-server mode: what is refused, and the sentence that says why."""

from __future__ import annotations

import subprocess
import sys

import pytest

MANAGEMENT = ["--management-addr", "127.0.0.1:1"]


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paddler_trio", "agent", *MANAGEMENT, *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local-llamacpp-addr", "127.0.0.1:8080", "--slots", "2"], "--slots is for an agent that runs llama.cpp itself"),
        (["--slots", "2", "--external-llamacpp-addr", "10.0.0.5:8080"], "--external-llamacpp-addr needs --local-llamacpp-addr"),
        ([], "--slots is required (or --local-llamacpp-addr"),
        (["--local-llamacpp-addr", "127.0.0.1:8080", "--monitoring-interval", "0"], "--monitoring-interval must be at least 1"),
        (["--local-llamacpp-addr", "127.0.0.1:8080", "--monitoring-interval", "1.5"], "expected a duration in whole milliseconds"),
        (["--local-llamacpp-addr", "8080"], "expected HOST:PORT"),
    ],
)
def test_bad_flags_are_refused_with_a_reason(args: list[str], message: str) -> None:
    result = agent_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_help_names_the_mode_and_paddler_1x_key_flag() -> None:
    help_text = agent_cli("--help").stdout
    assert "--local-llamacpp-addr" in help_text and "--local-llamacpp-api-key" in help_text
    assert "Paddler 1.x's was 10000" in " ".join(help_text.split())
