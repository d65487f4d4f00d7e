"""Server-sent events from the management service, one `data:` payload at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


async def follow_events(client: httpx.AsyncClient, url: str) -> AsyncIterator[str]:
    """Each event's data (its `data:` lines joined); ends when the server ends the stream."""
    async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                yield "\n".join(data)
                data = []
