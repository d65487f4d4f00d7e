"""`--state-database etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: the desired state in etcd, shared by
every balancer that names the same etcd and prefix.

The key is `/PREFIX/balancer_desired_state`; its value is Paddler's state document, as in a
`file://` database. Each balancer keeps the state it last knew in memory and serves it from
there (`read`, and the reconciliation that sends it to the agents).

- Start-up: the balancer reads the key before it serves anything. While no endpoint answers it
  waits, retrying with backoff and logging each try: starting with the default state instead
  would send every agent that connects a state nobody chose (no model: they unload theirs).
  A missing key means the default state (not written: the first PUT creates the key); a key
  that holds no valid state stops the start-up, as a corrupt file does.
- Following: a watch from the revision after that read. A change made on any balancer arrives
  through it and takes effect here as a PUT on this balancer does: `wait_stored` wakes the
  reconciliation, which sends the state to this balancer's agents.
- Outage: the balancer keeps serving the last state it knew, logs the loss once, shows
  `state_database_reachable 0` in /metrics, and answers PUTs with 503. It retries with backoff
  (starting from the next endpoint), then reads the key again and watches from there, so a change
  made during the outage is caught up. A watch stream that breaks is noticed at once; an
  endpoint that stops answering without closing it, by a read every `CHECK_INTERVAL`.
- Writes are compare-and-swap: a transaction puts the new document only if the key's
  mod_revision is still the one this balancer knows. When another balancer wrote in between,
  the write is tried again on top of that revision: a PUT replaces the whole state, so the PUT
  that reaches etcd last wins, every balancer ends on it, and no state is ever a mix of two.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

import trio

from paddler_trio.management.etcd_gateway import (
    EtcdGateway,
    EtcdProtocolError,
    EtcdUnreachable,
    WatchEvent,
)
from paddler_trio.management.state_database import (
    MemoryStateDatabase,
    StateDatabaseError,
    StateDatabaseUnavailable,
    parse_state_document,
    state_document,
)
from paddler_trio.protocol import BalancerDesiredState

_logger = logging.getLogger(__name__)

URL_FORM = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
KEY_NAME = "balancer_desired_state"
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
# How often a quiet watch's endpoint is checked with a read (a watch stream says nothing until the key changes).
CHECK_INTERVAL = 5.0
# Writes tried in a row when others keep changing the key in between; reached only under a storm of PUTs.
MAX_STORE_ATTEMPTS = 10
_ETCD_ERRORS = (EtcdUnreachable, EtcdProtocolError)


class EtcdStateDatabase(MemoryStateDatabase):
    def __init__(self, gateway: EtcdGateway, key: str) -> None:
        super().__init__()
        self._gateway = gateway
        self.key = key
        self._key_revision = 0  # the key's mod_revision as last known (0: absent), compared by writes
        self._seen_revision = 0  # the newest change taken, so that an older one arriving late is ignored
        self._lost_at: float | None = None
        self._reachable = False

    @classmethod
    def open(cls, url: str) -> EtcdStateDatabase:
        """Parse `url` (nothing is contacted yet); `StateDatabaseError` names the flag and what is wrong."""
        endpoints, prefix = parse_etcd_url(url)
        return cls(EtcdGateway(endpoints), f"/{prefix}/{KEY_NAME}")

    @property
    def reachable(self) -> bool:
        return self._reachable

    @property
    def _where(self) -> str:
        return f"etcd key {self.key} at {', '.join(self._gateway.endpoints)}"

    async def keep_current(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the state (waiting for etcd), report started, then follow the key until cancelled."""
        try:
            watch_from = await self._read_until_answered(starting=True)
            task_status.started()
            while True:
                self._lose(await self._follow(watch_from))
                watch_from = await self._read_until_answered(starting=False)
        finally:
            with trio.CancelScope(shield=True):
                await self._gateway.aclose()

    async def store(self, state: BalancerDesiredState) -> None:
        """Write `state` to etcd (compare-and-swap, retried on top of newer writes), then take it here.
        `StateDatabaseUnavailable` when etcd cannot be written: nothing changed."""
        value = state_document(state).encode()
        for _ in range(MAX_STORE_ATTEMPTS):
            known = self._key_revision
            try:
                result = await self._gateway.put_if_revision(self.key, value, known)
            except _ETCD_ERRORS as error:
                raise StateDatabaseUnavailable(f"cannot write {self._where}: {error}") from None
            if result.succeeded:
                await self._take(state, result.revision, key_revision=result.revision)
                return
            current_revision = result.current.mod_revision if result.current is not None else 0
            _logger.info(
                "%s changed meanwhile (revision %d, this balancer knew %d): writing again on top of it",
                self.key,
                current_revision,
                known,
            )
            # Only the revision is taken: the watch delivers that state, or skips it once ours, newer, is in.
            # (Should the watch bring a still newer revision meanwhile, the next compare fails once more.)
            self._key_revision = current_revision
        raise StateDatabaseUnavailable(f"{self._where} kept changing: gave up after {MAX_STORE_ATTEMPTS} writes")

    async def _read_until_answered(self, *, starting: bool) -> int:
        """Read the key, retrying with backoff until an endpoint answers; the revision to watch from."""
        delay = FIRST_RETRY_DELAY
        attempt = 0
        while True:
            try:
                result = await self._gateway.range(self.key)
                break
            except _ETCD_ERRORS as error:
                attempt += 1
                if starting:
                    _logger.warning(
                        "waiting for the state database before serving (try %d, next in %.1f s): %s", attempt, delay, error
                    )
                else:
                    _logger.debug("state database still unreachable (try %d, next in %.1f s): %s", attempt, delay, error)
                if isinstance(error, EtcdProtocolError):
                    self._gateway.next_endpoint()  # (an unreachable one was left already)
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        if starting:
            if result.kv is None:
                _logger.info("%s does not exist: serving the default desired state until a PUT writes it", self._where)
            else:
                state = parse_state_document(result.kv.value.decode(errors="replace"), self._where, _REMEDY)
                await self._take(state, result.kv.mod_revision, key_revision=result.kv.mod_revision)
                _logger.info("desired state read from %s (revision %d)", self._where, result.kv.mod_revision)
        else:
            await self._apply(WatchEvent(kv=result.kv, revision=result.kv.mod_revision if result.kv else result.revision))
        self._found()
        return result.revision + 1

    async def _follow(self, start_revision: int) -> str:
        """Take the key's changes until the endpoint is lost; what happened."""
        lost = ""
        endpoint = self._gateway.endpoint
        async with trio.open_nursery() as nursery:

            async def check_endpoint() -> None:
                nonlocal lost
                while await self._gateway.is_answering():
                    await trio.sleep(CHECK_INTERVAL)
                lost = f"etcd at {endpoint} stopped answering"
                nursery.cancel_scope.cancel()

            nursery.start_soon(check_endpoint)
            try:
                async with aclosing(self._gateway.watch(self.key, start_revision)) as events:
                    async for event in events:
                        await self._apply(event)
            except _ETCD_ERRORS as error:
                lost = str(error)
            nursery.cancel_scope.cancel()
        return lost

    async def _apply(self, event: WatchEvent) -> None:
        """A change read from etcd (by the watch, or by a read after an outage)."""
        if event.revision <= self._seen_revision:
            return  # this balancer holds that change, or a newer one, already
        if event.kv is None:
            if self._key_revision:
                _logger.warning("%s was deleted: keeping the last desired state; the next PUT writes it again", self._where)
            self._key_revision = 0
            self._seen_revision = event.revision
            return
        try:
            state = parse_state_document(event.kv.value.decode(errors="replace"), self._where, _REMEDY)
        except StateDatabaseError as error:
            _logger.error("%s (revision %d): keeping the last desired state", error, event.kv.mod_revision)
            self._key_revision = self._seen_revision = event.kv.mod_revision
            return
        # (A PUT on this balancer may arrive here first too, before its own write returns.)
        _logger.info("desired state taken from %s (revision %d)", self._where, event.kv.mod_revision)
        await self._take(state, event.revision, key_revision=event.kv.mod_revision)

    async def _take(self, state: BalancerDesiredState, revision: int, *, key_revision: int) -> None:
        if revision <= self._seen_revision:
            return
        self._seen_revision = revision
        self._key_revision = key_revision
        await super().store(state)  # held here; wakes the reconciliation

    def _found(self) -> None:
        if self._lost_at is not None:
            _logger.warning(
                "state database reachable again at %s after %.1f s; desired state at revision %d",
                self._gateway.endpoint,
                trio.current_time() - self._lost_at,
                self._key_revision,
            )
        self._lost_at = None
        self._reachable = True

    def _lose(self, reason: str) -> None:
        self._reachable = False
        self._lost_at = trio.current_time()
        _logger.warning(
            "state database unreachable (%s): serving the last desired state known (revision %d), "
            "refusing PUTs with 503, retrying",
            reason,
            self._key_revision,
        )
        self._gateway.next_endpoint()


_REMEDY = "PUT a valid state on /api/v1/balancer_desired_state of a balancer whose state database was read, or fix the key"


def parse_etcd_url(url: str) -> tuple[tuple[str, ...], str]:
    """The endpoints' base URLs and the key prefix of `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`."""

    def refuse(what: str) -> StateDatabaseError:
        return StateDatabaseError(f"--state-database {url!r}: {what}; expected {URL_FORM}, e.g. etcd://127.0.0.1:2379/paddler")

    if not url.startswith("etcd://"):
        raise refuse("not an etcd URL")
    hosts, _, prefix = url.removeprefix("etcd://").partition("/")
    prefix = prefix.strip("/")
    if not prefix:
        raise refuse("names no key prefix")
    if any(character.isspace() or character in "?#" for character in prefix) or "//" in prefix:
        raise refuse(f"key prefix {prefix!r} must be one or more /-separated names without spaces, '?' or '#'")
    endpoints: list[str] = []
    for address in hosts.split(","):
        host, separator, port = address.rpartition(":")
        if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
            raise refuse(f"{address!r}: write an IPv6 address in brackets, as [::1]:2379")
        if not separator or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise refuse(f"{address!r} is not HOST:PORT" if address else "names no HOST:PORT")
        endpoints.append(f"http://{host}:{int(port)}")
    return tuple(endpoints), prefix
