"""Which requests the inference port's front answers itself: POSTs to the two NDJSON generation
routes (`/api/v1/continue_from_conversation_history`, `/api/v1/continue_from_raw_prompt`) that
the routes would stream. Hypercorn and Quart take about a millisecond to bring such a request to
its route and another trip per chunk written; here the request is read, checked and answered
with h11 on the connection itself, from the pieces the Quart route uses (`InferenceService`).

The front declines, and Hypercorn and Quart answer as before, whatever would not simply be
streamed: a body that is not valid parameters, a check that fails (`accepts_generation`), a
request that needs a key without an accepted `Authorization: Bearer` one, a body without a
`Content-Length` or over the size limit, `Expect: 100-continue`, HTTP/1.0, and any request with
an `Origin` (CORS stays in one place, `service_app.py`). The response is the route's: same
status, headers and chunks; a client that closes or half-closes its side while it waits
cancels the request, as Hypercorn's `http.disconnect` does. Tokens usually reach the client's
socket straight from the agent socket's reader (`StreamWriter.send_now`, see `forwarding.py`).
"""

from __future__ import annotations

import email.utils
import functools

import h11
import trio

from paddler_trio.protocol import (
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    WireFormatError,
    from_json,
)
from paddler_trio.proxy.connection_front import (
    MAX_HEAD_BYTES,
    RECEIVE_SIZE,
    Answered,
    ConnectionHandler,
    Declined,
    Takeover,
    authorization_of,
)
from paddler_trio.proxy.inference_routes import InferenceService
from paddler_trio.security.api_keys import ApiKeys
from paddler_trio.transport.stream_writer import StreamWriter

GenerationParams = ContinueFromConversationHistoryParams | ContinueFromRawPromptParams

GENERATION_ROUTES: dict[bytes, type[GenerationParams]] = {
    b"/api/v1/continue_from_conversation_history": ContinueFromConversationHistoryParams,
    b"/api/v1/continue_from_raw_prompt": ContinueFromRawPromptParams,
}
# The headers Quart and Hypercorn give these responses (h11 adds `Transfer-Encoding: chunked`),
# so that a client sees the same answer whichever of the two served it.
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-cache"),
    (b"vary", b"Origin"),
]
SERVER_HEADER = (b"server", b"hypercorn-h11")


def ndjson_generation_takeover(service: InferenceService, *, keys: ApiKeys, max_body_bytes: int) -> Takeover:
    def takeover(request: h11.Request) -> ConnectionHandler | None:
        if request.method != b"POST" or request.http_version != b"1.1":
            return None
        params_type = GENERATION_ROUTES.get(request.target.partition(b"?")[0])
        if params_type is None:
            return None
        headers = {name: value for name, value in request.headers}  # h11 lowercases the names
        if b"origin" in headers or b"expect" in headers or b"transfer-encoding" in headers:
            return None
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > max_body_bytes:
            return None
        if not keys.admits(authorization_of(headers)):
            return None
        return functools.partial(_serve, service, params_type)

    return takeover


async def _serve(
    service: InferenceService, params_type: type[GenerationParams], stream: trio.abc.Stream, received: bytes
) -> Answered | Declined | None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    connection.receive_data(received)
    read = bytearray(received)
    body = bytearray()
    try:
        while not isinstance(event := connection.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                body += event.data
            elif event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return None  # the client left before its body was complete
                read += data
                connection.receive_data(data)
    except h11.RemoteProtocolError:
        return Declined(bytes(read))
    try:
        params = from_json(bytes(body), params_type)
    except WireFormatError:
        return Declined(bytes(read))
    if not service.accepts_generation(params):
        return Declined(bytes(read))
    request_id, work = service.generation(params)
    headers = [*RESPONSE_HEADERS, (b"date", email.utils.formatdate(usegmt=True).encode()), SERVER_HEADER]
    unread = bytearray(connection.trailing_data[0])
    client_left = False

    async with trio.open_nursery() as nursery:

        async def watch_client() -> None:
            """Keep what the client sends next (a pipelined request); notice when it leaves."""
            nonlocal client_left
            while len(unread) <= MAX_HEAD_BYTES:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    client_left = True
                    nursery.cancel_scope.cancel()
                    return
                unread.extend(data)
            await trio.sleep_forever()

        nursery.start_soon(watch_client)
        writer = StreamWriter(stream, nursery)

        def write_now(chunk: bytes) -> bool:
            return writer.can_send_now() and writer.send_now(_chunked(chunk))

        await writer.send_all(connection.send(h11.Response(status_code=200, headers=headers)))
        async with service.ndjson_chunks(request_id, work, write_now=write_now) as chunks:
            async for chunk in chunks:
                await writer.send_all(_chunked(chunk))
        await writer.send_all(connection.send(h11.EndOfMessage()))
        nursery.cancel_scope.cancel()
    if client_left or connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
        return None
    return Answered(bytes(unread))


def _chunked(data: bytes) -> bytes:
    """`data` as one chunk of the chunked body, as h11 frames it: the response's headers are
    h11's (which chose chunked encoding, having no length), and so is its end (`EndOfMessage`);
    only the chunks between are framed here, at a tenth of the cost of `connection.send`.
    Nothing for no data (an empty chunk would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
