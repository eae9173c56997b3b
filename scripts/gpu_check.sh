#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build llama-cpp-python and llama.cpp's own tools with CUDA,
# then print edge-tree's bench beside llama.cpp's on the demo pairs, every layer offloaded, and
# many generations at once on the engine alone (scripts/bench_lanes.py).
#
#   scripts/gpu_check.sh [CUDA_ARCH]      (default: native; e.g. 90 for an H100/H200, 89 for an RTX 40xx)
#
# Run from the repository root after the README's first command (it made .venv). Needs nvcc and
# CMake; about 5 minutes of CUDA builds on 16 cores. Tables go to stdout, JSON to gpu-check/.
set -euo pipefail
arch="${1:-native}"
cuda="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CUDA_FA=OFF"
version="$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/edge-tree/llama.cpp-cuda"

echo "[gpu-check] llama-cpp-python $version with CUDA (arch $arch)" >&2
CMAKE_ARGS="$cuda" .venv/bin/pip install --quiet --force-reinstall --no-deps --no-cache-dir \
    "llama-cpp-python==$version"
echo "[gpu-check] llama.cpp's tools with CUDA into $tools" >&2
CMAKE_ARGS="$cuda" PATH="$PWD/.venv/bin:$PATH" scripts/build_llama_cpp.sh "$tools" >/dev/null

mkdir -p gpu-check
for pair in A B C; do
    .venv/bin/edge-tree bench --pair "$pair" -ngl 99 -ngld 99 -n 128 --modes ar,chain:8,tree \
        --llama-cpp "$tools" --json "gpu-check/pair$pair.json"
done
# many generations at once, engine alone: where a batch of many tokens is nearly free, one draft
# decode per level for every lane's tree and one target pass for all of them should pay
.venv/bin/python scripts/bench_lanes.py --pair A --lanes 1,4,8,16 -ngl 99 -ngld 99 | tee gpu-check/lanes.txt
