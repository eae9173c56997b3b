"""The draft tree as flat arrays, and its layout in a shared KV cache.

Node 0 is the root: the last committed token, which the target has not yet seen. Nodes are
appended level by level, so a parent's index is always below its children's and a batch in
index order gives every branch increasing positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

ROOT, DRAFTED, ACCEPTED, REJECTED, BONUS = range(5)
STATUS_NAMES = ("root", "drafted", "accepted", "rejected", "bonus")
DRAFT, NGRAM = range(2)  # who proposed a node: the draft model, or an n-gram found in the context
SOURCE_NAMES = ("draft", "ngram")


@dataclass
class TokenTree:
    capacity: int
    root_token: int
    # children were drawn from the draft's distribution (True) or chosen as its top candidates:
    # the verifier picks the exact acceptance rule from this.
    sampled: bool = False
    n: int = 1
    token: np.ndarray = field(init=False)
    parent: np.ndarray = field(init=False)
    depth: np.ndarray = field(init=False)
    rank: np.ndarray = field(init=False)  # order among siblings: draft rank, or draw order
    logprob: np.ndarray = field(init=False)  # draft log-prob of the token given its parent path
    cum_logprob: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    source: np.ndarray = field(init=False)

    def __post_init__(self):
        # np.zeros and fill(), not np.full (pure Python in numpy): a plain round makes a tree a
        # token, its host work cold after every decode streamed the weights
        size = self.capacity + 1
        self.token = np.zeros(size, np.int32)
        self.parent = np.zeros(size, np.int32)
        self.depth = np.zeros(size, np.int32)
        self.rank = np.zeros(size, np.int32)
        self.logprob = np.zeros(size, np.float64)
        self.cum_logprob = np.zeros(size, np.float64)
        self.status = np.zeros(size, np.int8)
        self.source = np.zeros(size, np.int8)  # DRAFT
        self.parent.fill(-1)
        self.status.fill(DRAFTED)
        self.token[0] = self.root_token
        self.status[0] = ROOT
        self.max_depth = 0  # kept as nodes come: a reduction over the depths costs more, once a round

    def add(self, token: int, parent: int, logprob: float, rank: int, source: int = DRAFT) -> int:
        i = self.n
        if i > self.capacity:
            raise ValueError(f"tree is full ({self.capacity} nodes)")
        self.token[i] = token
        self.parent[i] = parent
        depth = self.depth[i] = self.depth[parent] + 1
        if depth > self.max_depth:
            self.max_depth = int(depth)
        self.rank[i] = rank
        self.logprob[i] = logprob
        self.cum_logprob[i] = self.cum_logprob[parent] + logprob
        self.source[i] = source
        self.n = i + 1
        return i

    def graft(self, tokens: list[int], source: int, at: int = 0) -> int:
        """Insert a chain of guesses below node `at`, sharing the nodes that already carry them
        (a trie insert). New nodes rank after their siblings and score like their parent: an
        n-gram guess has no draft probability. Returns how many nodes were added."""
        kids = self.children()
        node, added = at, 0
        for token in tokens:
            match = next((c for c in kids[node] if self.token[c] == token), None)
            if match is None:
                if self.n > self.capacity:
                    break
                match = self.add(token, node, 0.0, len(kids[node]), source)
                kids[node].append(match)
                kids.append([])
                added += 1
            node = match
        return added

    @property
    def n_drafted(self) -> int:
        return self.n - 1

    def children(self) -> list[list[int]]:
        """Children of every node, in sibling order (the order the verifier tries them)."""
        if self.n == 1:
            return [[]]
        kids: list[list[int]] = [[] for _ in range(self.n)]
        for i in range(1, self.n):
            kids[self.parent[i]].append(i)
        for row in kids:
            row.sort(key=lambda i: self.rank[i])
        return kids

    def path(self, node: int) -> list[int]:
        """Node indices from depth 1 down to node (empty for the root)."""
        out = []
        while node > 0:
            out.append(node)
            node = int(self.parent[node])
        return out[::-1]

    def first_choice_path(self) -> list[int]:
        """Nodes from depth 1 down the first child at every level (the draft's top choice, the
        guesses grafted below its end): the walk the target takes where it agrees with them all."""
        kids = self.children()
        path, node = [], 0
        while kids[node]:
            node = kids[node][0]
            path.append(node)
        return path

    def leaves(self) -> list[int]:
        if self.n == 1:
            return [0]
        has_child = np.zeros(self.n, bool)
        has_child[self.parent[1 : self.n]] = True
        return [i for i in range(self.n) if not has_child[i]]

    def best_leaf(self) -> int:
        """The leaf the draft likes best: highest cumulative log-prob, deeper on ties."""
        leaves = self.leaves()
        return max(leaves, key=lambda i: (self.cum_logprob[i], self.depth[i]))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens a and b share from their start."""
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if len(mismatch) else n


def branch_seq_ids(tree: TokenTree) -> list[list[int]]:
    """Seq ids of every node for one-pass verification: each leaf is a branch (its own seq id),
    and a node carries the ids of all branches through it. Branch 0 is seq 0, the committed one.

    The first id listed for a node is a branch that passes through it, as llama.cpp expects.
    """
    seqs: list[list[int]] = [[] for _ in range(tree.n)]
    for branch, leaf in enumerate(tree.leaves()):
        node = leaf
        while node >= 0:
            seqs[node].append(branch)
            node = int(tree.parent[node])
    return seqs
