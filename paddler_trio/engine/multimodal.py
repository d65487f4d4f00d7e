"""A multimodal projector (mmproj) over the loaded text model, and prompts that hold images.

`Projector.load` runs `mtmd_init_from_file` (NULL when llama.cpp refuses the file: not an mmproj,
a width that differs from the text model's n_embd...). Its other methods touch llama.cpp's
contexts and run on the scheduler's worker thread only.

A prompt with images is rendered with mtmd's marker where each image part is and tokenized by
`mtmd_tokenize` into chunks. The text chunks' tokens go through the scheduler's ordinary batched
prefill; each image chunk is encoded and decoded into its slot's sequence as a work item of its
own (`Projector.evaluate`). In the slot's token list an image stands as one pseudo-token per KV
position, negative (never a vocabulary id) and derived from the image's pixel digest, so the
scheduler's common-prefix reuse stops at the first position where two images differ.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence

import attrs
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

from paddler_trio.engine.context import DecodingContext
from paddler_trio.engine.engine_errors import MultimodalProjectionCannotBeLoaded
from paddler_trio.engine.image_input import DecodedImage
from paddler_trio.engine.llama_library import ensure_multimodal_logs_routed
from paddler_trio.engine.model import LoadedModel
from paddler_trio.engine.request_rejection import RequestRejected
from paddler_trio.protocol import ImageDecodingFailed, ImageExceedsBatchSize, SamplerError

_logger = logging.getLogger(__name__)

# Room for the position of a pseudo-token inside its image (an image has far fewer positions).
_POSITIONS_PER_IMAGE = 2**20


def image_pseudo_tokens(digest: bytes, positions: int) -> list[int]:
    """The stand-ins of an image's KV positions in a slot's token list (all negative)."""
    # 40 bits of the digest times 2**20 positions stays within int64 (the state cache's tokens).
    base = int.from_bytes(digest[:5], "big") * _POSITIONS_PER_IMAGE
    return [-(1 + base + position) for position in range(positions)]


@attrs.define(eq=False)
class ImageSpan:
    """One image of a prompt: where it starts in the token list, its stand-ins, its chunk."""

    start: int
    pseudo_tokens: list[int]
    n_tokens: int  # embeddings it decodes (what usage counts); its KV positions are `pseudo_tokens`
    chunk: mtmd.mtmd_input_chunk_p


@attrs.define(eq=False)
class MultimodalPrompt:
    """A tokenized prompt with images; owns its mtmd chunks until `close()`."""

    tokens: list[int]  # text tokens and image stand-ins, one per KV position
    images: list[ImageSpan]
    _chunks: mtmd.mtmd_input_chunks_p | None

    @property
    def image_tokens(self) -> int:
        return sum(image.n_tokens for image in self.images)

    @property
    def prompt_tokens(self) -> int:
        """Text tokens plus image tokens (an image's tokens and positions may differ)."""
        return len(self.tokens) - sum(len(image.pseudo_tokens) for image in self.images) + self.image_tokens

    def image_at(self, index: int) -> ImageSpan | None:
        for image in self.images:
            if image.start == index:
                return image
        return None

    def text_end(self, index: int) -> int:
        """Where the run of text tokens from `index` ends: the next image, or the prompt's end."""
        return min((image.start for image in self.images if image.start >= index), default=len(self.tokens))

    def image_start_before(self, index: int) -> int:
        """`index`, moved back to the start of an image that it would cut in two."""
        for image in self.images:
            if image.start < index < image.start + len(image.pseudo_tokens):
                return image.start
        return index

    def close(self) -> None:
        if self._chunks is not None:
            mtmd.mtmd_input_chunks_free(self._chunks)
            self._chunks = None


class Projector:
    """An mtmd context for one text model; free it with `close()` before the model."""

    def __init__(self, path: str, pointer: mtmd.mtmd_context_p, model: LoadedModel) -> None:
        self.path = path
        self._pointer = pointer
        self._model = model
        self.marker: str = mtmd.mtmd_default_marker().decode()

    @classmethod
    def load(cls, path: str, model: LoadedModel, *, threads: int, use_gpu: bool, embeddings: bool) -> "Projector":
        """Raises `MultimodalProjectionCannotBeLoaded` with llama.cpp's likely reason."""
        if embeddings:
            raise MultimodalProjectionCannotBeLoaded(
                path, "a multimodal projection cannot be used in embeddings mode (images are for token generation)"
            )
        ensure_multimodal_logs_routed()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        pointer = mtmd.mtmd_init_from_file(path.encode(), model.pointer, params)
        if not pointer:
            raise MultimodalProjectionCannotBeLoaded(
                path,
                "llama.cpp refused it: not a multimodal projection GGUF, or made for a text model of another "
                f"embedding width (this model's n_embd is {model.n_embd}); see llama.cpp's log for its reason",
            )
        if not mtmd.mtmd_support_vision(pointer):
            mtmd.mtmd_free(pointer)
            raise MultimodalProjectionCannotBeLoaded(path, "the projection has no vision encoder (audio is not supported)")
        _logger.info("multimodal projection %s loaded", path)
        return cls(path, pointer, model)

    def tokenize(self, prompt: str, images: Sequence[DecodedImage], *, n_batch: int) -> MultimodalPrompt:
        """Chunks of `prompt`, whose markers stand for `images` in order (raises RequestRejected)."""
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * len(images))()
        try:
            for index, image in enumerate(images):
                pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
                bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
                if not bitmap:
                    raise RequestRejected(ImageDecodingFailed(f"llama.cpp refused image {index + 1} as a bitmap"))
                mtmd.mtmd_bitmap_set_id(bitmap, image.digest.hex().encode())
                bitmaps[index] = bitmap
            encoded = prompt.encode("utf-8")
            text = mtmd.mtmd_input_text()
            text.text = encoded
            text.text_len = len(encoded)
            text.add_special = True
            text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            status = mtmd.mtmd_tokenize(self._pointer, chunks, ctypes.byref(text), bitmaps, len(images))
        finally:
            for bitmap in bitmaps:
                if bitmap:
                    mtmd.mtmd_bitmap_free(bitmap)
        if status != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            if status == 1:
                raise RequestRejected(
                    ImageDecodingFailed(
                        f"the prompt's image markers ({self.marker!r}) do not match its {len(images)} images; "
                        "do not write the marker in message text"
                    )
                )
            raise RequestRejected(ImageDecodingFailed(f"llama.cpp could not preprocess the image (status {status})"))
        prompt_with_images = self._split(chunks, images)
        for image in prompt_with_images.images:
            if image.n_tokens > n_batch:
                prompt_with_images.close()
                raise RequestRejected(ImageExceedsBatchSize(image_tokens=image.n_tokens, n_batch=n_batch))
        if prompt_with_images.tokens and prompt_with_images.tokens[-1] < 0:
            prompt_with_images.close()
            raise RequestRejected(
                SamplerError("the prompt ends with an image: add text after it (or add_generation_prompt) to continue from")
            )
        return prompt_with_images

    def _split(self, chunks: mtmd.mtmd_input_chunks_p, images: Sequence[DecodedImage]) -> MultimodalPrompt:
        tokens: list[int] = []
        spans: list[ImageSpan] = []
        bos = self._model.bos_token
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                text_tokens = [pointer[position] for position in range(count.value)]
                # Templates that render `bos_token` themselves would otherwise get a second BOS.
                if not tokens and len(text_tokens) >= 2 and text_tokens[0] == text_tokens[1] == bos:
                    del text_tokens[0]
                tokens.extend(text_tokens)
                continue
            image = images[len(spans)]
            pseudo = image_pseudo_tokens(image.digest, mtmd.mtmd_input_chunk_get_n_pos(chunk))
            spans.append(ImageSpan(len(tokens), pseudo, mtmd.mtmd_input_chunk_get_n_tokens(chunk), chunk))
            tokens.extend(pseudo)
        return MultimodalPrompt(tokens, spans, chunks)

    def evaluate(self, image: ImageSpan, context: DecodingContext, sequence: int, position: int) -> int:
        """Encode `image` and decode its embeddings into `sequence` from `position`; 0 on success."""
        new_position = llama_cpp.llama_pos(0)
        return mtmd.mtmd_helper_eval_chunk_single(
            self._pointer,
            context.pointer,
            image.chunk,
            position,
            sequence,
            context.n_batch,
            False,
            ctypes.byref(new_position),
        )

    def close(self) -> None:
        if self._pointer:
            mtmd.mtmd_free(self._pointer)
            self._pointer = None
