"""Images through a real cluster (`paddler balancer --compat-openai-addr` and one `paddler agent`
on Qwen2.5-Coder 0.5B with the kit's tiny projector): the `openai` package's `image_url` parts
and Responses `input_image` parts, projector failures reported as agent issues, a projector
fetched from a URL, and a projector swapped while an image request runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.cluster import Cluster, free_port, ndjson_lines, wait_until
from tests.integration.desired_states import desired_state, generated, put_state, wait_for_agent
from tests.model_file_server import ModelFileServer
from tests.multimodal.conftest import IMAGE_TOKENS, data_uri, png_bytes

pytestmark = pytest.mark.slow

RED_URI = data_uri(png_bytes((200, 40, 40)))


class ImageCluster:
    def __init__(self, cluster: Cluster, openai_port: int, model_path: Path) -> None:
        self.cluster = cluster
        self.model_path = model_path
        self.openai = openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key="unused")

    def apply(self, projection: Any, *, expect_applied: bool = True) -> None:
        state = desired_state(self.model_path, context_size=4096)
        state["multimodal_projection"] = projection
        put_state(self.cluster, state).raise_for_status()
        if expect_applied:
            wait_for_agent(
                self.cluster,
                "qwen",
                lambda agent: agent["state_application_status"] == "Applied" and agent["slots_total"] > 0
                and not agent["issues"] and projection_loaded(agent, projection),
                "the agent to apply the projector",
                timeout=120,
            )

    def native_conversation(self, content: Any, max_tokens: int = 8) -> list[dict[str, Any]]:
        response = httpx.post(
            f"{self.cluster.inference_url}/api/v1/continue_from_conversation_history",
            json={
                "add_generation_prompt": True,
                "conversation_history": [{"role": "user", "content": content}],
                "enable_thinking": False,
                "max_tokens": max_tokens,
            },
            timeout=180,
        )
        response.raise_for_status()
        return ndjson_lines(response)


def projection_loaded(agent: dict[str, Any], projection: Any) -> bool:
    """The agent reports the projector (a status extension our balancer shows in /api/v1/agents),
    and leaves the field out while it has none."""
    if projection == "None":
        return "multimodal_projection_path" not in agent
    return agent.get("multimodal_projection_path") == projection["LocalToAgent"]


def image_content(url: str = RED_URI) -> list[dict[str, Any]]:
    return [{"type": "text", "text": "Describe this image."}, {"type": "image_url", "image_url": {"url": url}}]


@pytest.fixture(scope="module")
def image_cluster(tmp_path_factory, qwen_model_path, mmproj_path) -> Iterator[ImageCluster]:
    directory = tmp_path_factory.mktemp("images")
    cluster = Cluster(directory)
    openai_port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PADDLER_CACHE_DIR", str(directory / "cache"))  # the agent's URL downloads
        yield from _run(cluster, openai_port, qwen_model_path, mmproj_path)


def _run(cluster: Cluster, openai_port: int, qwen_model_path: Path, mmproj_path: Path) -> Iterator[ImageCluster]:
    try:
        cluster.start_balancer("--compat-openai-addr", f"127.0.0.1:{openai_port}")
        cluster.start_agent("qwen", slots=2, threads=2)
        images = ImageCluster(cluster, openai_port, qwen_model_path)
        images.apply({"LocalToAgent": str(mmproj_path)})
        yield images
    finally:
        cluster.shutdown()


def test_openai_chat_takes_an_image_url_part(image_cluster: ImageCluster) -> None:
    client = image_cluster.openai
    text_only = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "Describe this image."}]}], max_tokens=8
    )
    with_image = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": image_content()}], max_tokens=8
    )
    assert with_image.choices[0].message.content
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS


def test_openai_responses_take_an_input_image_part(image_cluster: ImageCluster) -> None:
    client = image_cluster.openai

    def ask(*parts: dict[str, Any]):
        return client.responses.create(
            model="m",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Describe this image."}, *parts]}],
            max_output_tokens=8,
            reasoning={"effort": "none"},
        )

    text_only = ask()
    with_image = ask({"type": "input_image", "image_url": RED_URI, "detail": "auto"})
    assert with_image.status == "completed"
    assert with_image.usage.input_tokens == text_only.usage.input_tokens + IMAGE_TOKENS


def test_a_broken_image_is_reported_on_the_native_route(image_cluster: ImageCluster) -> None:
    lines = image_cluster.native_conversation(image_content("data:image/png;base64,AAAA"))
    assert "ImageDecodingFailed" in generated(lines[-1]), json.dumps(lines[-2:])


def test_projector_problems_are_agent_issues(image_cluster: ImageCluster, wrong_width_mmproj_path, mmproj_path) -> None:
    cluster = image_cluster.cluster
    for projection in ({"LocalToAgent": str(wrong_width_mmproj_path)}, {"LocalToAgent": "/nonexistent/mmproj.gguf"}):
        image_cluster.apply(projection, expect_applied=False)
        agent = wait_for_agent(
            cluster,
            "qwen",
            lambda agent: "MultimodalProjectionCannotBeLoaded" in json.dumps(agent["issues"]),
            f"the agent to report {projection}",
            timeout=120,
        )
        assert agent["slots_total"] == 0
        assert agent["model_path"] is None
        assert "multimodal_projection_path" not in agent
    # The agent process survived both, and a good projector serves again.
    image_cluster.apply({"LocalToAgent": str(mmproj_path)})
    assert "Done" in generated(image_cluster.native_conversation(image_content())[-1])


def test_a_projector_from_a_url(image_cluster: ImageCluster, second_mmproj_path, mmproj_path) -> None:
    server = ModelFileServer(files={"/mmproj.gguf": second_mmproj_path})
    with server.running():
        image_cluster.apply({"Url": {"url": server.url("/mmproj.gguf")}}, expect_applied=False)
        agent = wait_for_agent(
            image_cluster.cluster,
            "qwen",
            # The projector it reports is the downloaded copy, in the agent's model cache.
            lambda agent: agent["state_application_status"] == "Applied" and agent["slots_total"] > 0
            and agent.get("multimodal_projection_path") not in (None, str(mmproj_path), str(second_mmproj_path)),
            "the agent to load the projector it downloaded",
            timeout=120,
        )
        assert not agent["issues"]
        lines = image_cluster.native_conversation(image_content())
        assert generated(lines[-1])["Done"]["usage"]["input_image_tokens"] == IMAGE_TOKENS
    image_cluster.apply({"LocalToAgent": str(mmproj_path)})


def test_a_projector_swap_under_load(image_cluster: ImageCluster, mmproj_path, second_mmproj_path) -> None:
    image_cluster.apply({"LocalToAgent": str(mmproj_path)})
    running: dict[str, list[dict[str, Any]]] = {}

    def long_request() -> None:
        running["lines"] = image_cluster.native_conversation(image_content(), max_tokens=48)

    request = threading.Thread(target=long_request)
    request.start()
    wait_until(lambda: any(image_cluster.cluster.slots_processing().values()), 30, "the image request to start")
    image_cluster.apply({"LocalToAgent": str(second_mmproj_path)})
    request.join(timeout=180)
    lines = running["lines"]
    # It completed on the old projector (the agent drains before it swaps) or ended with an error line.
    terminal = generated(lines[-1]) or lines[-1]
    assert "Done" in terminal or "Error" in json.dumps(terminal), json.dumps(lines[-2:])
    after = image_cluster.native_conversation(image_content())
    assert generated(after[-1])["Done"]["usage"]["input_image_tokens"] == IMAGE_TOKENS
    assert f"multimodal projection {second_mmproj_path}" in image_cluster.cluster.agents["qwen"].log()
