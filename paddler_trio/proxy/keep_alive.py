"""What Hypercorn 0.18 needs from the apps it serves for a kept-alive connection to go on, or
to end, properly (an ASGI middleware: `keeping_connections_sound(app)`).

- Hypercorn does its connection's bookkeeping inside the app's `send`: after the last chunk of
  a response it readies the connection for the next request, restarts its idle timer (which
  also closes the connection when the server shuts down), or closes it. quart-trio cancels the
  request's tasks as soon as that bookkeeping tells it the request is over, so the bookkeeping
  was cut short: idle connections were never timed out, and at shutdown they held the
  balancer until Hypercorn's graceful deadline. Each `send` therefore runs shielded (Hypercorn
  already shields its socket writes, so a slow client blocks no longer than before).
- Hypercorn cannot go on with a connection whose request body has not arrived to its end (a 404
  or 401 answered at once to a PUT whose body is still on its way): it closes the connection
  after the response. Told nothing, a client sends its next request on that connection and
  waits for an answer that never comes, so such a response says `Connection: close`.

Paddler turns keep-alive off altogether (spec 0); we keep it, because a client with a
connection pool (an OpenAI SDK, a TLS client) saves a connection set-up per request.
`nursery/balancer.py` serves every Hypercorn port's app through it.
"""

from __future__ import annotations

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)

_CLOSE = (b"connection", b"close")


def keeping_connections_sound(app: ASGIFramework) -> ASGIFramework:
    async def serve(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_pending = scope["http_version"].startswith("1") and _declares_body(scope)

        async def receive_watching() -> ASGIReceiveEvent:
            nonlocal body_pending
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_pending = False
            return message

        async def send_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and body_pending:
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}  # type: ignore[typeddict-item]
            with trio.CancelScope(shield=True):
                await send(message)

        await app(scope, receive_watching, send_shielded)

    return serve


def _declares_body(scope: HTTPScope) -> bool:
    for name, value in scope["headers"]:
        if name.lower() == b"transfer-encoding" or (name.lower() == b"content-length" and value.strip() != b"0"):
            return True
    return False
