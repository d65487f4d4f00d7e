"""The web admin panel in a real headless Chromium against a real balancer and agent (Gemma).

Screenshots of each page land in test-artifacts/.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from paddler_trio.protocol import LlamaServerStatus, RegisterAgentNotification, StateApplicationStatus, to_json
from tests.integration.browser import chromium_context, save_screenshot
from tests.integration.cluster import DETERMINISTIC_PARAMETERS, Cluster, free_port, wait_until
from tests.proxy.scripted_fake_agent import status_snapshot

AGENT = "panel-agent"
# Gemma 3 270M is a base model without a chat template: the prompt page needs an override.
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def panel_cluster(tmp_path_factory, gemma_model_path: Path) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(tmp_path_factory.mktemp("panel-cluster"))
    panel_addr = f"127.0.0.1:{free_port()}"
    try:
        cluster.start_balancer("--web-admin-panel-addr", panel_addr)
        wait_until(lambda: _reachable(f"http://{panel_addr}/"), 10, "the web admin panel")
        cluster.start_agent(AGENT, slots=2, threads=1)
        cluster.put_desired_state(gemma_model_path)
        cluster.wait_for_ready_agents([AGENT])
        yield cluster, f"http://{panel_addr}"
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser) -> Iterator:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # Script errors fail the test; HTTP statuses ("Failed to load resource") are the tests' own business.
    page.on(
        "console",
        lambda message: problems.append(message.text)
        if message.type == "error" and not message.text.startswith("Failed to load resource")
        else None,
    )
    yield page
    page.close()
    assert not problems, problems


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _desired_state(cluster: Cluster) -> dict:
    return httpx.get(f"{cluster.management_url}/api/v1/balancer_desired_state", timeout=5).json()


def test_routes_serve_the_shell_with_the_configuration_and_the_static_files(panel_cluster) -> None:
    cluster, panel_url = panel_cluster
    for path in ("/", "/model", "/prompt", "/anything/else"):
        shell = httpx.get(panel_url + path, timeout=5)
        assert shell.status_code == 200
        assert shell.headers["content-type"].startswith("text/html")
        assert f'data-management-addr="{cluster.management_addr}"' in shell.text
        assert f'data-inference-addr="127.0.0.1:{cluster.inference_port}"' in shell.text
        assert 'data-max-buffered-requests="30"' in shell.text
        assert 'data-buffered-request-timeout="10000"' in shell.text
    script = httpx.get(panel_url + "/static/app.js", timeout=5)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(panel_url + "/favicon.ico", timeout=5).headers["content-type"].startswith("image/svg+xml")
    assert httpx.get(panel_url + "/static/missing.js", timeout=5).status_code == 404
    assert httpx.get(panel_url + "/static/%2e%2e/__init__.py", timeout=5).status_code == 404
    # The panel's origin is allowed on both services.
    origin = {"Origin": panel_url}
    for url in (cluster.management_url + "/api/v1/agents", cluster.inference_url + "/health"):
        assert httpx.get(url, headers=origin, timeout=5).headers["access-control-allow-origin"] == panel_url


def test_dashboard_lists_the_agent_live_and_shows_its_metadata(panel_cluster, page) -> None:
    cluster, panel_url = panel_cluster
    page.goto(panel_url + "/")
    row = page.locator("tr", has_text=AGENT)
    row.wait_for(timeout=10_000)
    assert "gemma" in row.inner_text().lower()
    assert "0 / 2" in row.inner_text()
    # Gemma is a base model: the agent reports that it has no chat template; the button opens the details.
    row.get_by_role("button", name="1 issue: UnableToFindChatTemplate").click()
    details = page.locator("dialog")
    assert "model_path" in details.inner_text()
    details.get_by_role("button", name="Close").click()
    assert page.get_by_test_id("buffered-requests").inner_text() == "0"
    assert page.get_by_test_id("service-management").inner_text() == cluster.management_url
    save_screenshot(page, "web-admin-panel-dashboard")
    row.get_by_role("button", name="Metadata").click()
    metadata = page.get_by_test_id("metadata")
    metadata.wait_for(timeout=10_000)
    assert "general.architecture" in metadata.inner_text()
    save_screenshot(page, "web-admin-panel-metadata")


def test_model_page_validates_and_puts_the_desired_state(panel_cluster, page, gemma_model_path: Path) -> None:
    cluster, panel_url = panel_cluster
    page.goto(panel_url + "/model")
    model_input = page.locator("input[name=model]")
    model_input.wait_for(timeout=10_000)
    assert model_input.input_value() == f"agent://{gemma_model_path}"

    # Client-side validation: nothing is sent while a field is wrong.
    page.locator("input[name=top_p]").fill("1.5")
    page.get_by_role("button", name="Apply to the cluster").click()
    assert "top_p must be greater than 0 and at most 1" in page.locator("form").inner_text()
    assert _desired_state(cluster)["inference_parameters"]["top_p"] == DETERMINISTIC_PARAMETERS["top_p"]
    page.locator("input[name=top_p]").fill("1")

    page.locator("input[name=model]").fill("https://huggingface.co/owner/repo/blob/main/dir/model.gguf")
    page.locator("input[name=multimodal_projection]").fill("ftp://nowhere/x.gguf")
    page.get_by_role("button", name="Apply to the cluster").click()
    assert "http(s) URL" in page.locator("form").inner_text()
    page.locator("input[name=model]").fill(f"agent://{gemma_model_path}")
    page.locator("input[name=multimodal_projection]").fill("")

    page.locator("input[name=penalty_last_n]").fill("64")
    page.get_by_label("Use my chat template").check()
    page.locator("textarea[name=chat_template_override]").fill(PLAIN_TEMPLATE)
    page.get_by_role("button", name="Apply to the cluster").click()
    page.get_by_test_id("save-outcome").filter(has_text="Saved").wait_for(timeout=10_000)
    save_screenshot(page, "web-admin-panel-model")

    state = _desired_state(cluster)
    assert state["inference_parameters"]["penalty_last_n"] == 64
    assert state["model"] == {"LocalToAgent": str(gemma_model_path)}
    assert state["multimodal_projection"] == "None"
    assert state["use_chat_template_override"] is True
    assert state["chat_template_override"] == {"content": PLAIN_TEMPLATE}


def test_model_page_shows_the_balancers_refusal(panel_cluster, page) -> None:
    """Every value the balancer refuses is caught in the page first, so the refusal is staged in the browser."""
    _, panel_url = panel_cluster
    refusal = "Invalid inference parameters: context_size is too large for this cluster"  # as the balancer answers it

    def refuse_puts(route) -> None:
        if route.request.method == "PUT":
            route.fulfill(status=400, body=refusal, content_type="text/plain; charset=utf-8", headers={
                "Access-Control-Allow-Origin": panel_url,
            })
        else:
            route.continue_()

    page.route("**/api/v1/balancer_desired_state", refuse_puts)
    page.goto(panel_url + "/model")
    page.get_by_role("button", name="Apply to the cluster").click()
    outcome = page.get_by_test_id("save-outcome")
    outcome.filter(has_text="refused").wait_for(timeout=10_000)
    assert outcome.inner_text() == (
        "The balancer refused it: 400: Invalid inference parameters: context_size is too large for this cluster"
    )


def test_model_uri_forms_map_to_model_sources(panel_cluster, page) -> None:
    _, panel_url = panel_cluster
    page.goto(panel_url + "/model")
    page.locator("input[name=model]").wait_for(timeout=10_000)
    parsed = page.evaluate(
        """async () => {
            const { parseModelUri, formatModelSource } = await import("/static/model_uri.js");
            const uris = [
                "https://huggingface.co/unsloth/Qwen3-0.6B-GGUF/blob/main/Qwen3-0.6B-Q8_0.gguf",
                "https://huggingface.co/owner/repo/resolve/abc123/sub/dir/m.gguf",
                "agent:///models/m.gguf",
                "https://example.com/m.gguf",
                "",
            ];
            return uris.map((uri) => [parseModelUri(uri), formatModelSource(parseModelUri(uri))]);
        }"""
    )
    assert [source for source, _ in parsed] == [
        {"HuggingFace": {"repo_id": "unsloth/Qwen3-0.6B-GGUF", "filename": "Qwen3-0.6B-Q8_0.gguf", "revision": "main"}},
        {"HuggingFace": {"repo_id": "owner/repo", "filename": "sub/dir/m.gguf", "revision": "abc123"}},
        {"LocalToAgent": "/models/m.gguf"},
        {"Url": {"url": "https://example.com/m.gguf"}},
        "None",
    ]
    assert parsed[0][1] == "https://huggingface.co/unsloth/Qwen3-0.6B-GGUF/blob/main/Qwen3-0.6B-Q8_0.gguf"


def test_prompt_page_streams_a_reply_and_stop_frees_the_slot(panel_cluster, page, gemma_model_path: Path) -> None:
    cluster, panel_url = panel_cluster
    state = {
        "chat_template_override": {"content": PLAIN_TEMPLATE},
        "inference_parameters": {**DETERMINISTIC_PARAMETERS, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
        "model": {"LocalToAgent": str(gemma_model_path)},
        "multimodal_projection": "None",
        "use_chat_template_override": True,
    }
    url = f"{cluster.management_url}/api/v1/balancer_desired_state"
    httpx.put(url, content=json.dumps(state), timeout=5).raise_for_status()
    wait_until(
        lambda: (agent := cluster.agent_named(AGENT)) is not None
        and agent["uses_chat_template_override"]
        and agent["slots_total"] > 0
        and agent["state_application_status"] == "Applied",
        90,
        "the agent to apply the chat template override",
    )

    page.goto(panel_url + "/prompt")
    page.get_by_test_id("prompt-input").fill("Once upon a time, in a kingdom by the sea, there lived")
    page.locator("input[type=number]").fill("2000")
    page.get_by_test_id("send").click()
    answer = page.get_by_test_id("answer-content")
    wait_until(lambda: len(answer.inner_text()) > 20, 60, "tokens to stream into the page")
    first_seen = answer.inner_text()
    wait_until(lambda: len(answer.inner_text()) > len(first_seen), 30, "more tokens to stream in")
    assert cluster.slots_processing()[AGENT] == 1
    save_screenshot(page, "web-admin-panel-prompt-streaming")

    page.get_by_test_id("stop").click()
    page.get_by_test_id("answer").filter(has_text="Stopped.").wait_for(timeout=5_000)
    wait_until(lambda: cluster.slots_processing()[AGENT] == 0, 10, "the stopped request to free its slot")
    stopped_text = answer.inner_text()
    page.wait_for_timeout(500)
    assert answer.inner_text() == stopped_text
    assert page.get_by_test_id("send").is_enabled()
    save_screenshot(page, "web-admin-panel-prompt-stopped")


def test_dashboard_shows_the_agents_template_override(panel_cluster, page) -> None:
    _, panel_url = panel_cluster
    page.goto(panel_url + "/")
    row = page.locator("tr", has_text=AGENT)
    row.wait_for(timeout=10_000)
    row.get_by_role("button", name="template override").click()  # set by the prompt test
    assert page.get_by_test_id("template-override").inner_text() == PLAIN_TEMPLATE


def test_prompt_page_is_disabled_with_a_notice_in_embeddings_mode(panel_cluster, page, gemma_model_path: Path) -> None:
    cluster, panel_url = panel_cluster
    page.goto(panel_url + "/prompt")
    page.get_by_test_id("send").wait_for(timeout=10_000)
    assert page.get_by_test_id("embeddings-notice").is_hidden()
    cluster.put_desired_state(gemma_model_path, enable_embeddings=True)
    # The mode flip arrives over the open inference WebSocket.
    page.get_by_test_id("embeddings-notice").wait_for(state="visible", timeout=10_000)
    assert page.get_by_test_id("prompt-input").is_disabled()
    save_screenshot(page, "web-admin-panel-prompt-embeddings-mode")
    cluster.put_desired_state(gemma_model_path)
    page.get_by_test_id("embeddings-notice").wait_for(state="hidden", timeout=10_000)
    assert page.get_by_test_id("prompt-input").is_enabled()
    cluster.wait_for_ready_agents([AGENT])  # settled before the cluster is stopped


def test_panel_works_with_api_keys_through_its_key_field(tmp_path, browser) -> None:
    cluster = Cluster(tmp_path)
    panel_addr = f"127.0.0.1:{free_port()}"
    key = "panel-test-key"
    try:
        cluster.start_balancer(
            "--web-admin-panel-addr", panel_addr, "--management-api-key", key, "--inference-api-key", key
        )
        page = browser.new_page()
        page.goto(f"http://{panel_addr}/")
        # Without the key the feeds are refused (401) and the page says it keeps trying.
        page.get_by_text("Reconnecting to the management service").wait_for(timeout=10_000)
        page.locator("#api-key").fill(key)
        page.locator("#api-key").press("Enter")
        page.locator("#api-key").dispatch_event("change")
        page.get_by_text("No agents are registered").wait_for(timeout=10_000)
        assert page.get_by_test_id("buffered-requests").inner_text() == "0"
        page.get_by_role("link", name="Model").click()
        assert page.locator("input[name=top_p]").input_value() == "0.8"
        page.get_by_role("link", name="Prompt").click()
        page.wait_for_function("() => !document.querySelector('.stream-status').textContent", timeout=10_000)
        save_screenshot(page, "web-admin-panel-with-api-key")
        page.close()
    finally:
        cluster.shutdown()


@pytest.fixture
def bare_panel(tmp_path) -> Iterator[tuple[Cluster, str]]:
    """A balancer with the panel and no agent: the pages that read only the balancer's state."""
    cluster = Cluster(tmp_path)
    panel_addr = f"127.0.0.1:{free_port()}"
    try:
        cluster.start_balancer("--web-admin-panel-addr", panel_addr)
        wait_until(lambda: _reachable(f"http://{panel_addr}/"), 10, "the web admin panel")
        yield cluster, f"http://{panel_addr}"
    finally:
        cluster.shutdown()


def test_prompt_page_enables_images_only_when_the_applicable_state_names_a_projection(bare_panel, page) -> None:
    cluster, panel_url = bare_panel
    page.goto(panel_url + "/prompt")
    page.get_by_test_id("send").wait_for(timeout=10_000)
    page.wait_for_function("() => !document.querySelector('.stream-status').textContent", timeout=10_000)
    assert page.get_by_test_id("image-input").is_disabled()
    assert page.get_by_test_id("image-note").is_visible()
    # The page reads only the applicable state: the files need not exist, no agent loads them.
    state = {
        "chat_template_override": None,
        "inference_parameters": DETERMINISTIC_PARAMETERS,
        "model": {"LocalToAgent": "/nowhere/model.gguf"},
        "multimodal_projection": {"LocalToAgent": "/nowhere/mmproj.gguf"},
        "use_chat_template_override": False,
    }
    httpx.put(f"{cluster.management_url}/api/v1/balancer_desired_state", json=state, timeout=5).raise_for_status()
    page.reload()
    page.get_by_test_id("image-note").wait_for(state="hidden", timeout=10_000)
    assert page.get_by_test_id("image-input").is_enabled()
    save_screenshot(page, "web-admin-panel-prompt-images-enabled")


@contextmanager
def registered_agent(management_addr: str, agent_id: str, **status: object) -> Iterator[None]:
    """A bare agent socket (no engine) registered with `status` in its snapshot until the block ends."""
    registered, leave = threading.Event(), threading.Event()

    async def hold_the_socket() -> None:
        async with open_websocket_url(f"ws://{management_addr}/api/v1/agent_socket/{agent_id}") as socket:
            await socket.get_message()  # Version
            snapshot = attrs.evolve(status_snapshot(slots=1, model_path="/models/m.gguf"), **status)
            await socket.send_message(to_json(RegisterAgentNotification(name=agent_id, slot_aggregated_status_snapshot=snapshot)))
            registered.set()
            await trio.to_thread.run_sync(leave.wait)

    thread = threading.Thread(target=trio.run, args=(hold_the_socket,))
    thread.start()
    try:
        assert registered.wait(10), "the agent socket did not register"
        yield
    finally:
        leave.set()
        thread.join(10)


def test_dashboard_shows_the_projector_an_agent_reports(bare_panel, page) -> None:
    cluster, panel_url = bare_panel
    with (
        registered_agent(cluster.management_addr, "with-projector", multimodal_projection_path="/models/mmproj-m.gguf"),
        registered_agent(cluster.management_addr, "without"),
    ):
        page.goto(panel_url + "/")
        row = page.locator("tr", has_text="with-projector")
        row.wait_for(timeout=10_000)
        projector = row.get_by_test_id("projector")
        assert projector.inner_text().strip() == "+ mmproj-m.gguf"
        assert projector.get_attribute("title") == "/models/mmproj-m.gguf"
        other = page.locator("tr", has_text="without")
        other.wait_for(timeout=10_000)
        assert other.get_by_test_id("projector").count() == 0


def test_dashboard_shows_the_kind_and_model_name_of_an_agent_watching_a_llama_server(bare_panel, page) -> None:
    cluster, panel_url = bare_panel
    watched = LlamaServerStatus(external_llamacpp_addr="10.0.0.5:8080", model_name="qwen2.5-coder-0.5b")
    with (
        registered_agent(
            cluster.management_addr, "watcher", llama_server=watched, state_application_status=StateApplicationStatus.FRESH
        ),
        registered_agent(cluster.management_addr, "engine-agent"),
    ):
        page.goto(panel_url + "/")
        row = page.locator("tr", has_text="watcher")
        row.wait_for(timeout=10_000)
        assert row.get_by_test_id("model-name").inner_text().strip() == "qwen2.5-coder-0.5b"
        assert row.get_by_test_id("kind").inner_text().strip() == "llama-server at 10.0.0.5:8080"
        # It answers no metadata request (409): ask llama-server.
        assert row.get_by_role("button", name="Metadata").is_disabled()
        engine = page.locator("tr", has_text="engine-agent")
        engine.wait_for(timeout=10_000)
        assert engine.get_by_test_id("kind").count() == 0
        assert "Applied" in engine.inner_text()
        assert engine.get_by_role("button", name="Metadata").is_enabled()
        save_screenshot(page, "web-admin-panel-llama-server-agent")
