"""`--state-database etcd://`: the desired state in a real etcd, shared by several state databases
(one per balancer), through outages and concurrent writes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from paddler_trio.management.etcd_gateway import EtcdGateway
from paddler_trio.management.etcd_state_database import EtcdStateDatabase, parse_etcd_url
from paddler_trio.management.state_database import (
    StateDatabaseError,
    StateDatabaseUnavailable,
    open_state_database,
    parse_state_document,
    state_document,
)
from paddler_trio.protocol import BalancerDesiredState
from tests.etcd_server import EtcdServer
from tests.integration.cluster import free_port
from tests.waiting import wait_until

KEY = "/tests/balancer_desired_state"


def state_with(**parameters: object) -> BalancerDesiredState:
    default = BalancerDesiredState.default()
    return attrs.evolve(default, inference_parameters=attrs.evolve(default.inference_parameters, **parameters))


@asynccontextmanager
async def following(etcd: EtcdServer, nursery: trio.Nursery) -> AsyncIterator[EtcdStateDatabase]:
    """A state database on `etcd` that has read the key and follows it (as a balancer's does)."""
    database = EtcdStateDatabase.open(f"etcd://{etcd.address}/tests")
    await nursery.start(database.keep_current)
    yield database


def stored_in(etcd: EtcdServer) -> BalancerDesiredState | None:
    value = etcd.get(KEY)
    return None if value is None else parse_state_document(value.decode(), "the key", "")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://127.0.0.1:2379", "names no key prefix"),
        ("etcd://127.0.0.1:2379/", "names no key prefix"),
        ("etcd:///paddler", "names no HOST:PORT"),
        ("etcd://etcd/paddler", "'etcd' is not HOST:PORT"),
        ("etcd://etcd:port/paddler", "'etcd:port' is not HOST:PORT"),
        ("etcd://a:2379,,b:2379/paddler", "names no HOST:PORT"),
        ("etcd://::1:2379/paddler", "IPv6 address in brackets"),
        ("etcd://etcd:2379/pad dler", "without spaces"),
        ("etcd:/etcd:2379/paddler", "not an etcd URL"),
    ],
)
def test_a_malformed_url_names_the_flag_and_the_expected_form(url: str, expected: str) -> None:
    with pytest.raises(StateDatabaseError) as error:
        open_state_database(url)
    message = str(error.value)
    assert message.startswith(f"--state-database {url!r}: ")
    assert expected in message
    assert "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" in message


def test_several_endpoints_and_a_nested_prefix() -> None:
    endpoints, prefix = parse_etcd_url("etcd://10.0.0.1:2379,etcd-1.etcd:2379,[fd00::1]:2380/team/paddler/")
    assert endpoints == ("http://10.0.0.1:2379", "http://etcd-1.etcd:2379", "http://[fd00::1]:2380")
    assert prefix == "team/paddler"
    assert EtcdStateDatabase.open("etcd://10.0.0.1:2379/team/paddler").key == "/team/paddler/balancer_desired_state"


async def test_an_endpoint_that_cannot_be_reached_is_passed_over_for_the_next(etcd_server: EtcdServer) -> None:
    database = EtcdStateDatabase.open(f"etcd://127.0.0.1:{free_port()},{etcd_server.address}/tests")
    async with trio.open_nursery() as nursery:
        await nursery.start(database.keep_current)
        wanted = state_with(top_k=41)
        await database.store(wanted)
        assert stored_in(etcd_server) == wanted
        etcd_server.put(KEY, state_document(state_with(top_k=42)).encode())
        await wait_until(lambda: _reads(database, state_with(top_k=42)), 5)
        nursery.cancel_scope.cancel()


async def test_a_missing_key_serves_the_default_state_and_the_first_store_creates_it(etcd_server: EtcdServer) -> None:
    async with trio.open_nursery() as nursery:
        async with following(etcd_server, nursery) as database:
            assert await database.read() == BalancerDesiredState.default()
            assert database.reachable
            assert etcd_server.get(KEY) is None
            wanted = state_with(context_size=1024)
            await database.store(wanted)
            assert await database.read() == wanted
            assert stored_in(etcd_server) == wanted
        nursery.cancel_scope.cancel()


async def test_a_store_on_one_database_reaches_the_others_and_wakes_their_waiters(etcd_server: EtcdServer) -> None:
    async with trio.open_nursery() as nursery:
        async with following(etcd_server, nursery) as first, following(etcd_server, nursery) as second:
            seen = second.version
            wanted = state_with(temperature=0.3, top_k=7)
            await first.store(wanted)
            with trio.fail_after(5):
                seen = await second.wait_stored(seen)  # what the reconciliation waits on
            assert await second.read() == wanted
            etcd_server.put(KEY, state_document(state_with(top_k=9)).encode())  # another writer (etcdctl)
            await wait_until(lambda: _reads(first, state_with(top_k=9)), 5)
            await wait_until(lambda: _reads(second, state_with(top_k=9)), 5)
        nursery.cancel_scope.cancel()


async def _reads(database: EtcdStateDatabase, state: BalancerDesiredState) -> bool:
    return await database.read() == state


async def test_a_write_on_a_stale_revision_is_retried_on_top_of_the_newer_one(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Compare-and-swap: a database that does not know the latest write (here: one that never read the
    key) fails the compare, learns the revision, and writes again; etcd ends with its state, whole."""
    etcd_server.put(KEY, state_document(state_with(top_k=3)).encode())
    gateway = EtcdGateway([etcd_server.endpoint])
    stale = EtcdStateDatabase(gateway, KEY)
    try:
        wanted = state_with(top_k=5, temperature=0.1)
        with caplog.at_level(logging.INFO, logger="paddler_trio.management.etcd_state_database"):
            await stale.store(wanted)
        assert "changed meanwhile" in caplog.text and "writing again on top of it" in caplog.text
        assert stored_in(etcd_server) == wanted
        assert await stale.read() == wanted
    finally:
        await gateway.aclose()


async def test_concurrent_stores_end_on_one_of_the_states_sent_everywhere(etcd_server: EtcdServer) -> None:
    sent = [state_with(top_k=k, context_size=1024 + 256 * k, temperature=k / 10) for k in range(1, 9)]
    async with trio.open_nursery() as nursery:
        async with following(etcd_server, nursery) as first, following(etcd_server, nursery) as second:
            async with trio.open_nursery() as writers:
                for index, state in enumerate(sent):
                    writers.start_soon((first, second)[index % 2].store, state)
            final = stored_in(etcd_server)
            assert final in sent
            await wait_until(lambda: _reads(first, final), 5)
            await wait_until(lambda: _reads(second, final), 5)
        nursery.cancel_scope.cancel()


async def test_an_outage_keeps_the_last_state_refuses_stores_and_catches_up_after(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="paddler_trio.management.etcd_state_database")
    before = state_with(top_k=11)
    async with trio.open_nursery() as nursery:
        async with following(etcd_server, nursery) as first, following(etcd_server, nursery) as second:
            await first.store(before)
            await wait_until(lambda: _reads(second, before), 5)
            etcd_server.kill()
            await wait_until(lambda: not first.reachable and not second.reachable, 10)
            assert "state database unreachable" in caplog.text
            assert await first.read() == before and await second.read() == before
            with pytest.raises(StateDatabaseUnavailable, match="cannot write etcd key"):
                await first.store(state_with(top_k=12))
            await trio.to_thread.run_sync(etcd_server.start)  # same data directory and port
            after = state_with(top_k=13)
            etcd_server.put(KEY, state_document(after).encode())  # while they may still be reconnecting
            await wait_until(lambda: first.reachable and second.reachable, 15)
            await wait_until(lambda: _reads(first, after), 5)
            await wait_until(lambda: _reads(second, after), 5)
            assert "state database reachable again" in caplog.text
            latest = state_with(top_k=14)
            await second.store(latest)  # writes work again, on the revision learned after the outage
            await wait_until(lambda: _reads(first, latest), 5)
        nursery.cancel_scope.cancel()


async def test_start_up_waits_for_etcd_and_logs_each_try(etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="paddler_trio.management.etcd_state_database")
    wanted = state_with(top_k=21)
    etcd_server.put(KEY, state_document(wanted).encode())
    etcd_server.kill()
    database = EtcdStateDatabase.open(f"etcd://{etcd_server.address}/tests")
    started = trio.Event()

    async def start(nursery: trio.Nursery) -> None:
        await nursery.start(database.keep_current)
        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start, nursery)
        await wait_until(lambda: caplog.text.count("waiting for the state database before serving") >= 2, 10)
        assert not started.is_set()
        await trio.to_thread.run_sync(etcd_server.start)
        with trio.fail_after(15):
            await started.wait()
        assert await database.read() == wanted
        nursery.cancel_scope.cancel()


async def test_a_key_holding_no_valid_state_stops_the_start_up(etcd_server: EtcdServer) -> None:
    etcd_server.put(KEY, b'{"balancer_desired_state": {"model": 1}, "version": "1"}')
    database = EtcdStateDatabase.open(f"etcd://{etcd_server.address}/tests")
    with pytest.RaisesGroup(pytest.RaisesExc(StateDatabaseError, match="etcd key /tests/balancer_desired_state"), flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(database.keep_current)


async def test_a_bad_or_deleted_value_later_keeps_the_last_state_and_a_store_replaces_it(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="paddler_trio.management.etcd_state_database")
    good = state_with(top_k=31)
    async with trio.open_nursery() as nursery:
        async with following(etcd_server, nursery) as database:
            await database.store(good)
            etcd_server.put(KEY, json.dumps({"version": "1"}).encode())
            await wait_until(lambda: "missing field 'balancer_desired_state'" in caplog.text, 5)
            assert await database.read() == good
            replacement = state_with(top_k=32)
            await database.store(replacement)  # compares with the bad value's revision: no retry needed
            assert stored_in(etcd_server) == replacement
            etcd_server.delete(KEY)
            await wait_until(lambda: "was deleted" in caplog.text, 5)
            assert await database.read() == replacement
            await database.store(good)  # creates the key again
            assert stored_in(etcd_server) == good
        nursery.cancel_scope.cancel()

