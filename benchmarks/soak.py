#!/usr/bin/env python3
"""Soak: many concurrent streaming clients against one balancer for a set time, and an exact
account of every request at the end.

One `paddler balancer` process, `--agents` scripted paced agents in one process
(tests/proxy/scripted_paced_agent.py: `--tokens` ContentTokens per request, the first after
`--first-token-delay`, then one every `--token-interval`), and `--clients` clients spread over
`--client-processes` processes. Each client loops until `--duration` is over, one request at a
time, half of the clients over HTTP NDJSON (`/api/v1/continue_from_raw_prompt`, raw sockets,
one connection per request) and half over the inference WebSocket (one socket per client,
reopened after a disconnect). Each request is, at random:

- `complete`: read to `Done`;
- `cancel`: stop after 1..tokens/2 tokens (NDJSON: close the connection; WebSocket:
  `StopRespondingTo`, then the next request on the same socket);
- `disconnect`: drop before the first token (close right after sending), or send and never
  read, holding the connection for up to `NEVER_READ_HOLD` seconds, then close.

Every request ends in exactly one bucket: completed, failed (by reason: the error envelope's
code and description, an HTTP status, a transport error), cancelled by the client, or
unaccounted (a stream that ended without a terminal message, or that outlived
`REQUEST_LIMIT`). Time to first token is measured by the client; queue wait is time to first
token minus the agents' first-token delay (buffer wait plus relay; on a shared machine also
any CPU starvation of the balancer). The load runs in `--rounds` rounds of `--duration`, the
balancer going idle between them; its RSS and open fds are read from /proc at start (idle,
agents connected), every second (peaks) and after each round, once idle and once the
balancer has given freed memory back (paddler_trio/nursery/idle_memory_release.py). The
leak check is idle RSS after the last round against idle RSS after the first: the first
round takes the balancer from its cold start to the high-water mark of `--clients`
connections, and CPython's allocator keeps most of those pages mapped for reuse even though
the objects are gone (tracemalloc shows the live Python heap back at its cold-start size),
so RSS against the cold start is reported too but says nothing about leaks. At the end,
`/api/v1/agents` must show every `slots_processing` at 0 and every `slots_total` exact, and
the buffer must be empty.

One JSON object goes to stdout and, unless `--no-save`, to
`benchmarks/results/soak-<UTC timestamp>.json`; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio
import wsproto
import wsproto.connection
import wsproto.events

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the cluster harness and the scripted agents live in tests/

from host_figures import open_fds, process_cpu_seconds, process_memory_mib
from result_files import save_result

from paddler_trio.nursery.idle_memory_release import (
    CHECK_INTERVAL as IDLE_CHECK_INTERVAL,
)
from tests.integration.cluster import Cluster, wait_until

RAW_PROMPT_PATH = "/api/v1/continue_from_raw_prompt"
INFERENCE_SOCKET_PATH = "/api/v1/inference_socket"
REQUEST_LIMIT = 120.0  # a request still open after this is a hang: counted as unaccounted
NEVER_READ_HOLD = 2.0
RAMP_UP = 5.0  # clients start over this many seconds: a connect storm, not a single instant
CONNECT_LIMIT = 10.0
# The management queries of this script use short-lived connections: let their fds close before counting.
FD_SETTLE = 1.0
MEMORY_RELEASE_WAIT = 2 * IDLE_CHECK_INTERVAL + FD_SETTLE
ACTIONS = ("complete", "cancel", "disconnect")


def progress(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- clients (run in worker processes) ---------------------------------------------------


@attrs.define
class ClientTally:
    sent: int = 0
    completed: int = 0
    cancelled_by_client: int = 0
    failed: Counter[str] = attrs.field(factory=Counter)
    unaccounted: Counter[str] = attrs.field(factory=Counter)
    by_action: Counter[str] = attrs.field(factory=Counter)
    by_transport: Counter[str] = attrs.field(factory=Counter)
    time_to_first_token: list[float] = attrs.field(factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "cancelled_by_client": self.cancelled_by_client,
            "failed": dict(self.failed),
            "unaccounted": dict(self.unaccounted),
            "by_action": dict(self.by_action),
            "by_transport": dict(self.by_transport),
            "time_to_first_token": [round(value, 5) for value in self.time_to_first_token],
        }


class Outcome(Exception):
    """How one request ended: `bucket` is completed / failed / cancelled / unaccounted."""

    def __init__(self, bucket: str, reason: str = "") -> None:
        super().__init__(bucket, reason)
        self.bucket = bucket
        self.reason = reason


@attrs.define
class RequestPlan:
    action: str
    cancel_after: int
    never_read_hold: float  # 0: drop right after sending


@attrs.define
class WorkerSettings:
    host: str
    port: int
    clients: int
    first_client_index: int
    duration: float
    tokens: int
    seed: int


def plan_request(rng: random.Random, tokens: int) -> RequestPlan:
    action = rng.choices(ACTIONS, weights=(60, 20, 20))[0]
    never_read_hold = rng.choice((0.0, rng.uniform(0.05, NEVER_READ_HOLD)))
    return RequestPlan(action, rng.randint(1, max(1, tokens // 2)), never_read_hold)


def request_body(index: int, tokens: int) -> dict[str, Any]:
    return {"raw_prompt": f"soak request {index}", "max_tokens": tokens}


class ChunkedNdjsonReader:
    """The body of a chunked HTTP/1.1 response from a Trio stream, one NDJSON line at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._raw = bytearray()
        self._body = bytearray()
        self._ended = False

    async def _fill(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise Outcome("unaccounted", "connection_closed_without_terminal")
        self._raw += data

    async def _raw_line(self) -> bytes:
        while (end := self._raw.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self._raw[:end])
        del self._raw[: end + 2]
        return line

    async def status(self) -> int:
        while (end := self._raw.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self._raw[:end]).decode("latin-1").split("\r\n")
        del self._raw[: end + 4]
        if "transfer-encoding: chunked" not in (line.lower() for line in head[1:]):
            raise Outcome("unaccounted", "response_not_chunked")
        return int(head[0].split()[1])

    async def line(self) -> dict[str, Any]:
        while (end := self._body.find(b"\n")) < 0:
            if self._ended:
                raise Outcome("unaccounted", "stream_ended_without_terminal")
            size = int((await self._raw_line()).split(b";")[0], 16)
            while len(self._raw) < size + 2:
                await self._fill()
            self._body += self._raw[:size]
            del self._raw[: size + 2]
            if size == 0:
                self._ended = True
        line = bytes(self._body[:end])
        del self._body[: end + 1]
        return json.loads(line)


def classify(message: dict[str, Any]) -> str | None:
    """'token', or raises the Outcome a terminal message means; None for anything else."""
    if "Error" in message:
        error = message["Error"]["error"]
        raise Outcome("failed", f"error_{error['code']}: {error['description'][:48]}")
    response = message.get("Response", {}).get("response", {})
    token = response.get("GeneratedToken") if isinstance(response, dict) else None
    if isinstance(token, dict) and "ContentToken" in token:
        return "token"
    if isinstance(token, dict) and "Done" in token:
        raise Outcome("completed")
    if token is not None:
        raise Outcome("failed", f"generated_token_{next(iter(token)) if isinstance(token, dict) else token}")
    return None


async def ndjson_request(settings: WorkerSettings, index: int, plan: RequestPlan, started: float, tally: ClientTally) -> None:
    body = json.dumps(request_body(index, settings.tokens)).encode()
    head = (
        f"POST {RAW_PROMPT_PATH} HTTP/1.1\r\nHost: {settings.host}:{settings.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with trio.fail_after(CONNECT_LIMIT):
            stream = await trio.open_tcp_stream(settings.host, settings.port)
    except (OSError, trio.TooSlowError) as error:
        raise Outcome("failed", f"connect_{type(error).__name__}") from None
    async with stream:
        try:
            await stream.send_all(head + body)
            if plan.action == "disconnect":
                await trio.sleep(plan.never_read_hold)
                raise Outcome("cancelled")
            reader = ChunkedNdjsonReader(stream)
            status = await reader.status()
            if status != 200:
                raise Outcome("failed", f"http_{status}")
            tokens = 0
            while True:
                if classify(await reader.line()) == "token":
                    if tokens == 0:
                        tally.time_to_first_token.append(time.monotonic() - started)
                    tokens += 1
                    if plan.action == "cancel" and tokens >= plan.cancel_after:
                        raise Outcome("cancelled")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise Outcome("failed", f"transport_{type(error).__name__}") from None


class InferenceSocket:
    """A minimal WebSocket client over one Trio TCP stream (wsproto, no background task), so
    every frame and every close is this client's own doing and nothing happens behind its back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._protocol = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._messages: list[str] = []
        self._partial: list[str] = []
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int) -> InferenceSocket:
        with trio.fail_after(CONNECT_LIMIT):
            stream = await trio.open_tcp_stream(host, port)
            socket = cls(stream)
            await stream.send_all(socket._protocol.send(wsproto.events.Request(host=f"{host}:{port}", target=INFERENCE_SOCKET_PATH)))
            while True:
                event = await socket._next_event()
                if isinstance(event, wsproto.events.AcceptConnection):
                    return socket
                if isinstance(event, wsproto.events.RejectConnection):
                    raise OSError(f"inference socket refused with HTTP {event.status_code}")

    async def send(self, text: str) -> None:
        await self._stream.send_all(self._protocol.send(wsproto.events.Message(data=text)))

    async def receive(self) -> str:
        while not self._messages:
            event = await self._next_event()
            if isinstance(event, wsproto.events.TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    self._messages.append("".join(self._partial))
                    self._partial.clear()
        return self._messages.pop(0)

    async def _next_event(self) -> wsproto.events.Event:
        while True:
            for event in self._protocol.events():
                if isinstance(event, wsproto.events.Ping):
                    await self._stream.send_all(self._protocol.send(event.response()))
                elif isinstance(event, wsproto.events.CloseConnection):
                    self.closed = True
                    raise Outcome("failed", f"websocket_closed_{event.code}")
                else:
                    return event
            data = await self._stream.receive_some(65536)
            if not data:
                self.closed = True
                raise Outcome("failed", "websocket_connection_lost")
            self._protocol.receive_data(data)

    async def aclose(self) -> None:
        """Close at once: a clean close frame when possible, then the TCP connection."""
        with trio.move_on_after(1):
            if not self.closed and self._protocol.state is wsproto.connection.ConnectionState.OPEN:
                try:
                    await self._stream.send_all(self._protocol.send(wsproto.events.CloseConnection(code=1000)))
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        self.closed = True
        await self._stream.aclose()


async def websocket_request(
    socket: InferenceSocket, request_id: str, index: int, plan: RequestPlan, settings: WorkerSettings,
    started: float, tally: ClientTally,
) -> None:
    """One request on an open inference socket; a `disconnect` plan leaves the socket to be closed."""
    try:
        request = {"Request": {"id": request_id, "request": {"ContinueFromRawPrompt": request_body(index, settings.tokens)}}}
        await socket.send(json.dumps(request))
        if plan.action == "disconnect":
            await trio.sleep(plan.never_read_hold)
            raise Outcome("cancelled")
        tokens = 0
        while True:
            message = json.loads(await socket.receive())
            envelope = message.get("Response") or message.get("Error")
            if envelope is not None and envelope["request_id"] != request_id:
                continue  # a late frame of a request this client cancelled
            if classify(message) == "token":
                if tokens == 0:
                    tally.time_to_first_token.append(time.monotonic() - started)
                tokens += 1
                if plan.action == "cancel" and tokens >= plan.cancel_after:
                    await socket.send(json.dumps({"Notification": {"StopRespondingTo": request_id}}))
                    raise Outcome("cancelled")
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise Outcome("failed", f"transport_{type(error).__name__}") from None


def record(tally: ClientTally, outcome: Outcome) -> None:
    if outcome.bucket == "completed":
        tally.completed += 1
    elif outcome.bucket == "cancelled":
        tally.cancelled_by_client += 1
    elif outcome.bucket == "failed":
        tally.failed[outcome.reason] += 1
    else:
        tally.unaccounted[outcome.reason] += 1


class _Planner:
    def __init__(self, settings: WorkerSettings, index: int, transport: str, tally: ClientTally) -> None:
        self.rng = random.Random(settings.seed * 100_003 + index)
        self._settings = settings
        self._transport = transport
        self._tally = tally

    def next(self) -> RequestPlan:
        plan = plan_request(self.rng, self._settings.tokens)
        self._tally.sent += 1
        self._tally.by_action[plan.action] += 1
        self._tally.by_transport[self._transport] += 1
        return plan


async def run_ndjson_client(settings: WorkerSettings, index: int, deadline: float, tally: ClientTally) -> None:
    planner = _Planner(settings, index, "ndjson", tally)
    await trio.sleep(planner.rng.uniform(0, min(RAMP_UP, settings.duration / 4)))
    while time.monotonic() < deadline:
        plan = planner.next()
        outcome = Outcome("unaccounted", "request_limit_exceeded")
        with trio.move_on_after(REQUEST_LIMIT):
            try:
                await ndjson_request(settings, index, plan, time.monotonic(), tally)
                outcome = Outcome("unaccounted", "returned_without_outcome")
            except Outcome as ended:
                outcome = ended
        record(tally, outcome)
        if outcome.bucket == "failed":
            await trio.sleep(0.1)  # no hot loop against a failing balancer


async def run_websocket_client(settings: WorkerSettings, index: int, deadline: float, tally: ClientTally) -> None:
    planner = _Planner(settings, index, "websocket", tally)
    ids = itertools.count()
    await trio.sleep(planner.rng.uniform(0, min(RAMP_UP, settings.duration / 4)))
    socket: InferenceSocket | None = None
    try:
        while time.monotonic() < deadline:
            plan = planner.next()
            outcome = Outcome("unaccounted", "request_limit_exceeded")
            with trio.move_on_after(REQUEST_LIMIT):
                try:
                    if socket is None:
                        try:
                            socket = await InferenceSocket.connect(settings.host, settings.port)
                        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                            raise Outcome("failed", f"connect_{type(error).__name__}") from None
                    await websocket_request(socket, f"c{index}-{next(ids)}", index, plan, settings, time.monotonic(), tally)
                    outcome = Outcome("unaccounted", "returned_without_outcome")
                except Outcome as ended:
                    outcome = ended
            record(tally, outcome)
            if socket is not None and (socket.closed or outcome.bucket != "completed" and plan.action != "cancel"):
                await socket.aclose()  # a disconnect, a failure or a hang: the next request opens a new socket
                socket = None
            if outcome.bucket == "failed":
                await trio.sleep(0.1)
    finally:
        if socket is not None:
            with trio.CancelScope(shield=True):
                await socket.aclose()


async def run_worker(settings: WorkerSettings) -> ClientTally:
    tally = ClientTally()
    deadline = time.monotonic() + settings.duration
    async with trio.open_nursery() as clients:
        for index in range(settings.first_client_index, settings.first_client_index + settings.clients):
            client = run_websocket_client if index % 2 else run_ndjson_client
            clients.start_soon(client, settings, index, deadline, tally)
    return tally


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="soak.py worker")
    parser.add_argument("--inference-addr", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--first-client-index", type=int, default=0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    host, port = args.inference_addr.rsplit(":", 1)
    settings = WorkerSettings(host, int(port), args.clients, args.first_client_index, args.duration, args.tokens, args.seed)
    tally = trio.run(run_worker, settings)
    print(json.dumps(tally.as_json()), flush=True)


# --- the run (orchestrator) ----------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 1)


def merge(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"sent": 0, "completed": 0, "cancelled_by_client": 0}
    counters = {name: Counter() for name in ("failed", "unaccounted", "by_action", "by_transport")}
    time_to_first_token: list[float] = []
    for tally in tallies:
        for name in total:
            total[name] += tally[name]
        for name, counter in counters.items():
            counter.update(tally[name])
        time_to_first_token += tally["time_to_first_token"]
    return {**total, **{name: dict(counter) for name, counter in counters.items()}, "time_to_first_token": time_to_first_token}


def soak(options: argparse.Namespace) -> dict[str, Any]:
    with (
        contextlib.nullcontext(options.log_directory)
        if options.log_directory
        else tempfile.TemporaryDirectory(prefix="paddler-soak-")
    ) as directory:
        cluster = Cluster(Path(directory))
        agents_process: subprocess.Popen[bytes] | None = None
        try:
            cluster.start_balancer(
                "--max-buffered-requests", str(options.clients + 100),
                "--buffered-request-timeout", str(options.buffered_request_timeout_ms),
                "--inference-item-timeout", "10000",
            )
            assert cluster.balancer is not None
            pid = cluster.balancer.process.pid
            agents_process = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.proxy.scripted_paced_agent",
                    "--management-addr", cluster.management_addr,
                    "--agents", str(options.agents), "--slots", str(options.slots),
                    "--tokens", str(options.tokens),
                    "--first-token-delay", str(options.first_token_delay),
                    "--token-interval", str(options.token_interval),
                ],
                cwd=REPO_ROOT,
                stdout=(Path(directory) / "agents.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            wait_until(lambda: len([a for a in cluster.agents_snapshot() if a["slots_total"] > 0]) == options.agents, 30, "the scripted agents")
            time.sleep(FD_SETTLE)
            start = {"rss_mib": process_memory_mib(pid)["rss_mib"], "open_fds": open_fds(pid)}
            progress(f"{options.agents} agents x {options.slots} slots; balancer idle: {start}; load {os.getloadavg()[0]:.1f}")

            rounds = []
            all_outputs: list[dict[str, Any]] = []
            load_seconds = 0.0
            for round_number in range(options.rounds):
                outputs, round_figures = _load_round(options, cluster, pid, agents_process.pid, round_number)
                all_outputs += outputs
                load_seconds += round_figures["load_seconds"]
                idle = _wait_quiet(cluster, pid, start["open_fds"], options.quiesce_limit)
                round_figures["seconds_to_idle_after_load"] = round(time.monotonic() - round_figures.pop("ended_at"), 1)
                # The balancer gives freed memory back two quiet looks after the load ends.
                time.sleep(MEMORY_RELEASE_WAIT)
                round_figures["rss_mib_end"] = process_memory_mib(pid)["rss_mib"]
                round_figures["open_fds_end"] = open_fds(pid)
                round_figures["idle_within_limit"] = idle
                rounds.append(round_figures)
                progress(f"round {round_number + 1}: {round_figures}")
            tallies = merge(all_outputs)
            end = {"rss_mib": process_memory_mib(pid)["rss_mib"], "open_fds": open_fds(pid)}
            snapshot = cluster.agents_snapshot()
            buffered_end = cluster.buffered_requests()
        finally:
            if agents_process is not None:
                agents_process.terminate()
                agents_process.wait(10)
            cluster.shutdown()

    accounted = tallies["completed"] + sum(tallies["failed"].values()) + tallies["cancelled_by_client"]
    ttft = tallies.pop("time_to_first_token")
    queue_wait = [max(0.0, value - options.first_token_delay) for value in ttft]
    slots_exact = len(snapshot) == options.agents and all(
        agent["slots_processing"] == 0 and agent["slots_total"] == options.slots for agent in snapshot
    )
    figures = {
        "benchmark": "soak",
        "timestamp_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {
            "clients": options.clients,
            "client_processes": options.client_processes,
            "duration_s": options.duration,
            "agents": options.agents,
            "slots_per_agent": options.slots,
            "tokens_per_request": options.tokens,
            "first_token_delay_ms": options.first_token_delay * 1000,
            "token_interval_ms": options.token_interval * 1000,
            "buffered_request_timeout_ms": options.buffered_request_timeout_ms,
            "rounds": options.rounds,
            "cpu_count": os.cpu_count(),
        },
        "requests": {
            **{name: tallies[name] for name in ("sent", "completed", "cancelled_by_client")},
            "failed_by_reason": tallies["failed"],
            "unaccounted_by_reason": tallies["unaccounted"],
            "unaccounted": tallies["sent"] - accounted,
            "by_action": tallies["by_action"],
            "by_transport": tallies["by_transport"],
            "completed_per_second": round(tallies["completed"] / load_seconds, 1),
        },
        "latency_ms": {
            "time_to_first_token_p50": percentile(ttft, 0.5),
            "time_to_first_token_p99": percentile(ttft, 0.99),
            "queue_wait_p50": percentile(queue_wait, 0.5),
            "queue_wait_p99": percentile(queue_wait, 0.99),
            "queue_wait_mean": round(statistics.fmean(queue_wait) * 1000, 1) if queue_wait else None,
        },
        "balancer": {
            "rss_mib_cold_start": start["rss_mib"],
            "rss_mib_after_first_round": rounds[0]["rss_mib_end"],
            "rss_mib_end": end["rss_mib"],
            # The leak check: idle RSS after the last round against idle RSS after the first.
            "rss_growth_percent": round((end["rss_mib"] - rounds[0]["rss_mib_end"]) / rounds[0]["rss_mib_end"] * 100, 1),
            # What the allocators keep of the first round's high-water mark (not a leak: see the docstring).
            "rss_growth_from_cold_start_percent": round((end["rss_mib"] - start["rss_mib"]) / start["rss_mib"] * 100, 1),
            "open_fds_start": start["open_fds"],
            "open_fds_end": end["open_fds"],
            "peak_buffered_requests": max(entry["peak_buffered_requests"] for entry in rounds),
            "rounds": rounds,
        },
        "end_state": {
            "idle_within_limit": all(entry["idle_within_limit"] for entry in rounds),
            "agents_listed": len(snapshot),
            "slots_processing": [agent["slots_processing"] for agent in snapshot],
            "slots_total": [agent["slots_total"] for agent in snapshot],
            "buffered_requests": buffered_end,
        },
        "invariants_hold": tallies["sent"] == accounted
        and not tallies["unaccounted"]
        and slots_exact
        and buffered_end == 0
        and end["open_fds"] <= start["open_fds"],
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    return figures


def _load_round(
    options: argparse.Namespace, cluster: Cluster, pid: int, agents_pid: int, round_number: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One round: the client processes run for `--duration`; the balancer is sampled every second."""
    per_process = [options.clients // options.client_processes] * options.client_processes
    per_process[-1] += options.clients - sum(per_process)
    workers = []
    first = 0
    for number, count in enumerate(per_process):
        workers.append(
            subprocess.Popen(
                [
                    sys.executable, str(Path(__file__).resolve()), "worker",
                    "--inference-addr", f"127.0.0.1:{cluster.inference_port}",
                    "--clients", str(count), "--first-client-index", str(first),
                    "--duration", str(options.duration), "--tokens", str(options.tokens),
                    "--seed", str(options.seed + 1000 * round_number + number),
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
            )
        )
        first += count
    started = time.monotonic()
    cpu_at_start = {"balancer": process_cpu_seconds(pid), "agents": process_cpu_seconds(agents_pid)}
    peak_rss = process_memory_mib(pid)["rss_mib"]
    peak_buffered = 0
    peak_fds = 0
    while any(worker.poll() is None for worker in workers):
        time.sleep(1)
        rss = process_memory_mib(pid)["rss_mib"]
        peak_rss = max(peak_rss, rss)
        peak_fds = max(peak_fds, open_fds(pid))
        buffered = cluster.buffered_requests()
        peak_buffered = max(peak_buffered, buffered)
        elapsed = time.monotonic() - started
        if int(elapsed) % 10 == 0:
            progress(f"round {round_number + 1}, {elapsed:.0f} s: RSS {rss} MiB, buffered {buffered}, load {os.getloadavg()[0]:.1f}")
        if elapsed > options.duration + REQUEST_LIMIT + 60:
            raise RuntimeError("the client processes did not finish")
    outputs = [worker.communicate()[0] for worker in workers]
    if any(worker.returncode != 0 for worker in workers):
        raise RuntimeError(f"a client process failed: {[worker.returncode for worker in workers]}")
    ended_at = time.monotonic()
    load_seconds = ended_at - started
    return [json.loads(output) for output in outputs], {
        "load_seconds": round(load_seconds, 1),
        "ended_at": ended_at,
        "rss_mib_peak": peak_rss,
        "open_fds_peak": peak_fds,
        "peak_buffered_requests": peak_buffered,
        # 100 = one core busy for the whole round
        "cpu_percent": {
            "balancer": round((process_cpu_seconds(pid) - cpu_at_start["balancer"]) / load_seconds * 100, 1),
            "scripted_agents": round((process_cpu_seconds(agents_pid) - cpu_at_start["agents"]) / load_seconds * 100, 1),
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _wait_quiet(cluster: Cluster, pid: int, baseline_fds: int, limit: float) -> bool:
    """Wait (bounded) until no slot is held, nothing is buffered and the fds are back to baseline."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        # The fds first: the two management requests below hold a connection of their own for a moment.
        if (
            open_fds(pid) <= baseline_fds
            and not any(cluster.slots_processing().values())
            and cluster.buffered_requests() == 0
        ):
            return True
        time.sleep(0.2)
    return False


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which clients start requests")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--slots", type=int, default=16, help="slots per scripted agent")
    parser.add_argument("--tokens", type=int, default=10, help="ContentTokens per request")
    parser.add_argument("--first-token-delay", type=float, default=0.1, help="agent's seconds before the first token")
    parser.add_argument("--token-interval", type=float, default=0.2, help="agent's seconds between two tokens")
    parser.add_argument("--buffered-request-timeout-ms", type=int, default=60000)
    parser.add_argument("--rounds", type=int, default=3, help="load rounds of --duration each, the balancer idle between them (at least 2)")
    parser.add_argument("--quiesce-limit", type=float, default=30.0, help="longest wait for the balancer to go idle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-directory", help="keep the balancer's and agents' logs here (default: a temporary directory)")
    parser.add_argument("--no-save", action="store_true", help="print the JSON only")
    options = parser.parse_args()
    figures = soak(options)
    text = json.dumps(figures)
    print(text, flush=True)
    if not options.no_save:
        save_result(figures, "soak")


if __name__ == "__main__":
    main()
