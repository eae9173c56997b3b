"""The draft model's tree with prompt-lookup guesses grafted on (core/compose.py), with a stand-in
for the draft model: which rounds call it, and how much room the guesses get."""

from dataclasses import replace

import numpy as np

from edge_tree.core.compose import LookupGraftDrafter
from edge_tree.core.drafting import DraftRequest, Proposal, Proposing, no_calls
from edge_tree.core.plan import PLAIN, TreeShape
from edge_tree.core.sampling import SamplingParams
from edge_tree.core.tree import NGRAM, TokenTree
from edge_tree.core.verify import Verdict
from drafts import propose

PHRASE = list(range(100, 130))  # said twice: the context's end matches its first saying


class ModelStandIn:
    """Proposes one drafted token below the root, and counts the rounds it was asked for."""

    children = "topk"

    def __init__(self):
        self.proposed = 0

    def start(self, prompt, held=(), read=True):
        pass

    def proposing(self, request: DraftRequest) -> Proposing:
        self.proposed += 1
        tree = TokenTree(request.shape.capacity, request.tokens[-1])
        tree.add(7, 0, -0.1, 0)
        return no_calls(Proposal(tree, {}, (1,)))

    def decode_alone(self, call):
        raise AssertionError("the stand-in makes no draft calls")

    def observe(self, tree, verdict):
        pass


def request(tokens, shape):
    return DraftRequest(tokens, shape, SamplingParams(), np.random.default_rng(0))


def accept_guesses(drafter, proposal) -> int:
    """The target takes the root's whole guess branch: a streak of guesses."""
    tree, kids = proposal.tree, proposal.tree.children()
    accepted, node = [], 0
    while guessed := [c for c in kids[node] if tree.source[c] == NGRAM]:
        node = guessed[0]
        accepted.append(node)
    drafter.observe(tree, Verdict(accepted, 0, np.full(tree.n, np.nan)))
    return len(accepted)


def test_a_streak_round_guesses_with_the_room_the_model_leaves_unused():
    model = ModelStandIn()
    drafter = LookupGraftDrafter(model)
    tokens = PHRASE + PHRASE[:12]  # the lookup guesses PHRASE[12:] next
    shape = TreeShape(max_depth=24, max_nodes_per_level=1, max_total_nodes=12, branch=1, expand=1,
                      guess_nodes=2, guess_depth=24)
    drafter.start(tokens)
    first = propose(drafter, request(tokens, shape))
    assert model.proposed == 1 and accept_guesses(drafter, first) >= LookupGraftDrafter.STREAK

    streak = propose(drafter, request(tokens, shape)).tree
    assert model.proposed == 1  # the model sat this round out
    guessed = [int(streak.token[i]) for i in range(1, streak.n)]
    # the guess runs on past the 2 guess nodes, as far as the lookup reaches (GUESS_LEN)
    assert guessed == PHRASE[12:22]
    assert all(streak.source[i] == NGRAM for i in range(1, streak.n))


def test_a_plain_round_keeps_its_guesses_to_the_guess_budget():
    model = ModelStandIn()
    drafter = LookupGraftDrafter(model)
    tokens = PHRASE + PHRASE[:12]
    drafter.start(tokens)
    tree = propose(drafter, request(tokens, replace(PLAIN, guess_nodes=3, guess_depth=24))).tree
    assert model.proposed == 0
    assert [int(tree.token[i]) for i in range(1, tree.n)] == PHRASE[12:15]
