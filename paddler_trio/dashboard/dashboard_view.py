"""The dashboard's screen as a Rich renderable, from a `DashboardState`."""

from __future__ import annotations

import time
from pathlib import PurePath

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from paddler_trio.dashboard.dashboard_state import AgentRow, DashboardState
from paddler_trio.protocol import AgentControllerSnapshot, AgentKind, LegacyStatusStream, unstructure

SLOT_BAR_WIDTH = 12
# How the details name an unmodified agent's status stream.
STATUS_STREAM_NAMES = {LegacyStatusStream.PADDLER_1X: "Paddler 1.x", LegacyStatusStream.ROWER: "Rower"}
# Metadata keys worth a glance; the rest (vocabularies, templates) is long.
METADATA_PREFIXES = ("general.", "tokenizer.ggml.model", "tokenizer.chat_template")
METADATA_SUFFIXES = (".context_length", ".embedding_length", ".block_count", ".attention.head_count")
METADATA_VALUE_WIDTH = 70


def slot_bar(busy: int, total: int) -> Text:
    filled = 0 if total <= 0 else min(SLOT_BAR_WIDTH, round(SLOT_BAR_WIDTH * busy / total))
    bar = Text("█" * filled, style="yellow" if busy < total else "red")
    bar.append("░" * (SLOT_BAR_WIDTH - filled), style="dim")
    bar.append(f" {busy}/{total}")
    return bar


def issue_name(issue: object) -> str:
    return type(issue).__name__


def prompt_cache(agent: AgentControllerSnapshot) -> Text:
    """The agent's prompt state cache: states held and MiB used (of its limit)."""
    if agent.cache_states is None or agent.cache_used_bytes is None or agent.cache_limit_bytes is None:
        return Text("—", style="dim")  # an agent that does not report it (Paddler's), or no model loaded
    if agent.cache_limit_bytes == 0:
        return Text("off", style="dim")
    states = f"{agent.cache_states} state" + ("" if agent.cache_states == 1 else "s")
    return Text(f"{states}, {agent.cache_used_bytes / 1048576:.0f}/{agent.cache_limit_bytes / 1048576:.0f} MiB")


def model(agent: AgentControllerSnapshot) -> Text:
    """The loaded model's file name, and its multimodal projector's when the agent reports one; for an
    agent watching a llama-server, llama-server's name for its model (what clients send as `model`)."""
    if agent.kind is AgentKind.LLAMA_SERVER:
        name = agent.llama_server.model_name if agent.llama_server else None
        if name is None and agent.model_path:
            name = PurePath(agent.model_path).name
        # Paddler 1.x and Rower agents do not report it.
        return Text(name) if name else Text("not reported", style="dim")
    if not agent.model_path:
        return Text("No model loaded", style="dim")
    name = Text(PurePath(agent.model_path).name)
    if agent.multimodal_projection_path:
        name.append(f" + {PurePath(agent.multimodal_projection_path).name}", style="cyan")
    return name


def status(agent: AgentControllerSnapshot) -> Text:
    """How far the agent applied the desired state; an agent watching a llama-server takes none."""
    if agent.kind is AgentKind.LLAMA_SERVER:
        return Text("llama-server", style="cyan")
    return Text(agent.state_application_status.value)


def llama_server(agent: AgentControllerSnapshot) -> str:
    """Where the llama-server an agent watches listens, and how the agent reports on it."""
    address = agent.llama_server.external_llamacpp_addr if agent.llama_server else "an unknown address"
    if agent.legacy_status_stream is None:
        return f"at {address}"
    return f"at {address}, reported by a {STATUS_STREAM_NAMES[agent.legacy_status_stream]} agent"


def render(state: DashboardState) -> RenderableType:
    keys = Text("↑/↓ select an agent · q quit", style="dim")
    return Group(_header(state), _agents_table(state), _details(state), keys)


def _header(state: DashboardState) -> RenderableType:
    title = Text.assemble(("Paddler dashboard", "bold cyan"), f"  management http://{state.management_addr}  ")
    if state.connection_problems:
        reason = "; ".join(sorted(set(state.connection_problems.values())))
        verb = "lost the balancer" if state.has_connected else "cannot reach the balancer"
        title.append(f"● {verb} ({reason}), reconnecting…", style="bold red")
    else:
        title.append("● live", style="bold green")
    buffered = "?" if state.buffered_requests is None else str(state.buffered_requests)
    limit = f" / {state.max_buffered_requests}" if state.max_buffered_requests is not None else ""
    rate = state.tokens_per_second
    summary = Text.assemble(
        ("agents ", "dim"), str(len(state.agents)),
        ("   slots busy ", "dim"), f"{state.slots_processing}/{state.slots_total}",
        ("   buffered requests ", "dim"), f"{buffered}{limit}",
        ("   cluster tokens/s ", "dim"), "…" if rate is None else f"{rate:.1f}",
    )
    return Group(title, summary)


def _agents_table(state: DashboardState) -> RenderableType:
    table = Table(expand=True, header_style="bold")
    for column in ("", "Name", "Model", "Slots busy/total", "Prompt cache", "Status", "Issues", "Last update"):
        table.add_column(column, no_wrap=column != "Issues")
    for row in state.agents:
        agent = row.snapshot
        selected = agent.id == state.selected_agent_id
        issues = (
            Text(", ".join(sorted(issue_name(issue) for issue in agent.issues)), style="red")
            if agent.issues
            else Text("OK", style="green")
        )
        table.add_row(
            "▶" if selected else "",
            agent.name or Text(agent.id, style="dim"),
            model(agent),
            slot_bar(agent.slots_processing, agent.slots_total),
            prompt_cache(agent),
            status(agent),
            issues,
            time.strftime("%Y/%m/%d, %H:%M:%S", time.localtime(row.last_update)),
            style="reverse" if selected else None,
        )
    if not state.agents:
        message = "Loading agents…" if not state.has_connected else "No agents are registered with this balancer."
        return Panel(Text(message, style="dim"), title="Agents")
    return table


def _details(state: DashboardState) -> RenderableType:
    row = state.selected
    if row is None:
        return Text("")
    return Panel(_details_body(state, row), title=f"Agent {row.snapshot.name or row.snapshot.id}", title_align="left")


def _details_body(state: DashboardState, row: AgentRow) -> RenderableType:
    agent = row.snapshot
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="dim")
    lines.add_column()
    lines.add_row("id", agent.id)
    if agent.kind is AgentKind.LLAMA_SERVER:
        lines.add_row("llama-server", llama_server(agent))
        lines.add_row("model name", model(agent))
        lines.add_row("model", agent.model_path or Text("not reported", style="dim"))
        lines.add_row("slots", str(agent.slots_total))
        _add_issues(lines, agent)
        return lines  # it answers no metadata request: ask llama-server (/props)
    lines.add_row("model", agent.model_path or "none")
    if agent.multimodal_projection_path:
        lines.add_row("projector", agent.multimodal_projection_path)
    lines.add_row("slots", f"{agent.slots_total} running, {agent.desired_slots_total} wanted")
    lines.add_row("prompt cache", prompt_cache(agent))
    if agent.uses_chat_template_override:
        lines.add_row("chat template", "override from the desired state")
    if agent.download_filename or agent.download_total:
        done = agent.download_current / 1048576
        total = "?" if agent.download_indeterminate else f"{agent.download_total / 1048576:.1f}"
        lines.add_row("download", f"{agent.download_filename or ''} {done:.1f} / {total} MiB")
    _add_issues(lines, agent)
    if agent.model_path:
        metadata = state.metadata.get((agent.id, agent.model_path))
        if metadata is None:
            lines.add_row("metadata", Text("loading…", style="dim"))
        elif isinstance(metadata, str):
            lines.add_row("metadata", Text(metadata, style="red"))
        else:
            shown = {key: value for key, value in metadata.items() if _worth_showing(key)}
            lines.add_row("metadata", Text(f"{len(metadata)} keys, showing {len(shown)}", style="dim"))
            for key in sorted(shown):
                value = " ".join(shown[key].split())
                if len(value) > METADATA_VALUE_WIDTH:
                    value = value[: METADATA_VALUE_WIDTH - 1] + "…"
                lines.add_row(f"  {key}", value)
    return lines


def _add_issues(lines: Table, agent: AgentControllerSnapshot) -> None:
    for issue in sorted(agent.issues, key=issue_name):
        details = unstructure(issue)
        payload = next(iter(details.values())) if isinstance(details, dict) else ""
        lines.add_row(Text("issue", style="red"), Text(f"{issue_name(issue)} {payload}".strip()))


def _worth_showing(key: str) -> bool:
    return key.startswith(METADATA_PREFIXES) or key.endswith(METADATA_SUFFIXES)
