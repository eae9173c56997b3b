#!/usr/bin/env bash
# Build llama.cpp's own C++ tools from the llama.cpp source inside the llama-cpp-python sdist
# edge-tree runs on, so that benchmarks and tests use the same llama.cpp revision. Both builds
# have the RPC backend (-DGGML_RPC=ON).
#   scripts/build_llama_cpp.sh [OUT_DIR]
#       llama-completion, llama-speculative, llama-speculative-simple, llama-server (for
#       scripts/bench_serve.py) and ggml-rpc-server, with their shared libraries
#   scripts/build_llama_cpp.sh --rpc-server-only [OUT_DIR]
#       ggml-rpc-server alone, linked statically (a few minutes on 2 cores): what the RPC tests
#       start (edge_tree/bench/loopback.py)
# OUT_DIR defaults to ~/.cache/edge-tree/llama.cpp. The llama-cpp-python version is read from
# $PYTHON, else the repository's .venv, else python3, and its sdist downloaded with pip; on a
# machine without network, $LLAMA_CPP_SOURCE names llama.cpp's source instead (a folder, or a
# .tar.xz of one as scripts/device_pack.sh makes). $CMAKE_ARGS is passed on to cmake (for a GPU
# host's rpc-server: CMAKE_ARGS="-DGGML_CUDA=ON").
set -euo pipefail
rpc_server_only=0
if [ "${1:-}" = "--rpc-server-only" ]; then
    rpc_server_only=1
    shift
fi
out="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-tree/llama.cpp}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="${LLAMA_CPP_SOURCE:-}"
if [ -z "$src" ]; then
    python="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
    [ -x "$python" ] || python=python3
    version="$("$python" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')"
    "$python" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >/dev/null
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
elif [ -f "$src" ]; then
    mkdir "$work/src"
    tar -xJf "$src" -C "$work/src" --strip-components 1
    src="$work/src"
fi
mkdir -p "$out"
if [ "$rpc_server_only" = 1 ]; then
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DBUILD_SHARED_LIBS=OFF \
          -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
          -DLLAMA_BUILD_APP=OFF ${CMAKE_ARGS:-} >/dev/null
    cmake --build "$work/build" -j "$(nproc)" --target ggml-rpc-server >/dev/null
    cp "$work"/build/bin/ggml-rpc-server "$out"/
    echo "$out/ggml-rpc-server"
    exit 0
fi
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON ${CMAKE_ARGS:-} >/dev/null
tools="llama-completion llama-speculative llama-speculative-simple llama-server ggml-rpc-server"
# shellcheck disable=SC2086  # one word per tool
cmake --build "$work/build" -j "$(nproc)" --target $tools >/dev/null
for tool in $tools; do
    cp "$work/build/bin/$tool" "$out"/
done
cp -P "$work"/build/bin/*.so* "$out"/ 2>/dev/null || true
echo "$out"
