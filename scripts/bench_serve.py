"""Decode speed through `edge-tree serve`, against `edge-tree generate` and llama.cpp's `llama-server`.

    python scripts/bench_serve.py [-m T -md D] [-n 64] [-t 2] [--prompts 10] [--llama-cpp DIR]

Default pair B: the demo F32 target and the Q4_0 draft requantized from it. Greedy, the bench's
default prompts, one streaming client, one request at a time. Decode tokens/s is:
- edge-tree serve: (completion tokens - 1) / (time of the last streamed text - time of the first);
- edge-tree generate: the same, from the times its standard output receives text (one process per
  prompt, tokens from --stats-json);
- llama-server -m T -md D --spec-type draft-simple (its own speculative decoding, default settings
  otherwise; DIR holds the binary as built by scripts/build_llama_cpp.sh): its
  `timings.predicted_per_second` on the last chunk.
Prints one line per prompt and the ratios of the totals.

    python scripts/bench_serve.py --clients 1,2,4,8,16 --llama-cpp DIR [-m T -md D] [--pair A|B]

Many clients at once: for each count N, `edge-tree serve -np N` against `llama-server -np N`
plain and with `-md D --spec-type draft-simple` (its own speculative decoding: `-md` alone loads
the draft and decodes plainly), the same files, threads and context per
slot (-c N x --ctx-size on each), both at their defaults otherwise (llama.cpp's weight repacking
on). N streaming clients each send --per-client requests in turn (greedy, different prompts);
aggregate decode tokens/s = the tokens each server counted / the wall time of the whole load,
with p50/p99 time to first token; --system T puts one text of ~T tokens before every prompt (an
agent's parallel calls under one system prompt). Then one chat client: a first turn over a --history-token
history, and the second turn over that history and the reply: time to first token of each.
--json FILE keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edge_tree.bench.prompts import default_prompts
from edge_tree.errors import user_errors
from edge_tree.llamacpp.demo import ensure_demo

READY_TIMEOUT_S = 300


def main() -> None:
    args = parse_args()
    prompts = [p["prompt"] for p in default_prompts()][:args.prompts]
    pair = ensure_demo() if args.target is None else None
    target = args.target or str(pair.target)
    draft = args.draft or str((pair.draft if args.pair == "A" else pair.draft_q4_0) if pair else "")
    if args.clients:
        clients_bench(args, target, draft, prompts)
        return
    load = ["-m", target, "-md", draft, "-t", str(args.threads), "-c", str(args.ctx_size), *offload(args)]
    rows = {"serve": [], "generate": [], "llama-server": []}
    with Server([edge_tree_exe(), "serve", *load, "--port", "{port}"]) as url:
        stream_edge_tree(url, prompts[0], 8)  # warm-up
        rows["serve"] = [stream_edge_tree(url, p, args.max_tokens) for p in prompts]
    rows["generate"] = [generate(load, p, args.max_tokens) for p in prompts]
    if args.llama_cpp:
        binary = Path(args.llama_cpp) / "llama-server"
        command = [str(binary), "-m", target, *draft_args(draft), "-t", str(args.threads), "-td", str(args.threads),
                   "-c", str(args.ctx_size), "-np", "1", "--host", "127.0.0.1", "--port", "{port}", *offload(args)]
        with Server(command, library_dir=binary.parent) as url:
            stream_llama_server(url, prompts[0], 8)
            rows["llama-server"] = [stream_llama_server(url, p, args.max_tokens) for p in prompts]
    report(rows, prompts)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--target", help="target GGUF (default: the demo F32 target)")
    ap.add_argument("-md", "--draft", help="draft GGUF (default: the demo Q4_0 draft, pair B)")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="target layers on the GPU, for every server (99: all)")
    ap.add_argument("-ngld", "--draft-n-gpu-layers", type=int, default=0,
                    help="draft layers on the GPU, for every server (99: all)")
    ap.add_argument("--prompts", type=int, default=len(default_prompts()), help="the first N default prompts")
    ap.add_argument("--llama-cpp", help="folder with llama.cpp's llama-server (scripts/build_llama_cpp.sh)")
    ap.add_argument("--pair", choices=("A", "B"), default="B",
                    help="with the demo target: draft A (the Q4_K_M demo file) or B (Q4_0 from the target)")
    ap.add_argument("--clients", help="many clients at once: counts, e.g. 1,2,4,8,16")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends in turn")
    ap.add_argument("--history", type=int, default=1500, help="tokens of the chat history (0: no chat test)")
    ap.add_argument("--system", type=int, default=0,
                    help="with --clients: every request begins with one text of about this many tokens "
                         "(a system prompt that an agent's parallel calls share; 0: none)")
    ap.add_argument("--json", help="write the figures to this file")
    return ap.parse_args()


# -- many clients at once ----------------------------------------------------------------------

def clients_bench(args, target: str, draft: str, prompts: list[str]) -> None:
    if not args.llama_cpp:
        raise SystemExit("--clients compares with llama-server: pass --llama-cpp DIR")
    figures = {"target": target, "draft": draft, "threads": args.threads, "ctx_per_slot": args.ctx_size,
               "max_tokens": args.max_tokens, "per_client": args.per_client, "system_tokens": args.system,
               "rows": []}
    system = long_text(prompts, args.system) + "\n" if args.system else ""
    asked = [system + prompt for prompt in prompts]
    for n in [int(count) for count in args.clients.split(",")]:
        for name, (command, library_dir) in server_commands(args, target, draft, n, args.ctx_size * n).items():
            server = Server(command, library_dir)
            with server as url:
                completion(url, prompts[0], 8)  # warm-up
                row = {"server": name, "clients": n,
                       **many_clients(url, n, asked, args.max_tokens, args.per_client),
                       "peak_rss_mib": server.peak_rss_mib()}
            figures["rows"].append(row)
            print(f"{n:3d} clients  {name:18} {row['tokens_per_s']:8.2f} tok/s  ttft p50 "
                  f"{row['ttft_p50_s']:.3f} s  p99 {row['ttft_p99_s']:.3f} s  peak RSS "
                  f"{row['peak_rss_mib'] or 0:.0f} MiB", flush=True)
    if args.history:
        figures["chat"] = {}
        commands = server_commands(args, target, draft, 1, max(args.ctx_size, 2 * args.history + 512))
        for name in ("edge-tree", "llama-server -md"):
            with Server(*commands[name]) as url:
                completion(url, prompts[0], 8)  # warm-up
                figures["chat"][name] = second_turn(url, prompts, args.history)
            print(f"chat {name:18} first turn ttft {figures['chat'][name]['first_ttft_s']:.3f} s, second "
                  f"{figures['chat'][name]['second_ttft_s']:.3f} s", flush=True)
    report_clients(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def server_commands(args, target: str, draft: str, n: int, ctx: int) -> dict[str, tuple[list[str], Path | None]]:
    """Each server with n slots and a context of ctx tokens in all: (command, library folder)."""
    binary, threads = Path(args.llama_cpp) / "llama-server", str(args.threads)
    llama = [str(binary), "-m", target, "-t", threads, "-c", str(ctx), "-np", str(n), "--host", "127.0.0.1",
             "--port", "{port}", "-ngl", str(args.n_gpu_layers)]
    return {"edge-tree": ([edge_tree_exe(), "serve", "-m", target, "-md", draft, "-t", threads, "-c", str(ctx),
                           "-np", str(n), "--queue", "256", "--port", "{port}", *offload(args)], None),
            "llama-server": (llama, binary.parent),
            "llama-server -md": (llama + [*draft_args(draft), "-td", threads,
                                          "-ngld", str(args.draft_n_gpu_layers)], binary.parent)}


def draft_args(draft: str) -> list[str]:
    """llama-server's own speculative decoding with a draft model. In the llama.cpp that
    llama-cpp-python 0.3.36 vendors, `--spec-type` chooses how a server speculates, and `-md`
    alone loads the draft, finds no type asked for and decodes plainly (its log: "no
    implementations specified for speculative decoding"); `draft-simple` is the draft model's."""
    return ["-md", draft, "--spec-type", "draft-simple"]


def offload(args) -> list[str]:
    """The layers each model puts on the GPU, as both servers name the options."""
    return ["-ngl", str(args.n_gpu_layers), "-ngld", str(args.draft_n_gpu_layers)]


def completion(url: str, prompt: str, max_tokens: int) -> dict:
    """One streaming request through the OpenAI route both servers offer (completions: the demo
    target has no chat template): time to the first text, the text, and the completion tokens
    the server counted."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent, first, text, tokens = time.perf_counter(), None, "", 0
    for at, event in server_events(url + "/v1/completions", body):
        for choice in event.get("choices") or []:
            piece = choice.get("text")
            if piece:
                first = first or at
                text += piece
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    return {"ttft_s": (first or time.perf_counter()) - sent, "text": text, "tokens": tokens}


def many_clients(url: str, n: int, prompts: list[str], max_tokens: int, per_client: int) -> dict:
    """n clients at once, each sending per_client requests in turn (client k starts at prompt k)."""
    replies: list[dict] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for r in range(per_client):
            prompt = prompts[(k + r * n) % len(prompts)]
            reply = completion(url, prompt, max_tokens)
            with lock:
                replies.append(reply)

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    ttfts = sorted(reply["ttft_s"] for reply in replies)
    tokens = sum(reply["tokens"] for reply in replies)
    return {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": tokens / wall,
            "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]}


def second_turn(url: str, prompts: list[str], history_tokens: int) -> dict:
    """A conversation over a long history (about history_tokens tokens, ~4 characters each),
    then its next turn (the history, the reply, a new question): the second should reuse the
    first's cache."""
    prompt = long_text(prompts, history_tokens) + "\nQuestion: what was that about?\nAnswer:"
    first = completion(url, prompt, 32)
    second = completion(url, prompt + first["text"] + "\nQuestion: and then?\nAnswer:", 32)
    return {"first_ttft_s": round(first["ttft_s"], 4), "second_ttft_s": round(second["ttft_s"], 4),
            "ratio": round(second["ttft_s"] / first["ttft_s"], 4)}


def long_text(prompts: list[str], tokens: int) -> str:
    """About `tokens` tokens of text (~4 characters each): the prompts, one after another."""
    text, k = "", 0
    while len(text) < 4 * tokens:
        text += prompts[k % len(prompts)] + " "
        k += 1
    return text


def report_clients(figures: dict) -> None:
    by = {(row["clients"], row["server"]): row for row in figures["rows"]}
    print(f"\n{'clients':>7} {'edge-tree':>10} {'llama-server':>13} {'llama -md':>10} {'ratio (best)':>13} "
          f"{'RSS / llama -md':>16}")
    for n in sorted({row["clients"] for row in figures["rows"]}):
        ours, plain, spec = by[(n, "edge-tree")], by[(n, "llama-server")], by[(n, "llama-server -md")]
        best = max(plain["tokens_per_s"], spec["tokens_per_s"])
        memory = (ours["peak_rss_mib"] or 0) / (spec["peak_rss_mib"] or float("inf"))
        print(f"{n:7d} {ours['tokens_per_s']:10.2f} {plain['tokens_per_s']:13.2f} {spec['tokens_per_s']:10.2f} "
              f"{ours['tokens_per_s'] / best:12.3f}x {memory:15.3f}x")
    for name, chat in figures.get("chat", {}).items():
        print(f"chat second turn / first turn, time to first token: {name} {chat['ratio']:.3f}")


def edge_tree_exe() -> str:
    beside = Path(sys.executable).parent / "edge-tree"
    return str(beside) if beside.exists() else shutil.which("edge-tree") or "edge-tree"


class Server:
    """A server process on a free loopback port ("{port}" in the command), ready when /health
    answers 200; stopped on exit."""

    def __init__(self, command: list[str], library_dir: Path | None = None):
        self.port = free_port()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = dict(os.environ)
        if library_dir:  # llama.cpp's shared libraries sit beside its binaries
            self.env["LD_LIBRARY_PATH"] = f"{library_dir}{os.pathsep}{self.env.get('LD_LIBRARY_PATH', '')}"

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory so far (Linux: VmHWM)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return kib / 1024 if kib else None

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit(f"{self.command[0]} did not start (exit {self.proc.poll()})")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_speed(tokens: int, first: float, last: float) -> float | None:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else None


def server_events(url: str, body: dict):
    """(arrival time, JSON event) of each server-sent event of a streaming POST."""
    with httpx.stream("POST", url, json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield time.perf_counter(), json.loads(line[6:])


def stream_edge_tree(url: str, prompt: str, max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    times, text, tokens, engine_speed = [], "", 0, None
    for at, event in server_events(url + "/v1/completions", body):
        if event["choices"] and event["choices"][0]["text"]:
            times.append(at)
            text += event["choices"][0]["text"]
        if "speculation" in event:  # the last chunk with a finish_reason
            engine_speed = event["speculation"]["tokens_per_s"]
        if event.get("usage"):  # include_usage: the chunk after it
            tokens = event["usage"]["completion_tokens"]
    return {"tokens": tokens, "tokens_per_s": decode_speed(tokens, times[0], times[-1]),
            "engine_tokens_per_s": engine_speed, "text": text}


def stream_llama_server(url: str, prompt: str, max_tokens: int) -> dict:
    body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "stream": True, "cache_prompt": False}
    text, timings = "", {}
    for _, event in server_events(url + "/completion", body):
        text += event.get("content", "")
        timings = event.get("timings", timings)
    return {"tokens": timings.get("predicted_n", 0), "tokens_per_s": timings.get("predicted_per_second"),
            "text": text}


def generate(load: list[str], prompt: str, max_tokens: int) -> dict:
    """`edge-tree generate`, timing the text as it reaches standard output."""
    with tempfile.TemporaryDirectory() as folder:
        stats_file = Path(folder) / "stats.json"
        proc = subprocess.Popen([edge_tree_exe(), "generate", *load, "-n", str(max_tokens), "--temperature", "0",
                                 "--stats-json", str(stats_file), prompt],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        times, out = [], b""
        while chunk := os.read(proc.stdout.fileno(), 4096):
            if chunk.strip(b"\n") or not out:  # the newline generate prints after the text is no token
                times.append(time.perf_counter())
            out += chunk
        if proc.wait() != 0:
            raise SystemExit(f"edge-tree generate failed on {prompt[:30]!r}")
        tokens = json.loads(stats_file.read_text())["tokens"]
    return {"tokens": tokens, "tokens_per_s": decode_speed(tokens, times[0], times[-1]),
            "text": out.decode("utf-8", "replace")[:-1]}


def report(rows: dict, prompts: list[str]) -> None:
    names = [name for name in rows if rows[name]]
    print(f"{'prompt':28}" + "".join(f"{name:>16}" for name in names) + "   same text (serve = generate)")
    for i, prompt in enumerate(prompts):
        cells = "".join(f"{rows[n][i]['tokens_per_s'] or 0:16.2f}" for n in names)
        print(f"{prompt[:26]!r:28}{cells}   {rows['serve'][i]['text'] == rows['generate'][i]['text']}")
    totals = {n: total_speed(rows[n]) for n in names}
    print(f"{'mean decode tok/s':28}" + "".join(f"{totals[n]:16.2f}" for n in names))
    print(f"serve / generate: {totals['serve'] / totals['generate']:.3f}x")
    if "llama-server" in totals:
        print(f"serve / llama-server: {totals['serve'] / totals['llama-server']:.3f}x")


def total_speed(rows: list[dict]) -> float:
    """Tokens over seconds, summed over the prompts (each prompt weighs by its decode time)."""
    tokens = sum(r["tokens"] - 1 for r in rows if r["tokens_per_s"])
    seconds = sum((r["tokens"] - 1) / r["tokens_per_s"] for r in rows if r["tokens_per_s"])
    return tokens / seconds if seconds else 0.0


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
