# syntax=docker/dockerfile:1
# The paddler-trio image: the one-file `paddler` binary (`make binary`: PyInstaller, paddler.spec)
# on a slim base. One image for every role: `paddler balancer ...`, `paddler agent ...`.
#
#   docker build -t paddler-trio .
#
# The binary's llama.cpp is built for x86-64-v3 (AVX2; Makefile, PORTABLE_CMAKE_ARGS), so the image
# runs on any x86-64 server CPU since 2013. GPU agents (deploy/kubernetes/overlays/gpu) need
# llama.cpp built with CUDA, on NVIDIA's images:
#
#   docker build -t paddler-trio:latest-cuda \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUN_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg BUILD_PACKAGES="build-essential cmake python3 python3-venv python3-dev" \
#     --build-arg LLAMA_EXTRA_CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" .
#
# (the driver's libcuda comes from the node at run time, through the NVIDIA container toolkit).
ARG BUILD_IMAGE=python:3.11-slim-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG BUILD_PACKAGES="build-essential cmake"
ARG LLAMA_EXTRA_CMAKE_ARGS=""
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What `make binary` reads: the package, its metadata (pyproject names README.md) and the spec.
COPY Makefile pyproject.toml README.md paddler.spec ./
COPY paddler_trio ./paddler_trio
RUN make binary PYTHON=python3 LLAMA_EXTRA_CMAKE_ARGS="${LLAMA_EXTRA_CMAKE_ARGS}" \
    && ./dist/paddler --version

FROM ${RUN_IMAGE}
# libgomp1: llama.cpp's OpenMP threads; ca-certificates: agents download models over HTTPS.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --home-dir /home/paddler paddler \
    && install -d -o paddler -g paddler /var/cache/paddler
COPY --from=build /src/dist/paddler /usr/local/bin/paddler
# Downloaded models (agents); mount a volume here to keep them across restarts.
ENV PADDLER_CACHE_DIR=/var/cache/paddler
USER 10001
# Balancer: management 8060, inference 8061, OpenAI-compatible 8070 (when their flags bind them).
EXPOSE 8060 8061 8070
ENTRYPOINT ["/usr/local/bin/paddler"]
CMD ["--help"]
