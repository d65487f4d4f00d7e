"""Images in conversations, through the engine over real Qwen2.5-Coder 0.5B and the kit's tiny
random-weight projector: usage, batching beside text requests, cancellation, image sources,
failures, and the prompt cache across images. The weights are random: nothing here reads the
generated text."""

from __future__ import annotations

import socket

import attrs
import pytest
import trio

from paddler_trio.engine import engine_errors, image_input
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    ContentToken,
    ContinueFromConversationHistoryParams,
    ConversationMessage,
    GenerationDone,
    ImageDecodingFailed,
    ImageUrl,
    ImageUrlPart,
    InferenceParameters,
    MultimodalNotSupported,
    TextPart,
)
from tests.engine.engine_harness import chat
from tests.model_file_server import ModelFileServer
from tests.multimodal.conftest import IMAGE_TOKENS, data_uri, png_bytes
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

GREEDY = attrs.evolve(InferenceParameters.deterministic(), context_size=2048, n_batch=512)
RED = png_bytes((200, 40, 40))
BLUE = png_bytes((40, 40, 200))


def settings(
    model_path, mmproj_path=None, *, slots: int = 2, parameters: InferenceParameters = GREEDY, cache_ram_mib: int = 0
) -> EngineSettings:
    return EngineSettings(
        str(model_path),
        slots=slots,
        inference_parameters=parameters,
        multimodal_projection_path=str(mmproj_path) if mmproj_path is not None else None,
        cache_ram_mib=cache_ram_mib,
    )


def port_without_listener() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def conversation(*image_urls: str, text: str = "Describe this image.", max_tokens: int = 8):
    parts = (TextPart(text), *(ImageUrlPart(ImageUrl(url)) for url in image_urls))
    return ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=(ConversationMessage("user", parts),),
        enable_thinking=False,
        max_tokens=max_tokens,
    )


async def test_an_image_adds_its_tokens_to_the_prompt(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
        without = await chat(engine, conversation())
        with_image = await chat(engine, conversation(data_uri(RED)))
    assert with_image.usage.prompt_tokens == without.usage.prompt_tokens + IMAGE_TOKENS
    assert with_image.usage.input_image_tokens == IMAGE_TOKENS
    assert without.usage.input_image_tokens == 0
    assert with_image.usage.completion_tokens > 0


async def test_a_text_request_and_an_image_request_run_side_by_side(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=2)) as engine:
        outcomes = {}

        async def run(name: str, params) -> None:
            outcomes[name] = await chat(engine, params)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "text", conversation(text="Write a haiku about rivers.", max_tokens=24))
            nursery.start_soon(run, "image", conversation(data_uri(RED), max_tokens=24))
        assert engine.scheduler.slots_busy == 0
    for outcome in outcomes.values():
        assert isinstance(outcome.terminal, GenerationDone)
        assert outcome.usage.completion_tokens > 0
    assert outcomes["image"].usage.input_image_tokens == IMAGE_TOKENS
    assert outcomes["text"].usage.input_image_tokens == 0


async def test_a_cancelled_image_request_frees_its_slot(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
        async with engine.continue_from_conversation_history(conversation(data_uri(RED), max_tokens=400)) as stream:
            async for result in stream:
                if isinstance(result, ContentToken):
                    break
        await wait_until(lambda: engine.scheduler.slots_busy == 0)
        # The only slot serves the next request, and its cache holds nothing of the cancelled one.
        again = await chat(engine, conversation(data_uri(RED)))
    assert isinstance(again.terminal, GenerationDone)
    assert again.usage.cached_prompt_tokens == 0


async def test_a_request_cancelled_before_its_image_is_decoded_frees_its_slot(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
        async with engine.continue_from_conversation_history(conversation(data_uri(RED), max_tokens=400)):
            pass  # submitted, then left before any step could decode its image
        await wait_until(lambda: engine.scheduler.slots_busy == 0)
        again = await chat(engine, conversation())
    assert isinstance(again.terminal, GenerationDone)


async def test_an_image_from_an_http_url_counts_as_the_same_data_uri(qwen_model_path, mmproj_path, tmp_path):
    image_file = tmp_path / "red.png"
    image_file.write_bytes(RED)
    server = ModelFileServer(files={"/red.png": image_file})
    with server.running():
        async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
            from_uri = await chat(engine, conversation(data_uri(RED)))
            from_url = await chat(engine, conversation(server.url("/red.png")))
    assert isinstance(from_url.terminal, GenerationDone)
    assert from_url.usage.input_image_tokens == IMAGE_TOKENS
    assert from_url.usage.prompt_tokens == from_uri.usage.prompt_tokens
    # Same pixels, same cached identity: the whole prompt but its last token comes from the cache.
    assert from_url.usage.cached_prompt_tokens == from_url.usage.prompt_tokens - 1


async def test_the_prompt_cache_stops_at_a_different_image(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
        text_only = await chat(engine, conversation())
        red = await chat(engine, conversation(data_uri(RED)))
        blue = await chat(engine, conversation(data_uri(BLUE)))
    # What precedes the image is shared; the other image and all after it are decoded anew.
    image_start = text_only.usage.prompt_tokens - 5  # Qwen's template: the image sits before "<|im_end|>\n<|im_start|>assistant\n"
    assert blue.usage.cached_prompt_tokens == red.usage.cached_prompt_tokens
    assert blue.usage.cached_prompt_tokens <= image_start
    assert blue.usage.prompt_tokens == red.usage.prompt_tokens


async def test_a_conversation_with_an_image_comes_back_whole_from_the_prompt_state_cache(qwen_model_path, mmproj_path):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1, cache_ram_mib=64)) as engine:
        text_only = await chat(engine, conversation())
        await chat(engine, conversation(data_uri(RED)))
        blue = await chat(engine, conversation(data_uri(BLUE)))  # takes the slot: red's state is saved
        red_again = await chat(engine, conversation(data_uri(RED)))
    image_start = text_only.usage.prompt_tokens - 5
    assert blue.usage.cached_prompt_tokens <= image_start  # the saved red image is not blue's
    # Restored from the saved state, image included: only the last prompt token is decoded again.
    assert red_again.usage.cached_prompt_tokens == red_again.usage.prompt_tokens - 1


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,not base64!",
        "data:image/png;base64",  # no comma
        data_uri(b"this is not an image"),
        data_uri(RED[: len(RED) // 2]),  # a truncated PNG
        "ftp://example.invalid/image.png",
    ],
)
async def test_a_broken_image_ends_with_image_decoding_failed(qwen_model_path, mmproj_path, url):
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
        outcome = await chat(engine, conversation(url))
        assert isinstance(outcome.terminal, ImageDecodingFailed)
        assert engine.scheduler.slots_busy == 0
        assert isinstance((await chat(engine, conversation(data_uri(RED)))).terminal, GenerationDone)


async def test_unreachable_missing_and_oversized_urls_end_with_image_decoding_failed(
    qwen_model_path, mmproj_path, tmp_path, monkeypatch
):
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes((1, 2, 3), size=(400, 400)))
    server = ModelFileServer(files={"/big.png": big}, statuses={"/missing.png": 404})
    with server.running():
        monkeypatch.setattr(image_input, "MAX_IMAGE_BYTES", big.stat().st_size - 1)
        async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1)) as engine:
            for url in (f"http://127.0.0.1:{port_without_listener()}/image.png", server.url("/missing.png"), server.url("/big.png")):
                outcome = await chat(engine, conversation(url))
                assert isinstance(outcome.terminal, ImageDecodingFailed), url


async def test_a_large_image_is_resized_to_fit(qwen_model_path, mmproj_path):
    parameters = attrs.evolve(GREEDY, image_resize_to_fit=32)
    async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1, parameters=parameters)) as engine:
        outcome = await chat(engine, conversation(data_uri(png_bytes((9, 99, 199), size=(1200, 300)))))
    assert outcome.usage.input_image_tokens == IMAGE_TOKENS


def test_decoding_scales_the_longest_side_down_and_keeps_the_aspect():
    image = image_input.decode_image(png_bytes((9, 99, 199), size=(1200, 300)), 100)
    assert (image.width, image.height) == (100, 25)
    assert len(image.rgb) == 100 * 25 * 3
    small = image_input.decode_image(png_bytes((9, 99, 199), size=(64, 48)), 100)
    assert (small.width, small.height) == (64, 48)


async def test_images_without_a_projector_are_not_supported(qwen_model_path):
    async with Engine.open(settings(qwen_model_path, slots=1)) as engine:
        outcome = await chat(engine, conversation(data_uri(RED)))
    assert isinstance(outcome.terminal, MultimodalNotSupported)


async def test_a_projector_of_another_width_is_refused(qwen_model_path, wrong_width_mmproj_path):
    with pytest.raises(engine_errors.MultimodalProjectionCannotBeLoaded):
        async with Engine.open(settings(qwen_model_path, wrong_width_mmproj_path, slots=1)):
            pass


async def test_a_projector_in_embeddings_mode_is_refused(qwen_model_path, mmproj_path):
    parameters = attrs.evolve(GREEDY, enable_embeddings=True)
    with pytest.raises(engine_errors.MultimodalProjectionCannotBeLoaded):
        async with Engine.open(settings(qwen_model_path, mmproj_path, slots=1, parameters=parameters)):
            pass
