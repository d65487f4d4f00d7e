"""`--state-database file://`: Paddler's file format, atomic writes, start-up refusals, and
the desired-state API over a file (spec 4.2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddler_trio.management.state_database import (
    FileStateDatabase,
    StateDatabaseError,
    open_state_database,
)
from paddler_trio.protocol import (
    BalancerDesiredState,
    ChatTemplate,
    InferenceParameters,
    LocalToAgentModel,
    UrlModel,
    to_json,
)
from tests.proxy.balancer_harness import running_balancer

DESIRED = "/api/v1/balancer_desired_state"

CUSTOM = BalancerDesiredState(
    chat_template_override=ChatTemplate("{{ messages[0].content }} ünïcode"),
    inference_parameters=InferenceParameters(context_size=1024, temperature=0.3),
    model=UrlModel("https://example.com/model.gguf"),
    multimodal_projection=LocalToAgentModel("/models/mmproj.gguf"),
    use_chat_template_override=True,
)


def run_balancer_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paddler_trio", "balancer", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_missing_file_is_created_with_the_default_state_in_paddlers_format(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    database = open_state_database(f"file://{path}")
    assert isinstance(database, FileStateDatabase)
    text = path.read_text()
    assert text.startswith('{\n  "balancer_desired_state": {\n    "chat_template_override": null,')
    document = json.loads(text)
    assert list(document) == ["balancer_desired_state", "version"]
    assert document["version"] == "1"
    assert document["balancer_desired_state"] == json.loads(to_json(BalancerDesiredState.default()))


def test_an_empty_file_is_filled_with_the_default_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("  \n")
    open_state_database(f"file://{path}")
    assert json.loads(path.read_text())["balancer_desired_state"]["model"] == "None"


async def test_a_stored_state_is_written_atomically_and_read_back_on_start(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    database = open_state_database(f"file://{path}")
    await database.store(CUSTOM)
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temporary file left behind
    assert "ünïcode" in path.read_text()  # UTF-8, not \u escapes, as serde writes it
    reopened = open_state_database(f"file://{path}")
    assert await reopened.read() == CUSTOM


async def test_a_store_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    database = open_state_database(f"file://{path}")
    path.unlink()
    path.mkdir()  # the rename onto it fails (also as root)
    with pytest.raises(OSError):
        await database.store(CUSTOM)
    assert await database.read() == BalancerDesiredState.default()
    assert database.version == 0
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # the temporary file is removed


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{\n  "balancer_desired_state": {\n    "model": "None",\n  }', "line 4, column 3"),
        ('{"balancer_desired_state": {}, "version": "1"}', 'missing field'),
        ('{"balancer_desired_state": {}, "version": "2"}', "field 'version' must be '1'"),
        ('{"desired": {}, "version": "1"}', "unknown field(s) 'desired'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_a_file_that_does_not_parse_is_reported_and_never_replaced(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateDatabaseError) as error:
        open_state_database(f"file://{path}")
    assert str(path) in str(error.value)
    assert expected in str(error.value)
    assert path.read_text() == content


def test_a_mistyped_field_is_named(tmp_path: Path) -> None:
    document = {"balancer_desired_state": json.loads(to_json(CUSTOM)), "version": "1"}
    document["balancer_desired_state"]["inference_parameters"]["top_k"] = "eighty"
    path = tmp_path / "state.json"
    path.write_text(json.dumps(document, indent=2))
    with pytest.raises(StateDatabaseError, match="top_k"):
        open_state_database(f"file://{path}")


def test_invalid_inference_parameters_in_the_file_are_refused(tmp_path: Path) -> None:
    document = {"balancer_desired_state": json.loads(to_json(CUSTOM)), "version": "1"}
    document["balancer_desired_state"]["inference_parameters"]["embedding_batch_size"] = 0
    path = tmp_path / "state.json"
    path.write_text(json.dumps(document))
    with pytest.raises(StateDatabaseError, match="embedding_batch_size must be greater than zero"):
        open_state_database(f"file://{path}")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///nonexistent-directory/state.json", "directory /nonexistent-directory does not exist"),
        ("file:///sys/paddler-state.json", "directory /sys is not writable"),
        ("file://state.json", "must be absolute"),
        ("ftp://host/state.json", "unsupported state database"),
        ("etcd://127.0.0.1:2379", "--state-database 'etcd://127.0.0.1:2379': names no key prefix"),
        ("etcd://etcd/paddler", "--state-database 'etcd://etcd/paddler': 'etcd' is not HOST:PORT"),
    ],
)
def test_unusable_locations_are_a_one_line_start_up_error(url: str, expected: str) -> None:
    result = run_balancer_cli("--state-database", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paddler balancer: error: ")
    assert expected in lines[0]


def test_a_corrupt_file_stops_the_balancer_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"balancer_desired_state": ')
    result = run_balancer_cli("--state-database", f"file://{path}")
    assert result.returncode == 2
    assert f"state database {path} is not valid JSON (line 1, column 28" in result.stderr
    assert path.read_text() == '{"balancer_desired_state": '


async def test_the_api_stores_into_the_file_and_refuses_invalid_parameters_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    async with running_balancer(state_database=f"file://{path}") as balancer:
        response = await balancer.http.put(f"{balancer.management}{DESIRED}", content=to_json(CUSTOM))
        assert response.status_code == 204
        stored = path.read_bytes()
        assert json.loads(stored)["balancer_desired_state"] == json.loads(to_json(CUSTOM))
        invalid = json.loads(to_json(CUSTOM))
        invalid["inference_parameters"]["image_resize_to_fit"] = 0
        response = await balancer.http.put(f"{balancer.management}{DESIRED}", json=invalid)
        assert response.status_code == 400
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert "image_resize_to_fit must be greater than zero" in response.text
        assert path.read_bytes() == stored
        assert (await balancer.http.get(f"{balancer.management}{DESIRED}")).json() == json.loads(to_json(CUSTOM))
    async with running_balancer(state_database=f"file://{path}") as balancer:
        assert (await balancer.http.get(f"{balancer.management}{DESIRED}")).json() == json.loads(to_json(CUSTOM))
        applicable = (await balancer.http.get(f"{balancer.management}/api/v1/balancer_applicable_state")).json()
        assert applicable["model"] == {"Url": {"url": "https://example.com/model.gguf"}}
