"""Fixtures for image tests: the kit's tiny random-weight projector, written once per session for
Qwen2.5-Coder 0.5B (n_embd 896) and for a width no test model has, and small PNG images."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests.multimodal.tiny_mmproj import write_tiny_mmproj

QWEN_N_EMBD = 896
# What the kit's defaults give per image: (image_size 112 / patch_size 14) ** 2.
IMAGE_TOKENS = 64


@pytest.fixture(scope="session")
def mmproj_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmproj") / "tiny-mmproj-896.gguf"
    write_tiny_mmproj(str(path), n_embd=QWEN_N_EMBD)
    return path


@pytest.fixture(scope="session")
def second_mmproj_path(tmp_path_factory) -> Path:
    """Another projector for the same model (other random weights)."""
    path = tmp_path_factory.mktemp("mmproj") / "tiny-mmproj-896-seed1.gguf"
    write_tiny_mmproj(str(path), n_embd=QWEN_N_EMBD, seed=1)
    return path


@pytest.fixture(scope="session")
def wrong_width_mmproj_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmproj") / "tiny-mmproj-1024.gguf"
    write_tiny_mmproj(str(path), n_embd=1024)
    return path


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(encoded: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(encoded).decode()}"
