"""Synthetic step records for the viewer's tests: a tree of any shape as a trace file holds it,
and one whose texts are every character that breaks a naive renderer."""

from __future__ import annotations

import math

from edge_tree.records import StepRecord


NASTY = ['"', "\\", "{}", "\n", "\t", "\x00", "\x1b", "<b>&amp;", "|", "é", "中文", "🙂"]


def nasty_record(step: int = 2) -> dict:
    """Every nasty token text in the tree, on accepted, rejected, bonus and root nodes."""
    return make_record(step, texts=NASTY + ["\\N", "\\G", "", "a\u200bb", "\r\x7f\x85"], branching=(4, 3, 2),
                       accept=(1, 0))


def make_record(step: int = 1, *, branching=(3, 2, 2), accept=(0, 0), n_nodes: int | None = None,
                texts=None, mode: str = "tree", position: int = 17) -> dict:
    """A synthetic step record as a trace file holds it (:func:`make_step` gives the StepRecord).

    The draft tree is built breadth first: every node at depth d gets ``branching[d]`` children
    (rank 0 first), stopping at ``n_nodes - 1`` nodes when given (the bonus node makes n_nodes).
    Accepted: from the root, the child of rank ``accept[d]`` at each depth d (``()``: none
    accepted); ``best_path`` ends at the leaf of highest cumulative log prob; the bonus node is a child of the last
    accepted node (or of the root).  Token texts cycle through ``texts`` (default " w<i>").
    """
    token, text, parent, depth, rank = [5], ["<root>" if texts is None else texts[0]], [-1], [0], [0]
    q, lq, cum, status = [1.0], [0.0], [0.0], ["root"]
    limit = (n_nodes - 1) if n_nodes is not None else 10**9
    frontier = [0]
    while frontier and len(parent) < limit:
        nxt = []
        for p in frontier:
            d = depth[p]
            if d >= len(branching):
                continue
            k_children = branching[d]
            weights = [0.6 / (r + 1) for r in range(k_children)]
            for r in range(k_children):
                if len(parent) >= limit:
                    break
                i = len(parent)
                prob = weights[r] * (0.9 if d % 2 else 1.0)
                token.append(100 + i)
                text.append(f" w{i}" if texts is None else texts[i % len(texts)])
                parent.append(p)
                depth.append(d + 1)
                rank.append(r)
                q.append(prob)
                lq.append(math.log(prob))
                cum.append(cum[p] + math.log(prob))
                status.append("rejected")
                nxt.append(i)
        frontier = nxt
    n = len(parent)
    accepted, node = [], 0
    for want in accept:
        kids = [i for i in range(n) if parent[i] == node and rank[i] == want]
        if not kids:
            break
        node = kids[0]
        accepted.append(node)
        status[node] = "accepted"
    target = [None] * n
    for i in range(1, n):
        if parent[i] == 0 or parent[i] in accepted:
            target[i] = 0.8 if status[i] == "accepted" else 0.05
    leaves = [i for i in range(1, n) if i not in parent]
    best_path = []
    if leaves:
        leaf = max(leaves, key=lambda i: (cum[i], -i))
        while leaf > 0:
            best_path.append(leaf)
            leaf = parent[leaf]
        best_path.reverse()
    bonus = n
    token.append(999)
    text.append(" bonus" if texts is None else texts[n % len(texts)])
    parent.append(accepted[-1] if accepted else 0)
    depth.append(depth[parent[-1]] + 1)
    rank.append(0)
    q.append(None)
    lq.append(None)
    cum.append(None)
    target.append(0.7)
    status.append("bonus")
    emitted = "".join(text[i] for i in accepted) + text[bonus]
    return {
        "type": "step", "step": step, "mode": mode, "position": position,
        "nodes": {"token": token, "text": text, "parent": parent, "depth": depth, "rank": rank,
                  "draft_prob": q, "draft_logprob": lq, "cum_logprob": cum, "target_prob": target,
                  "status": status},
        "accepted": accepted, "bonus": bonus, "best_path": best_path, "emitted_text": emitted,
        "timings": {"draft_s": 0.012, "verify_s": 0.034, "total_s": 0.05},
    }


def make_step(step: int = 1, **kw) -> StepRecord:
    return StepRecord.from_json(make_record(step, **kw))


def nasty_step(step: int = 2) -> StepRecord:
    return StepRecord.from_json(nasty_record(step))
