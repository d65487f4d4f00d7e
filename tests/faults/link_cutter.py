"""A tiny TCP proxy on Trio, run in a thread, that relays every connection to a target port
until a test cuts them all at once (both sides closed, as a broken network link looks to
the two ends), then keeps accepting new connections."""

from __future__ import annotations

import threading
from typing import Self

import trio


class LinkCutter:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)
        self._links: list[trio.CancelScope] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._root: trio.CancelScope | None = None
        self.port = 0
        self.accepted = 0

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the link cutter did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None and self._root is not None
        trio.from_thread.run_sync(self._root.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> int:
        """Close every relayed connection now; returns how many were cut."""
        assert self._token is not None
        return trio.from_thread.run_sync(self._cut_all, trio_token=self._token)

    def _cut_all(self) -> int:
        links, self._links = self._links, []
        for link in links:
            link.cancel()
        return len(links)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._root:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._relay, listeners)
                self._ready.set()

    async def _relay(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self._target_port)
            except OSError:
                return
            async with server:
                with trio.CancelScope() as link:
                    self._links.append(link)
                    async with trio.open_nursery() as pumps:
                        pumps.start_soon(_pump, client, server, link)
                        pumps.start_soon(_pump, server, client, link)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, link: trio.CancelScope) -> None:
    try:
        async for data in source:
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    link.cancel()  # one side ended: end the other too
