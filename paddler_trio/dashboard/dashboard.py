"""`paddler dashboard`: a live Rich view of a running balancer, fed by its management service.

    run_dashboard
    ├── agents feed          SSE /api/v1/agents/stream (reconnects every second while the balancer is away)
    ├── buffer feed          SSE /api/v1/buffered_requests/stream (same)
    ├── token counter        GET /metrics every second -> cluster tokens/s
    ├── metadata fetcher     GET /api/v1/agent/{id}/model_metadata for the selected agent
    └── keys                 ↑/↓ select, q/Esc quit (when stdin is a terminal)
    The screen is redrawn on every change and once a second.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
import httpx
import trio
from rich.console import Console
from rich.live import Live

from paddler_trio.dashboard.dashboard_state import DashboardState
from paddler_trio.dashboard.dashboard_view import render
from paddler_trio.dashboard.event_stream import follow_events
from paddler_trio.dashboard.terminal_keys import Key, cbreak_terminal, read_keys
from paddler_trio.protocol import (
    AgentControllerPoolSnapshot,
    AgentKind,
    BufferedRequestsSnapshot,
    ModelMetadata,
    WireFormatError,
    from_json,
)

RECONNECT_DELAY = 1.0
METRICS_INTERVAL = 1.0
REDRAW_INTERVAL = 1.0
HTTP_TIMEOUT = httpx.Timeout(5.0, read=30.0)  # SSE keep-alives come every 10 s
_TOKEN_COUNTER = re.compile(r"^\S*generated_tokens_total (\d+)$", re.MULTILINE)


@attrs.frozen
class DashboardConfig:
    management_addr: str
    max_buffered_requests: int | None = None
    api_key: str | None = None


class _Dashboard:
    def __init__(self, config: DashboardConfig, client: httpx.AsyncClient) -> None:
        self._base = f"http://{config.management_addr}"
        self._client = client
        self.state = DashboardState(config.management_addr, config.max_buffered_requests)
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait_changed(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = trio.Event()

    async def follow(self, name: str, path: str, take: Callable[[str], None]) -> None:
        while True:
            try:
                async for data in follow_events(self._client, self._base + path):
                    take(data)
                    self.state.has_connected = True
                    self.state.connection_problems.pop(name, None)
                    self.changed()
                problem = "the balancer closed the stream"
            except httpx.HTTPStatusError as error:
                problem = f"HTTP {error.response.status_code}"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            except WireFormatError as error:
                problem = f"unreadable {name} event: {error}"
            self.state.connection_problems[name] = problem
            self.changed()
            await trio.sleep(RECONNECT_DELAY)

    def take_agents(self, data: str) -> None:
        self.state.take_agents(from_json(data, AgentControllerPoolSnapshot).agents)

    def take_buffer(self, data: str) -> None:
        self.state.buffered_requests = from_json(data, BufferedRequestsSnapshot).buffered_requests_current

    async def count_tokens(self) -> None:
        while True:
            try:
                response = await self._client.get(self._base + "/metrics")
                found = _TOKEN_COUNTER.search(response.text)
                if response.status_code == 200 and found:
                    self.state.take_token_count(int(found.group(1)))
                    self.changed()
            except httpx.HTTPError:
                pass  # the feeds report the connection
            await trio.sleep(METRICS_INTERVAL)

    async def fetch_metadata(self) -> None:
        while True:
            row = self.state.selected
            # An agent watching a llama-server answers no metadata request (409).
            if row is not None and row.snapshot.model_path is not None and row.snapshot.kind is AgentKind.ENGINE:
                key = (row.snapshot.id, row.snapshot.model_path)
                if key not in self.state.metadata:
                    self.state.metadata[key] = await self._metadata_of(row.snapshot.id)
                    self.changed()
            await trio.sleep(0.2)

    async def _metadata_of(self, agent_id: str) -> dict[str, str] | str:
        try:
            response = await self._client.get(f"{self._base}/api/v1/agent/{agent_id}/model_metadata")
        except httpx.HTTPError as error:
            return f"cannot ask the balancer: {type(error).__name__}"
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text.strip()[:200]}"
        if response.text.strip() == "null":
            return "the agent has no model loaded"
        try:
            return dict(from_json(response.text, ModelMetadata).metadata)
        except WireFormatError as error:
            return f"unreadable metadata: {error}"

    async def react_to_keys(self, descriptor: int, quit_scope: trio.CancelScope) -> None:
        async for key in read_keys(descriptor):
            if key is Key.QUIT:
                quit_scope.cancel()
                return
            self.state.move_selection(-1 if key is Key.UP else 1)
            self.changed()


async def run_dashboard(config: DashboardConfig, console: Console | None = None) -> None:
    """Until q/Esc (or the caller's cancellation, e.g. Ctrl-C)."""
    console = console or Console()
    headers = {} if config.api_key is None else {"Authorization": f"Bearer {config.api_key}"}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers=headers) as client:
        dashboard = _Dashboard(config, client)
        with cbreak_terminal() as descriptor, Live(
            render(dashboard.state), console=console, screen=True, auto_refresh=False
        ) as live:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dashboard.follow, "agents", "/api/v1/agents/stream", dashboard.take_agents)
                nursery.start_soon(
                    dashboard.follow, "buffer", "/api/v1/buffered_requests/stream", dashboard.take_buffer
                )
                nursery.start_soon(dashboard.count_tokens)
                nursery.start_soon(dashboard.fetch_metadata)
                if descriptor is not None:
                    nursery.start_soon(dashboard.react_to_keys, descriptor, nursery.cancel_scope)
                while True:
                    live.update(render(dashboard.state), refresh=True)
                    await dashboard.wait_changed(REDRAW_INTERVAL)
