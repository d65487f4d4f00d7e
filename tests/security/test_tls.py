"""TLS end to end with a certificate made at test time: an agent joins over wss:// trusting
the certificate through --management-ca-file, and clients use https:// and wss://."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import httpx
import trio_websocket

from tests.integration.cluster import DETERMINISTIC_PARAMETERS, wait_until
from tests.security.balancer_processes import secured_balancer, spawn

KEY = "tls-inference-key"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(certificate),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certificate, key


async def test_agent_over_wss_and_clients_over_https(tmp_path, gemma_model_path) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    with secured_balancer(
        tmp_path,
        "--tls-certfile", str(certificate),
        "--tls-keyfile", str(key),
        "--inference-api-key", KEY,
        tls_ca=certificate,
    ) as balancer:  # fmt: skip
        common = ["agent", "--management-addr", balancer.management_addr, "--slots", "1", "--threads", "2"]
        agent = spawn(tmp_path, "agent-tls", [*common, "--name", "tls", "--management-tls", "--management-ca-file", str(certificate)])
        plain = spawn(tmp_path, "agent-plain", [*common, "--name", "plain"])
        http = httpx.Client(verify=balancer.verify, timeout=30)
        try:
            state = {
                "chat_template_override": None,
                "inference_parameters": DETERMINISTIC_PARAMETERS,
                "model": {"LocalToAgent": str(gemma_model_path)},
                "multimodal_projection": "None",
                "use_chat_template_override": False,
            }
            management = balancer.url("management")
            http.put(f"{management}/api/v1/balancer_desired_state", json=state).raise_for_status()

            def tls_agent_ready() -> bool:
                agents = http.get(f"{management}/api/v1/agents").json()["agents"]
                return any(a["name"] == "tls" and a["slots_total"] > 0 for a in agents)

            wait_until(tls_agent_ready, 90, "the agent to join over wss and load the model")

            response = http.post(
                f"{balancer.url('inference')}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": "The capital of France is", "max_tokens": 4},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            lines = [json.loads(line) for line in response.text.splitlines()]
            assert "Done" in lines[-1]["Response"]["response"]["GeneratedToken"], lines

            context = ssl.create_default_context(cafile=str(certificate))
            async with trio_websocket.open_websocket_url(
                balancer.ws_url("inference", "/api/v1/inference_socket"),
                ssl_context=context,
                extra_headers=[("Authorization", f"Bearer {KEY}")],
            ) as socket:
                await socket.send_message(
                    '{"Request":{"id":"w","request":{"ContinueFromRawPrompt":{"raw_prompt":"Hi","max_tokens":2}}}}'
                )
                while "Done" not in (message := await socket.get_message()):
                    assert '"w"' in message
            assert http.get(f"{balancer.url('openai')}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200

            # Plain HTTP to a TLS port gets nowhere, and an agent without --management-tls never joins.
            try:
                http.get(f"http://127.0.0.1:{balancer.inference_port}/health", timeout=2)
                raise AssertionError("plain HTTP was answered on a TLS port")
            except httpx.HTTPError:
                pass
            agents = http.get(f"{management}/api/v1/agents").json()["agents"]
            assert [a["name"] for a in agents] == ["tls"]
        finally:
            http.close()
            agent.stop()
            plain.stop()
