"""Can this draft speak for this target? llama.cpp's own rule (examples/speculative)."""

from __future__ import annotations

from ..errors import EdgeTreeError
from .llama import Model

MAX_SIZE_DIFFERENCE = 128
FIRST_COMPARED_TOKEN = 5  # the first few ids are special tokens that often differ harmlessly

VOCAB_TYPES = {0: "none", 1: "SPM", 2: "BPE", 3: "WPM", 4: "UGM", 5: "RWKV", 6: "PLaMo-2"}


def vocab_mismatch(target: Model, draft: Model) -> str | None:
    """None when compatible, else what differs first, in words."""
    if target.vocab_type != draft.vocab_type:
        return (f"vocabulary types differ: target {VOCAB_TYPES.get(target.vocab_type, target.vocab_type)}, "
                f"draft {VOCAB_TYPES.get(draft.vocab_type, draft.vocab_type)}")
    if (target.bos, target.add_bos) != (draft.bos, draft.add_bos):
        return f"BOS differs: target {target.bos} (add {target.add_bos}), draft {draft.bos} (add {draft.add_bos})"
    if target.eos != draft.eos:
        return f"EOS differs: target {target.eos}, draft {draft.eos}"
    if abs(target.n_vocab - draft.n_vocab) > MAX_SIZE_DIFFERENCE:
        return (f"vocabulary sizes differ by more than {MAX_SIZE_DIFFERENCE}: "
                f"target {target.n_vocab}, draft {draft.n_vocab}")
    for token in range(FIRST_COMPARED_TOKEN, min(target.n_vocab, draft.n_vocab)):
        if target.token_text(token) != draft.token_text(token):
            return (f"token {token} differs: target {target.token_text(token)!r}, "
                    f"draft {draft.token_text(token)!r}")
    return None


def check_vocab(target: Model, draft: Model) -> None:
    why = vocab_mismatch(target, draft)
    if why:
        raise EdgeTreeError(f"draft {draft.path.name} cannot draft for target {target.path.name}: {why}")
