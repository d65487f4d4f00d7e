"""A client of etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`) over httpx on Trio.

Only what a single-key store needs: read a key, write it if its revision is still the one the
writer knows (a transaction comparing `mod_revision`), and follow its changes. Keys and values
travel base64-encoded, revisions as decimal strings (the gateway's JSON mapping of int64).

Several endpoints: a request goes to the current one, and on a transport error (refused,
reset, timed out) to the next, once round all of them; `EtcdUnreachable` when none answered.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import httpx

# A request that takes longer is taken for an unreachable endpoint (etcd answers in milliseconds).
REQUEST_TIMEOUT = 3.0


class EtcdUnreachable(Exception):
    """No endpoint answered; the message names them and the last error."""


class EtcdProtocolError(Exception):
    """An endpoint answered, but not as etcd's gateway does (an error status, or a body that is not its JSON)."""


@attrs.frozen
class KeyValue:
    value: bytes
    mod_revision: int


@attrs.frozen
class RangeResult:
    kv: KeyValue | None  # None: the key does not exist
    revision: int  # the store's revision when it answered: watch from the one after it


@attrs.frozen
class PutIfResult:
    succeeded: bool
    revision: int  # succeeded: the new mod_revision of the key; otherwise the store's revision
    current: KeyValue | None  # not succeeded: what the key holds now (None: deleted)


@attrs.frozen
class WatchEvent:
    kv: KeyValue | None  # None: the key was deleted
    revision: int  # the revision of the change


class EtcdGateway:
    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = tuple(endpoints)  # base URLs, e.g. http://10.0.0.1:2379
        self._current = 0
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to first."""
        return self.endpoints[self._current]

    def next_endpoint(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def range(self, key: str) -> RangeResult:
        answer = await self._call("/v3/kv/range", {"key": _encode(key)})
        kvs = answer.get("kvs") or []
        return RangeResult(kv=_key_value(kvs[0]) if kvs else None, revision=_revision(answer))

    async def put_if_revision(self, key: str, value: bytes, mod_revision: int) -> PutIfResult:
        """Write `value` if the key's mod_revision is `mod_revision` (0: the key does not exist)."""
        encoded = _encode(key)
        answer = await self._call(
            "/v3/kv/txn",
            {
                # Zero-valued fields are spelled out: the gateway takes them as given.
                "compare": [{"key": encoded, "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
                "success": [{"request_put": {"key": encoded, "value": base64.b64encode(value).decode()}}],
                "failure": [{"request_range": {"key": encoded}}],
            },
        )
        if answer.get("succeeded"):
            return PutIfResult(succeeded=True, revision=_revision(answer), current=None)
        responses = answer.get("responses") or [{}]
        kvs = responses[0].get("response_range", {}).get("kvs") or []
        return PutIfResult(succeeded=False, revision=_revision(answer), current=_key_value(kvs[0]) if kvs else None)

    async def is_answering(self) -> bool:
        """Whether the current endpoint answers a read now (no failover: a check of this endpoint)."""
        try:
            response = await self._client.post(f"{self.endpoint}/v3/kv/range", json={"key": _encode("/"), "count_only": True})
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def watch(self, key: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """The key's changes from `start_revision` on, from the current endpoint, until the stream breaks:
        `EtcdUnreachable` when the endpoint goes away, `EtcdProtocolError` when etcd cancels the watch
        (e.g. `start_revision` was compacted). Never ends otherwise."""
        request = {"create_request": {"key": _encode(key), "start_revision": str(start_revision)}}
        endpoint = self.endpoint
        # No read timeout: a watch is silent until the key changes (`is_answering` checks the endpoint meanwhile).
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=None)
        try:
            async with self._client.stream("POST", f"{endpoint}/v3/watch", json=request, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise EtcdProtocolError(f"etcd at {endpoint} refused the watch: HTTP {response.status_code} {response.text[:200]}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = _json(line, endpoint)
                    if "error" in message:
                        raise EtcdProtocolError(f"etcd at {endpoint} ended the watch: {message['error']}")
                    result = message.get("result", {})
                    if result.get("canceled") or int(result.get("compact_revision", 0)):
                        raise EtcdProtocolError(
                            f"etcd at {endpoint} cancelled the watch: {result.get('cancel_reason') or 'revision compacted'}"
                        )
                    for event in result.get("events") or []:
                        kv = _key_value(event["kv"])
                        deleted = event.get("type") == "DELETE"
                        yield WatchEvent(kv=None if deleted else kv, revision=kv.mod_revision)
        except httpx.TransportError as error:
            raise EtcdUnreachable(f"etcd at {endpoint}: {_describe(error)}") from None
        raise EtcdUnreachable(f"etcd at {endpoint} closed the watch")

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the current endpoint, then to the others in turn while they cannot be reached."""
        errors: list[str] = []
        for _ in self.endpoints:
            endpoint = self.endpoint
            try:
                response = await self._client.post(f"{endpoint}{path}", json=body)
            except httpx.TransportError as error:
                errors.append(f"{endpoint}: {_describe(error)}")
                self.next_endpoint()
                continue
            if response.status_code != 200:
                raise EtcdProtocolError(f"etcd at {endpoint} answered {path} with HTTP {response.status_code}: {response.text[:200]}")
            return _json(response.text, endpoint)
        raise EtcdUnreachable("no etcd endpoint answered (" + "; ".join(errors) + ")")


def _encode(key: str) -> str:
    return base64.b64encode(key.encode()).decode()


def _key_value(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(value=base64.b64decode(kv.get("value", "")), mod_revision=int(kv.get("mod_revision", 0)))


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _json(text: str, endpoint: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise EtcdProtocolError(f"{endpoint} does not answer as etcd's v3 JSON gateway: {text[:200]!r}") from None
    if not isinstance(document, dict):
        raise EtcdProtocolError(f"{endpoint} does not answer as etcd's v3 JSON gateway: {text[:200]!r}")
    return document


def _describe(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__
