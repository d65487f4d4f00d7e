"""A nursery for each HTTP request of a Quart app, for the work that must outlive the route's
return but not its response: an OpenAI route dispatches its request, reads the first reply
before it answers (so that a full buffer or a timeout gets its own HTTP status), and the
response body reads the rest.

`with_request_nurseries(app)` wraps the app's ASGI callable (`app.asgi_app`, as Quart's docs
suggest for middleware): the nursery opens before the request reaches Quart and closes, its
tasks cancelled, once the ASGI call ends, which is after the response's last byte, after the
client disconnected, or at shutdown. `request_nursery()` gives the current request's nursery.
"""

from __future__ import annotations

import contextvars

import trio
from quart_trio import QuartTrio

_current: contextvars.ContextVar[trio.Nursery] = contextvars.ContextVar("request_nursery")


def with_request_nurseries(app: QuartTrio) -> QuartTrio:
    asgi_app = app.asgi_app

    async def serve(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await asgi_app(scope, receive, send)
        async with trio.open_nursery() as nursery:
            _current.set(nursery)  # this task's context: Quart's request tasks start from it
            await asgi_app(scope, receive, send)
            nursery.cancel_scope.cancel()

    app.asgi_app = serve  # type: ignore[method-assign]
    return app


def request_nursery() -> trio.Nursery:
    """The nursery of the HTTP request being served (`LookupError` outside one)."""
    return _current.get()
