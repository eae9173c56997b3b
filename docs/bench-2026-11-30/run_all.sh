#!/usr/bin/env bash
cd /work/main
L=~/.cache/edge-tree/llama.cpp
run() { name=$1; shift; echo "=== $name $(date +%T)" >> /tmp/bench/progress.log; "$@" > /tmp/bench/$name.txt 2> /tmp/bench/$name.err; echo "exit $? $(date +%T)" >> /tmp/bench/progress.log; }
run C  .venv/bin/edge-tree bench --pair C -t 2 -n 64 --llama-cpp $L --json /tmp/bench/C.json
run A  .venv/bin/edge-tree bench --pair A -t 2 -n 64 --llama-cpp $L --json /tmp/bench/A.json
run B  .venv/bin/edge-tree bench --pair B -t 2 -n 64 --llama-cpp $L --json /tmp/bench/B.json
run E  .venv/bin/edge-tree bench --pair E -t 2 -n 64 --modes ar,tree --json /tmp/bench/E.json
run Afull .venv/bin/edge-tree bench --pair A -t 2 -n 64 --modes ar,tree --draft-vocab full --json /tmp/bench/Afull.json
run Bfull .venv/bin/edge-tree bench --pair B -t 2 -n 64 --modes ar,tree --draft-vocab full --json /tmp/bench/Bfull.json
run Cfull .venv/bin/edge-tree bench --pair C -t 2 -n 64 --modes ar,tree --draft-vocab full --json /tmp/bench/Cfull.json
run serve .venv/bin/python scripts/bench_serve.py --llama-cpp $L
run host_after .venv/bin/python scripts/host_time.py --label after
run rpc .venv/bin/python scripts/bench_rpc.py --pair B --delays 1,5 --prompts 5 -n 64 -t 2 --llama-cpp $L --json /tmp/bench/rpc.json
echo "ALL DONE $(date +%T)" >> /tmp/bench/progress.log
