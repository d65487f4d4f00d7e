#!/usr/bin/env python3
"""Write a tiny RANDOM-WEIGHT vision projector ("mmproj") GGUF for llama.cpp.

Copied from the shared multimodal kit (shared/mm/make_tiny_mmproj.py, see its README for how it
was verified against llama-server and llama-cpp-python), so the test suite does not depend on
files outside the repository; `write_tiny_mmproj` was added for the tests' fixtures.

The file is a CLIP-style ViT encoder plus a LLaVA-1.5 style "mlp" projector
(mm.0 -> GELU -> mm.2), laid out the way llama.cpp's mtmd/CLIP loader expects
(tools/mtmd/clip-impl.h: KEY_* and TN_* names). Weights are random: the image
embeddings carry no meaning. The point is to exercise multimodal plumbing
(--mmproj loading, image decoding/preprocessing, image tokens in the prompt,
generation afterwards) without downloading a real projector.

Usage:
    python make_tiny_mmproj.py OUT.gguf --n-embd 896 [--seed 0]

--n-embd must equal the text model's embedding width (896 for
Qwen2.5-Coder-0.5B-Instruct); llama.cpp refuses a mismatch.

Image tokens per image = (image_size / patch_size) ** 2; with the defaults
(112 / 14) that is 64.

Requires: pip install gguf numpy
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from gguf import GGUFWriter


# OpenAI CLIP normalisation constants (what LLaVA-1.5's vision tower uses).
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Write a tiny random-weight CLIP/LLaVA-style mmproj GGUF for llama.cpp.")
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--n-embd", type=int, required=True,
                   help="text model embedding width (Qwen2.5-Coder-0.5B: 896)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    p.add_argument("--image-size", type=int, default=112,
                   help="square input resolution (default 112)")
    p.add_argument("--patch-size", type=int, default=14, help="ViT patch size (default 14)")
    p.add_argument("--hidden", type=int, default=128, help="ViT width (default 128)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-ff", type=int, default=None,
                   help="ViT MLP width (default 4*hidden; must differ from --hidden)")
    p.add_argument("--n-layer", type=int, default=2,
                   help="ViT blocks (default 2; llava runs n_layer-1 of them)")
    p.add_argument("--mm-hidden", type=int, default=None,
                   help="projector inner width, mm.0 output (default = --n-embd, as LLaVA-1.5)")
    p.add_argument("--dtype", choices=("f16", "f32"), default="f16",
                   help="type of the 2-D/4-D weights; norms, biases and embeddings stay f32")
    p.add_argument("--std", type=float, default=0.02, help="stddev of random weights (default 0.02)")
    a = p.parse_args(argv)

    if a.n_ff is None:
        a.n_ff = 4 * a.hidden
    if a.mm_hidden is None:
        a.mm_hidden = a.n_embd
    if a.n_embd <= 0:
        p.error("--n-embd must be positive")
    if a.image_size % a.patch_size != 0:
        p.error("--image-size must be a multiple of --patch-size")
    if a.hidden % a.n_head != 0:
        p.error("--hidden must be a multiple of --n-head")
    if a.n_ff == a.hidden:
        # clip.cpp treats ffn_down.ne[0] == n_embd as the legacy swapped up/down layout
        p.error("--n-ff must differ from --hidden")
    if a.n_layer < 1:
        p.error("--n-layer must be >= 1")
    return a


def build(a: argparse.Namespace) -> dict[str, np.ndarray]:
    """Return {tensor name: numpy array}. numpy shape = reversed ggml ne."""
    rng = np.random.default_rng(a.seed)
    wdt = np.float16 if a.dtype == "f16" else np.float32
    H, F, P = a.hidden, a.n_ff, a.patch_size
    n_patches = (a.image_size // P) ** 2
    n_pos = n_patches + 1  # + class token

    def w(*shape: int) -> np.ndarray:  # matmul / conv weight
        return (rng.standard_normal(shape) * a.std).astype(wdt)

    def b(n: int) -> np.ndarray:  # bias
        return (rng.standard_normal(n) * a.std).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    t: dict[str, np.ndarray] = {}
    # patch embedding: conv2d kernel, ggml ne = [P, P, 3, H]
    t["v.patch_embd.weight"] = w(H, 3, P, P)
    t["v.class_embd"] = (rng.standard_normal(H) * a.std).astype(np.float32)
    # ggml ne = [H, n_pos]
    t["v.position_embd.weight"] = (rng.standard_normal((n_pos, H)) * a.std).astype(np.float32)
    t["v.pre_ln.weight"] = ones(H)
    t["v.pre_ln.bias"] = zeros(H)

    for i in range(a.n_layer):
        pre = f"v.blk.{i}"
        t[f"{pre}.ln1.weight"] = ones(H)
        t[f"{pre}.ln1.bias"] = zeros(H)
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[f"{pre}.{name}.weight"] = w(H, H)
            t[f"{pre}.{name}.bias"] = b(H)
        t[f"{pre}.ln2.weight"] = ones(H)
        t[f"{pre}.ln2.bias"] = zeros(H)
        # linear weight numpy (out, in) -> ggml ne = [in, out]
        t[f"{pre}.ffn_up.weight"] = w(F, H)     # H -> F (fc1)
        t[f"{pre}.ffn_up.bias"] = b(F)
        t[f"{pre}.ffn_down.weight"] = w(H, F)   # F -> H (fc2)
        t[f"{pre}.ffn_down.bias"] = b(H)

    # LLaVA-1.5 projector: mm.0 (H -> mm_hidden), GELU, mm.2 (mm_hidden -> n_embd)
    t["mm.0.weight"] = w(a.mm_hidden, H)
    t["mm.0.bias"] = b(a.mm_hidden)
    t["mm.2.weight"] = w(a.n_embd, a.mm_hidden)
    t["mm.2.bias"] = b(a.n_embd)
    return t


def write(a: argparse.Namespace, tensors: dict[str, np.ndarray]) -> None:
    gw = GGUFWriter(a.out, arch="clip")
    gw.add_string("general.name", "tiny-random-mmproj")
    gw.add_string("general.description",
                  f"random-weight CLIP/LLaVA mlp projector for testing (seed {a.seed}); meaningless output")
    gw.add_uint32("general.file_type", 1 if a.dtype == "f16" else 0)

    gw.add_bool("clip.has_vision_encoder", True)
    gw.add_bool("clip.has_audio_encoder", False)
    gw.add_string("clip.projector_type", "mlp")
    gw.add_bool("clip.use_gelu", False)  # CLIP ViT-L uses quick_gelu (the default when false)

    gw.add_uint32("clip.vision.image_size", a.image_size)
    gw.add_uint32("clip.vision.patch_size", a.patch_size)
    gw.add_uint32("clip.vision.embedding_length", a.hidden)
    gw.add_uint32("clip.vision.feed_forward_length", a.n_ff)
    gw.add_uint32("clip.vision.block_count", a.n_layer)
    gw.add_uint32("clip.vision.projection_dim", a.n_embd)
    gw.add_uint32("clip.vision.attention.head_count", a.n_head)
    gw.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    gw.add_array("clip.vision.image_mean", CLIP_IMAGE_MEAN)
    gw.add_array("clip.vision.image_std", CLIP_IMAGE_STD)

    for name, arr in tensors.items():
        gw.add_tensor(name, arr)

    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()


def write_tiny_mmproj(out: str, *, n_embd: int, seed: int = 0) -> None:
    """Write the kit's default projector (64 image tokens per image) for a model of width `n_embd`."""
    a = parse_args([out, "--n-embd", str(n_embd), "--seed", str(seed)])
    write(a, build(a))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tensors = build(a)
    write(a, tensors)
    n_params = sum(int(x.size) for x in tensors.values())
    n_tok = (a.image_size // a.patch_size) ** 2
    print(f"wrote {a.out}: {len(tensors)} tensors, {n_params} params, "
          f"projector=mlp, n_embd={a.n_embd}, image {a.image_size}px/{a.patch_size} "
          f"-> {n_tok} image tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
