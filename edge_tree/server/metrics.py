"""GET /metrics: the server's counters in Prometheus's text format (version 0.0.4), as
llama-server's --metrics offers them, under edge-tree's own names."""

from __future__ import annotations

from .worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP edgetree_{name} {help_text}", f"# TYPE edgetree_{name} {kind}"]
    lines += [f"edgetree_{name}{labels} {value:g}" for labels, value in samples]
    return lines


def render(worker: Worker) -> str:
    counters, states = worker.counters, worker.slot_states()
    busy = [state for state in states if state["state"] != "idle"]
    generating = [state for state in busy if state["state"] == "generating"]
    families = [
        ("requests_served_total", "counter", "Requests that ran to their end.", counters.served),
        ("requests_cancelled_total", "counter", "Requests whose client left, queued or running.",
         counters.cancelled),
        ("requests_rejected_total", "counter", "Requests answered 429: the queue was full.", counters.rejected),
        ("prompt_tokens_total", "counter", "Prompt tokens of ended requests.", counters.prompt_tokens),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens of ended requests whose cells a slot "
                                                  "or the prompt cache already held: not read again.",
         counters.prompt_cached),
        ("tokens_generated_total", "counter", "Tokens generated for ended requests.", counters.tokens),
        ("tokens_drafted_total", "counter", "Tokens drafted for ended requests.", counters.drafted),
        ("tokens_accepted_total", "counter", "Drafted tokens the target accepted.", counters.accepted),
        ("rounds_total", "counter", "Rounds of ended requests: each drafts, and is verified in a "
                                    "target pass it may share with other slots' rounds.", counters.rounds),
        ("target_passes_total", "counter", "Target passes run.", worker.slots.passes if worker.slots else 0),
        ("shared_passes_total", "counter", "Target passes that verified several requests' trees at once.",
         worker.slots.shared_passes if worker.slots else 0),
        ("draft_decodes_total", "counter", "Draft model decodes for the requests' trees.",
         worker.slots.draft_decodes if worker.slots else 0),
        ("shared_draft_decodes_total", "counter", "Draft decodes that grew several requests' trees at once.",
         worker.slots.shared_draft_decodes if worker.slots else 0),
        ("decode_seconds_total", "counter", "Seconds ended requests spent generating after their prompt.",
         counters.decode_s),
        ("acceptance_ratio", "gauge", "Accepted over drafted tokens so far.",
         counters.accepted / counters.drafted if counters.drafted else 0.0),
        ("prompt_cache_bytes", "gauge", "Host memory holding prompts whose cells slots gave up (--cache-ram).",
         worker.slots.cache.size if worker.slots and worker.slots.cache else 0),
        ("requests_waiting", "gauge", "Requests queued for a slot.", worker.waiting),
        ("slots_busy", "gauge", "Slots generating.", len(busy)),
        ("slots_total", "gauge", "Slots (--parallel).", len(states)),
    ]
    lines = []
    for name, kind, help_text, value in families:
        lines += _family(name, kind, help_text, [("", float(value))])
    lines += _family("slot_tokens_per_second", "gauge", "Each generating slot's tokens per second so far.",
                     [(f'{{slot="{state["id"]}"}}', state["tokens_per_s"]) for state in generating])
    return "\n".join(lines) + "\n"
