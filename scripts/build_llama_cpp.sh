#!/usr/bin/env bash
# Build llama.cpp's own C++ tools (llama-completion, llama-speculative, llama-speculative-simple,
# and llama-server for scripts/bench_serve.py) from the llama.cpp source inside the
# llama-cpp-python sdist edge-tree runs on, so that the benchmarks compare both on the same
# llama.cpp revision.
#   scripts/build_llama_cpp.sh [OUT_DIR]    (default: ~/.cache/edge-tree/llama.cpp)
set -euo pipefail
out="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-tree/llama.cpp}"
version="$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >/dev/null
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
cmake --build "$work/build" -j "$(nproc)" \
      --target llama-completion llama-speculative llama-speculative-simple llama-server >/dev/null
mkdir -p "$out"
cp "$work"/build/bin/llama-completion "$work"/build/bin/llama-speculative \
   "$work"/build/bin/llama-speculative-simple "$work"/build/bin/llama-server "$out"/
cp -P "$work"/build/bin/*.so* "$out"/ 2>/dev/null || true
echo "$out"
