"""An accepted server-side WebSocket as the balancer's sessions use it (the inference socket's
clients, the agents' link): our own `DirectWebSocket` when a port's front took the upgrade over
(`connection_front.py`), or Quart's when the upgrade reached the app (`QuartMessageSocket`)."""

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

    def send_text_now(self, text: str) -> bool:
        """Write `text` as a message at once, with no task switch, if the socket is not being
        written; False (nothing sent) otherwise, or if this socket cannot."""

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

    def send_text_now(self, text: str) -> bool:
        return False  # every message goes through Quart's ASGI send

    async def close(self, code: int, reason: str | None = None) -> None:
        await self._websocket.close(code, reason)
