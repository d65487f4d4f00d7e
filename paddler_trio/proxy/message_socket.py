"""An accepted server-side WebSocket as the agents' link uses it (`management/agent_socket.py`):
Quart's (`QuartMessageSocket`), or a test's double."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from quart import Websocket


class MessageSocket(Protocol):
    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes: ...

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        """Hand every further message to `take` until it returns False; `take` must not block."""

    async def send_texts(self, texts: Iterable[str]) -> None:
        """Each text as its own message, in order."""

    async def close(self, code: int, reason: str | None = None) -> None: ...


class QuartMessageSocket:
    """Quart's WebSocket as a `MessageSocket`; `accept_headers` go on the upgrade's answer."""

    def __init__(self, websocket: Websocket, accept_headers: Mapping[str, str] | None = None) -> None:
        self._websocket = websocket
        self._accept_headers = dict(accept_headers or {})

    async def accept(self) -> None:
        await self._websocket.accept(headers=self._accept_headers)

    async def receive(self) -> str | bytes:
        return await self._websocket.receive()

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        while take(await self._websocket.receive()):
            pass

    async def send_texts(self, texts: Iterable[str]) -> None:
        for text in texts:
            await self._websocket.send(text)

    async def close(self, code: int, reason: str | None = None) -> None:
        await self._websocket.close(code, reason)
