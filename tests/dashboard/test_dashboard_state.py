"""The dashboard's state: agent rows, selection, tokens/s; and key decoding."""

from __future__ import annotations

import attrs
from rich.console import Console

from paddler_trio.dashboard.dashboard_state import DashboardState
from paddler_trio.dashboard.dashboard_view import model, prompt_cache, render, slot_bar
from paddler_trio.dashboard.terminal_keys import Key, decode_keys
from paddler_trio.protocol import (
    AgentControllerSnapshot,
    AgentKind,
    LegacyStatusStream,
    LlamaServerStatus,
    ModelFileDoesNotExist,
    StateApplicationStatus,
)


def _agent(agent_id: str, name: str | None, **changes) -> AgentControllerSnapshot:
    fields = {
        "desired_slots_total": 4,
        "download_current": 0,
        "download_indeterminate": False,
        "download_total": 0,
        "id": agent_id,
        "issues": frozenset(),
        "model_path": "/models/m.gguf",
        "name": name,
        "slots_processing": 1,
        "slots_total": 4,
        "state_application_status": StateApplicationStatus.APPLIED,
        "uses_chat_template_override": False,
    }
    return AgentControllerSnapshot(**{**fields, **changes})


def test_rows_are_sorted_by_name_and_keep_their_last_update_until_they_change() -> None:
    state = DashboardState("127.0.0.1:8060", 30)
    state.take_agents((_agent("b", "zeta"), _agent("a", "alpha")), now=100.0)
    assert [row.snapshot.name for row in state.agents] == ["alpha", "zeta"]
    assert state.selected_agent_id == "a"
    state.take_agents((_agent("b", "zeta"), _agent("a", "alpha", slots_processing=2)), now=200.0)
    assert [row.last_update for row in state.agents] == [200.0, 100.0]
    assert (state.slots_processing, state.slots_total) == (3, 8)


def test_selection_wraps_and_follows_agents_that_leave() -> None:
    state = DashboardState("127.0.0.1:8060", None)
    state.take_agents((_agent("a", "a"), _agent("b", "b"), _agent("c", "c")))
    state.move_selection(-1)
    assert state.selected_agent_id == "c"
    state.move_selection(1)
    assert state.selected_agent_id == "a"
    state.take_agents((_agent("b", "b"),))
    assert state.selected_agent_id == "b"
    state.take_agents(())
    assert state.selected is None


def test_tokens_per_second_over_a_window_and_a_restarted_counter() -> None:
    state = DashboardState("127.0.0.1:8060", None)
    assert state.tokens_per_second is None
    state.take_token_count(100, now=0.0)
    state.take_token_count(150, now=1.0)
    state.take_token_count(250, now=2.0)
    assert state.tokens_per_second == 75.0
    for second in range(3, 20):
        state.take_token_count(250 + 10 * (second - 2), now=float(second))
    assert state.tokens_per_second == 10.0
    state.take_token_count(5, now=20.0)  # the balancer restarted
    assert state.tokens_per_second is None


def test_keys_decode_arrows_quit_and_skip_other_sequences() -> None:
    assert decode_keys(b"\x1b[A\x1b[Bq") == [Key.UP, Key.DOWN, Key.QUIT]
    assert decode_keys(b"\x1b") == [Key.QUIT]
    assert decode_keys(b"\x1b[Cjk") == [Key.DOWN, Key.UP]


def test_the_screen_shows_agents_issues_buffer_and_connection() -> None:
    state = DashboardState("127.0.0.1:8060", 30)
    state.take_agents((_agent("a", "gpu-1", issues=frozenset({ModelFileDoesNotExist(model_path="/models/m.gguf")})),))
    state.buffered_requests = 3
    state.has_connected = True
    state.connection_problems["agents"] = "ConnectError"
    console = Console(width=160, record=True, color_system=None)
    console.print(render(state))
    screen = console.export_text()
    assert "gpu-1" in screen and "m.gguf" in screen and "1/4" in screen
    assert "ModelFileDoesNotExist" in screen
    assert "buffered requests 3 / 30" in screen
    assert "lost the balancer (ConnectError), reconnecting" in screen
    assert slot_bar(4, 4).plain.startswith("█" * 12)


def test_the_prompt_cache_shows_states_and_mib_or_why_there_is_none() -> None:
    mib = 1024 * 1024
    assert prompt_cache(_agent("a", "a")).plain == "—"  # not reported (a Paddler agent, or no model)
    assert prompt_cache(_agent("a", "a", cache_states=0, cache_used_bytes=0, cache_limit_bytes=0)).plain == "off"
    reported = _agent("a", "a", cache_states=1, cache_used_bytes=300 * mib, cache_limit_bytes=1024 * mib)
    assert prompt_cache(reported).plain == "1 state, 300/1024 MiB"
    assert prompt_cache(attrs.evolve(reported, cache_states=12)).plain == "12 states, 300/1024 MiB"


def test_the_model_column_and_the_details_show_the_projector_an_agent_reports() -> None:
    assert model(_agent("a", "a")).plain == "m.gguf"  # none loaded, or not reported (a Paddler agent)
    assert model(_agent("a", "a", model_path=None, multimodal_projection_path="/models/p.gguf")).plain == "No model loaded"
    with_projector = _agent("a", "gpu-1", multimodal_projection_path="/models/mmproj-m.gguf")
    assert model(with_projector).plain == "m.gguf + mmproj-m.gguf"
    state = DashboardState("127.0.0.1:8060", 30)
    state.take_agents((with_projector,))
    console = Console(width=160, record=True, color_system=None)
    console.print(render(state))
    screen = console.export_text()
    assert "m.gguf + mmproj-m.gguf" in screen
    assert "│ projector     /models/mmproj-m.gguf" in screen


def test_agents_watching_a_llama_server_show_their_kind_model_name_and_address() -> None:
    watcher = _agent(
        "w",
        "watcher",
        kind=AgentKind.LLAMA_SERVER,
        llama_server=LlamaServerStatus(external_llamacpp_addr="10.0.0.5:8080", model_name="qwen2.5-coder-0.5b"),
        model_path="/srv/models/qwen.gguf",
        state_application_status=StateApplicationStatus.FRESH,
        slots_processing=2,
    )
    # A Paddler 1.x agent reports no model.
    legacy = _agent(
        "x",
        "paddler-1.2",
        kind=AgentKind.LLAMA_SERVER,
        llama_server=LlamaServerStatus(external_llamacpp_addr="10.0.0.6:8080"),
        legacy_status_stream=LegacyStatusStream.PADDLER_1X,
        model_path=None,
        state_application_status=StateApplicationStatus.FRESH,
    )
    assert model(watcher).plain == "qwen2.5-coder-0.5b"
    assert model(attrs.evolve(watcher, llama_server=LlamaServerStatus(external_llamacpp_addr="a:1"))).plain == "qwen.gguf"
    assert model(legacy).plain == "not reported"
    state = DashboardState("127.0.0.1:8060", 30)
    state.take_agents((watcher, legacy, _agent("e", "engine")))
    state.selected_agent_id = "w"
    console = Console(width=200, record=True, color_system=None)
    console.print(render(state))
    screen = console.export_text()
    row = next(line for line in screen.splitlines() if "watcher" in line and "qwen" in line)
    assert "qwen2.5-coder-0.5b" in row and "2/4" in row and "llama-server" in row and "Fresh" not in row
    assert "slots busy 4/12" in screen  # its busy slots count with the others'
    assert "│ llama-server  at 10.0.0.5:8080" in screen
    assert "│ model name    qwen2.5-coder-0.5b" in screen
    assert "metadata" not in screen  # it answers no metadata request
    state.selected_agent_id = "x"
    console = Console(width=200, record=True, color_system=None)
    console.print(render(state))
    screen = console.export_text()
    assert "│ llama-server  at 10.0.0.6:8080, reported by a Paddler 1.x agent" in screen
    assert "│ model name    not reported" in screen
