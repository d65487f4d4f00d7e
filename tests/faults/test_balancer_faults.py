"""Faults on the client side of a real balancer process, with scripted paced agents (test
doubles that stream ContentTokens at a set pace, tests/proxy/scripted_paced_agent.py): a client
that stops reading, a burst of requests and disconnects (open fds back to baseline), and
SIGTERM while streams are open."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websocket_connect

from tests.integration.cluster import Cluster, wait_until

pytestmark = pytest.mark.slow

RAW = "/api/v1/continue_from_raw_prompt"
REPO_ROOT = Path(__file__).resolve().parents[2]
# A stalled client's balancer-side memory is bounded by its reply route and channels; without
# a bound it would hold the whole stream (30,000 tokens of 4 kB: about 120 MB).
STALLED_RSS_GROWTH_LIMIT_MIB = 64


def body(max_tokens: int) -> dict:
    return {"raw_prompt": "Hi", "max_tokens": max_tokens}


def balancer_pid(cluster: Cluster) -> int:
    assert cluster.balancer is not None
    return cluster.balancer.process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_on_port(pid: int, port: int) -> int:
    """How many TCP connections on its `port` the process `pid` holds open (its listening socket not counted)."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # an fd closed while we look
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target.removeprefix("socket:[").removesuffix("]"))
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state != "0A" and inode in sockets  # 0A: LISTEN
    return count


@contextmanager
def scripted_paced_agents(cluster: Cluster, *arguments: str) -> Iterator[None]:
    log = (cluster.directory / "scripted-paced-agents.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.proxy.scripted_paced_agent", "--management-addr", cluster.management_addr, *arguments],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: any(agent["slots_total"] > 0 for agent in cluster.agents_snapshot()), 20, "the scripted agent")
        yield
    finally:
        process.terminate()
        process.wait(10)


def raw_post(cluster: Cluster, max_tokens: int, receive_buffer: int | None = None) -> socket.socket:
    client = socket.socket()
    if receive_buffer is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.connect(("127.0.0.1", cluster.inference_port))
    payload = json.dumps(body(max_tokens)).encode()
    client.sendall(
        f"POST {RAW} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return client


def stream_to_the_end(cluster: Cluster, max_tokens: int) -> tuple[int, dict]:
    """Token lines and the last message of one NDJSON request read to its end."""
    tokens = 0
    last = ""
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{cluster.inference_url}{RAW}", json=body(max_tokens)) as response:
        for line in response.iter_lines():
            if line.strip():
                tokens += 1
                last = line
    return tokens - 1, json.loads(last)


def read_tokens_then_leave(cluster: Cluster, max_tokens: int, count: int) -> None:
    """Read `count` ContentToken lines of a longer stream, then close it (a client that got enough)."""
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{cluster.inference_url}{RAW}", json=body(max_tokens)) as response:
        lines = response.iter_lines()
        for _ in range(count):
            assert "ContentToken" in next(lines)


def test_a_client_that_stops_reading_holds_back_only_its_own_stream_and_memory_stays_bounded(cluster_factory):
    cluster = cluster_factory("--inference-item-timeout", "30000")
    tokens = 30_000
    agent_flags = ("--slots", "4", "--tokens", str(tokens), "--first-token-delay", "0", "--token-interval", "0", "--token-bytes", "4000")
    with scripted_paced_agents(cluster, *agent_flags):
        pid = balancer_pid(cluster)
        read_tokens_then_leave(cluster, tokens, 2000)  # warm-up
        cluster.wait_idle()
        baseline = rss_mib(pid)

        stalled = raw_post(cluster, tokens, receive_buffer=4096)
        try:
            peak = baseline
            sampling = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not sampling.is_set():
                    peak = max(peak, rss_mib(pid))
                    time.sleep(0.05)  # the sampling interval

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                wait_until(lambda: sum(cluster.slots_processing().values()) == 1, 10, "the stalled request to be dispatched")
                # Other clients' tokens keep flowing while that one is stalled.
                for _ in range(2):
                    read_tokens_then_leave(cluster, tokens, 2000)
                # The agent streams on; the stalled request's replies stop being queued at the bound.
                wait_until(lambda: "replies behind: ending it" in cluster.balancer.log(), 60, "the stalled stream to reach its bound")
                time.sleep(0.5)  # the agent streams on: the sampler must see RSS stay flat past the bound
            finally:
                sampling.set()
                sampler.join()
            assert sum(cluster.slots_processing().values()) == 1  # the stalled stream still holds its slot
            print(f"stalled client: balancer RSS {baseline:.1f} MiB, peak {peak:.1f} MiB")
            assert peak - baseline < STALLED_RSS_GROWTH_LIMIT_MIB, (baseline, peak)
        finally:
            stalled.close()
        cluster.wait_idle()


def test_open_fds_return_to_baseline_after_requests_and_disconnects_and_sigterm_ends_streams_within_five_seconds(
    cluster_factory,
):
    # Without a grace period the balancer ends its streams at once, as Paddler does.
    cluster = cluster_factory("--shutdown-grace-period", "0")
    with scripted_paced_agents(cluster, "--slots", "8", "--tokens", "200", "--first-token-delay", "0.05", "--token-interval", "0.05"):
        pid = balancer_pid(cluster)
        stream_to_the_end(cluster, 3)  # warm-up
        wait_until(lambda: connections_on_port(pid, cluster.inference_port) == 0, 10, "the warm-up connection to close")
        baseline = open_fds(pid)
        url = f"{cluster.inference_url}{RAW}"
        websocket_url = f"ws://127.0.0.1:{cluster.inference_port}/api/v1/inference_socket"

        def complete() -> None:
            stream_to_the_end(cluster, 5)

        def drop_mid_stream() -> None:
            with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body(200)) as response:
                lines = response.iter_lines()
                next(lines), next(lines)

        def drop_before_first_token() -> None:
            raw_post(cluster, 200).close()

        def websocket_stop_then_close() -> None:
            with websocket_connect(websocket_url) as ws:
                ws.send(json.dumps({"Request": {"id": "s", "request": {"ContinueFromRawPrompt": body(200)}}}))
                ws.recv(timeout=30)
                ws.send(json.dumps({"Notification": {"StopRespondingTo": "s"}}))

        def websocket_close_mid_stream() -> None:
            with websocket_connect(websocket_url) as ws:
                ws.send(json.dumps({"Request": {"id": "c", "request": {"ContinueFromRawPrompt": body(200)}}}))
                ws.recv(timeout=30)

        burst = [complete] * 6 + [drop_mid_stream] * 4 + [drop_before_first_token] * 4
        burst += [websocket_stop_then_close] * 3 + [websocket_close_mid_stream] * 3
        threads = [threading.Thread(target=action) for action in burst]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        cluster.wait_idle()
        # The management queries' own connections close too: the wait covers them.
        wait_until(lambda: open_fds(pid) <= baseline, 10, f"the balancer's open fds to return to {baseline}")

        # SIGTERM with streams open on both transports: the shutdown envelope, then a prompt exit.
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body(200)) as response, websocket_connect(
            websocket_url
        ) as ws:
            lines = response.iter_lines()
            next(lines)
            ws.send(json.dumps({"Request": {"id": "t", "request": {"ContinueFromRawPrompt": body(200)}}}))
            ws.recv(timeout=30)
            started = time.monotonic()
            cluster.balancer.signal(signal.SIGTERM)
            rest = [json.loads(line) for line in lines if line.strip()]
            frames = []
            try:
                while True:
                    frames.append(json.loads(ws.recv(timeout=10)))
            except ConnectionClosed:  # the socket closes (1001) after the envelope
                pass
        assert rest[-1]["Error"]["error"] == {"code": 503, "description": "balancer is shutting down"}
        assert {"Error": {"request_id": "t", "error": {"code": 503, "description": "balancer is shutting down"}}} in frames
        assert cluster.balancer.process.wait(10) == 0
        assert time.monotonic() - started < 5
