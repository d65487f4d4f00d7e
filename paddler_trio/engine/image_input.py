"""An image part of a conversation -> RGB pixels the projector can take.

Sources: `data:<mime>;base64,<payload>` URIs (what Paddler accepts) and, beyond Paddler, http(s)
URLs, fetched with a size limit and a timeout. Pillow decodes them (in a worker thread: it is
CPU work, and it never touches the llama.cpp context), the first frame of an animation is
taken, and an image with a side over `image_resize_to_fit` is scaled down to fit, keeping its
aspect ratio. Every failure raises `ImageRejected` with a message for the client
(`ImageDecodingFailed`).

Each image carries a digest of its pixels: the scheduler puts it into the slot's cached identity
so that a prompt cache never matches across two different images.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging

import attrs
import httpx
import trio
from PIL import Image, UnidentifiedImageError

_logger = logging.getLogger(__name__)

# An image's encoded bytes (a data URI's payload once decoded, or a fetched body).
MAX_IMAGE_BYTES = 20 * 2**20
# Pixels of a decoded image before resizing: refuses decompression bombs before they expand.
MAX_IMAGE_PIXELS = 50_000_000
# Whole fetch of an image URL (connect, headers, body), in seconds.
FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 5


class ImageRejected(Exception):
    """This image cannot be used; the message says why, for the client."""


@attrs.frozen
class DecodedImage:
    """RGB pixels, row-major, 3 bytes each; `digest` identifies the pixels."""

    width: int
    height: int
    rgb: bytes = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)


def _describe(url: str) -> str:
    return url if len(url) <= 80 else url[:60] + "..."


def _data_uri_bytes(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageRejected("malformed data URI: no comma between the header and the data")
    if not header.endswith(";base64"):
        raise ImageRejected("data URIs of images must be base64-encoded (data:<mime>;base64,<data>)")
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:
        raise ImageRejected(f"the image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRejected(f"the data URI is not valid base64: {error}") from error


async def _fetched_bytes(url: str, client: httpx.AsyncClient) -> bytes:
    try:
        with trio.fail_after(FETCH_TIMEOUT):
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ImageRejected(f"fetching the image {_describe(url)} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
                    raise ImageRejected(f"the image at {_describe(url)} is larger than {MAX_IMAGE_BYTES} bytes")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > MAX_IMAGE_BYTES:
                        raise ImageRejected(f"the image at {_describe(url)} is larger than {MAX_IMAGE_BYTES} bytes")
                return bytes(body)
    except trio.TooSlowError as error:
        raise ImageRejected(f"fetching the image {_describe(url)} took longer than {FETCH_TIMEOUT:g} s") from error
    except httpx.HTTPError as error:
        raise ImageRejected(f"cannot fetch the image {_describe(url)}: {error or type(error).__name__}") from error


def decode_image(encoded: bytes, max_side: int) -> DecodedImage:
    """Decode `encoded` with Pillow and scale it down to fit `max_side` (blocking CPU work)."""
    try:
        with Image.open(io.BytesIO(encoded)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageRejected(f"the image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} pixels are taken")
            image = opened.convert("RGB")  # the first frame of an animation; alpha dropped
    except ImageRejected:
        raise
    except UnidentifiedImageError as error:
        raise ImageRejected("the data is not an image in a format this agent can decode") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageRejected(f"the image cannot be decoded: {error}") from error
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    rgb = image.tobytes()
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode() + rgb).digest()
    return DecodedImage(width=image.width, height=image.height, rgb=rgb, digest=digest)


async def load_image(url: str, max_side: int, client: httpx.AsyncClient) -> DecodedImage:
    if url.startswith("data:"):
        encoded = _data_uri_bytes(url)
    elif url.startswith(("http://", "https://")):
        encoded = await _fetched_bytes(url, client)
    else:
        raise ImageRejected(f"unsupported image URL {_describe(url)}: give a data: URI or an http(s) URL")
    return await trio.to_thread.run_sync(decode_image, encoded, max_side)


async def load_images(urls: tuple[str, ...], max_side: int) -> tuple[DecodedImage, ...]:
    """The images of `urls`, in order; raises `ImageRejected` for the first that fails."""
    async with httpx.AsyncClient(follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=FETCH_TIMEOUT) as client:
        images = []
        for url in urls:
            try:
                images.append(await load_image(url, max_side, client))
            except ImageRejected as rejection:
                _logger.info("image refused: %s", rejection)
                raise
        return tuple(images)
