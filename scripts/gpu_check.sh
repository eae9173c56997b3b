#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build llama.cpp with CUDA (the revision llama-cpp-python
# vendors: its library for edge-tree, through LLAMA_CPP_LIB_PATH, and its own tools), then run
# edge-tree beside llama.cpp with every layer offloaded.
#
#   scripts/gpu_check.sh [run [CHECK ...]]
#       With network, after the README's first command made .venv (llama.cpp's source comes
#       through pip).
#   scripts/gpu_check.sh stage
#       Without network (a lent device machine): after scripts/device_pack.sh filled .device/1..K
#       here, one call per folder carries it and runs `stage`, which keeps what came in
#       $STAGE (default /tmp/edge-device) and, once the source is there, starts the CUDA build in
#       the background; then one call runs `run`, which waits for the build, joins the models,
#       installs the packed wheels and this checkout into $STAGE/site, and runs the checks.
#
# CHECK (default: all, in this order; each writes as it goes, so a run cut short keeps the rest):
#   smoke   edge-tree generate on the demo pair, tree mode, every layer offloaded
#   pairs   edge-tree bench --pair A, B, C against llama-completion / llama-speculative
#   smollm2 the same on SmolLM2 (F32 target, Q4_0 draft made from it) where its file was packed
#   lanes   many generations at once on the engine alone (scripts/bench_lanes.py)
#   serve   scripts/bench_serve.py --clients 1,2,4,8,16 against llama-server -np N, plain and -md
# CUDA_ARCH: the build's CUDA architectures (default native; 90 for an H100 / H200, 89 for an
# RTX 40xx; offline, give it to `stage`, where the build starts). THREADS: CPU threads for both sides (default 8). Tables to stdout, JSON and logs to
# $OUT (the device tool's folder) or gpu-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
stage_dir="${STAGE:-/tmp/edge-device}"
out="${OUT:-$PWD/gpu-check}"
threads="${THREADS:-8}"
cmake_args="${LLAMA_CMAKE_ARGS--DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native} -DGGML_CUDA_FA=OFF}"
say() { echo "[gpu-check] $*" >&2; }

stage() {
    mkdir -p "$stage_dir/parts"
    for folder in .device/*/; do
        [ -d "$folder" ] && cp "$folder"* "$stage_dir/parts/"
    done
    if [ -f "$stage_dir/parts/base.tar" ] && [ ! -e "$stage_dir/build.log" ]; then
        mkdir -p "$stage_dir/base"
        tar -xf "$stage_dir/parts/base.tar" -C "$stage_dir/base"
        say "building llama.cpp ($cmake_args) in the background: $stage_dir/build.log"
        LLAMA_CPP_SOURCE="$stage_dir/base/llama.cpp.tar.xz" CMAKE_ARGS="$cmake_args" setsid nohup bash -c \
            'scripts/build_llama_cpp.sh "$1"; echo $? > "$1.rc"' _ "$stage_dir/llama.cpp" \
            > "$stage_dir/build.log" 2>&1 < /dev/null &
    fi
    ls "$stage_dir/parts"
}

# Offline: the staged build, models and wheels; sets tools, python and the environment.
use_stage() {
    tools="$stage_dir/llama.cpp"
    local waited=0
    while [ ! -f "$tools.rc" ]; do
        [ -e "$stage_dir/build.log" ] || { say "no build started: run stage with .device/1 first"; exit 1; }
        [ "$waited" -lt 900 ] || { say "the build did not end in 15 minutes"; exit 1; }
        sleep 5; waited=$(( waited + 5 ))
    done
    [ "$(cat "$tools.rc")" = 0 ] || { tail -20 "$stage_dir/build.log" >&2; say "the build failed"; exit 1; }
    if [ ! -d "$stage_dir/models" ]; then
        local parts k; parts="$(cat "$stage_dir/parts/models.parts")"
        for k in $(seq 1 "$parts"); do
            [ -f "$stage_dir/parts/models.part-$k" ] || { say "models.part-$k never came: stage .device/$k"; exit 1; }
        done
        for k in $(seq 1 "$parts"); do cat "$stage_dir/parts/models.part-$k"; done > "$stage_dir/models.tar"
        if ! (cd "$stage_dir" && sha256sum --quiet -c parts/models.sha256); then
            rm -f "$stage_dir/models.tar"; say "the models' pieces do not add up: pack and stage them again"; exit 1
        fi
        rm -rf "$stage_dir/models.new" && mkdir "$stage_dir/models.new"
        tar -xf "$stage_dir/models.tar" -C "$stage_dir/models.new"
        rm "$stage_dir/models.tar" && mv "$stage_dir/models.new" "$stage_dir/models"
    fi
    python=python3
    local site="$stage_dir/site"
    if [ ! -d "$site" ]; then
        rm -rf "$site.new"
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site.new" \
            "$stage_dir"/base/wheels/*.whl "$stage_dir"/models/*.whl
        mv "$site.new" "$site"
    fi
    # this checkout, installed afresh on every run (its console script: `edge-tree`)
    "$python" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$site/edge" .
    export PYTHONPATH="$site/edge:$site:$stage_dir/base/python${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$site/edge/bin:$PATH"
    smollm2_q4_1="$(ls "$stage_dir"/models/*.gguf 2>/dev/null | head -1 || true)"
}

# Online: .venv, and llama.cpp built from the sdist pip downloads (once; CUDA_ARCH picks the folder).
use_venv() {
    tools="${XDG_CACHE_HOME:-$HOME/.cache}/edge-tree/llama.cpp-cuda-${CUDA_ARCH:-native}"
    python=.venv/bin/python
    if [ ! -x "$tools/llama-server" ]; then
        say "llama.cpp with CUDA into $tools"
        CMAKE_ARGS="$cmake_args" PATH="$PWD/.venv/bin:$PATH" scripts/build_llama_cpp.sh "$tools" >/dev/null
    fi
    export PATH="$PWD/.venv/bin:$PATH"
    smollm2_q4_1="$(ls models/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null || true)"
}

check_smoke() {
    edge-tree generate -ngl 99 -ngld 99 -t "$threads" -n 64 --mode tree --stats "The capital of France is" \
        2>&1 | tee "$out/smoke.txt"
}

# edge-tree bench with every layer offloaded, beside llama.cpp's tools from the same build
bench_offloaded() {
    edge-tree bench -ngl 99 -ngld 99 -t "$threads" -n 128 --modes ar,chain:8,tree --llama-cpp "$tools" -q "$@"
}

check_pairs() {
    for pair in A B C; do
        bench_offloaded --pair "$pair" --json "$out/pair$pair.json" | tee -a "$out/pairs.txt"
    done
}

check_smollm2() {
    [ -n "$smollm2_q4_1" ] || { say "smollm2: no SmolLM2 file packed (device_pack.sh --smollm2 FILE)"; return; }
    local dir; dir="$(dirname "$smollm2_q4_1")"
    local f32="$dir/SmolLM2-135M-Instruct.F32.gguf" q4_0="$dir/SmolLM2-135M-Instruct.Q4_0.gguf"
    [ -f "$f32" ] || "$python" -c "import edge_tree, sys; from edge_tree.llamacpp.demo import dequantize_to_f32; \
dequantize_to_f32(sys.argv[1], sys.argv[2])" "$smollm2_q4_1" "$f32"
    [ -f "$q4_0" ] || edge-tree models make-draft "$f32" --quant Q4_0 -o "$q4_0"
    bench_offloaded -m "$f32" -md "$q4_0" --json "$out/smollm2.json" | tee "$out/smollm2.txt"
}

check_lanes() {
    # one draft decode per level for every lane's tree and one target pass for all of them: where
    # a batch of many tokens is nearly free, this is where it should pay
    "$python" scripts/bench_lanes.py --pair A --lanes 1,4,8,16 -ngl 99 -ngld 99 -t "$threads" \
        | tee "$out/lanes.txt"
}

check_serve() {
    "$python" scripts/bench_serve.py --clients 1,2,4,8,16 --pair A -ngl 99 -ngld 99 -t "$threads" \
        --llama-cpp "$tools" --json "$out/serve_pair_A.json" | tee "$out/serve.txt"
}

all_checks="smoke pairs smollm2 lanes serve"
verb="${1:-run}"
[ $# -eq 0 ] || shift
checks=("$@")
[ ${#checks[@]} -gt 0 ] || read -ra checks <<< "$all_checks"
usage="gpu_check.sh: stage, or run [CHECK ...] with CHECK among: $all_checks"
case "$verb" in
    stage) stage; exit 0 ;;
    run) for check in "${checks[@]}"; do
             [[ " $all_checks " == *" $check "* ]] || { echo "$usage" >&2; exit 2; }
         done ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
mkdir -p "$out"
if [ -d "$stage_dir/parts" ]; then use_stage; else use_venv; fi
# llama.cpp's libraries find each other through the loader's path (their RUNPATH names the build
# folder, gone by now)
export LLAMA_CPP_LIB_PATH="$tools" LD_LIBRARY_PATH="$tools${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "llama.cpp: $tools; python: $python; figures: $out"
for check in "${checks[@]}"; do
    say "check: $check"
    "check_$check"
done
