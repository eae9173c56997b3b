"""Chat: messages rendered with the model's own template, then tokenized with BOS added once.

Instruction-tuned models expect their conversation in the exact format they were trained on;
the GGUF file carries it as a Jinja template (`tokenizer.chat_template`). It is rendered as the
ecosystem does (Hugging Face transformers, llama-cpp-python): a sandboxed, immutable Jinja2
environment (a model file is not trusted code), `raise_exception` and `strftime_now` helpers,
`bos_token`/`eos_token`, and `add_generation_prompt=True` so the text ends where the
assistant's reply begins. The reply ends at the model's end-of-turn token (`<end_of_turn>`,
`<|im_end|>`, ...), which llama.cpp counts among the end-of-generation tokens.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Sequence, Union

from ..errors import EdgeTreeError, InputError
from ..llamacpp.llama import Model

RENDER_LIMIT_S = 10.0  # a template is a program: one that loops too long on the messages ends here


@dataclass(frozen=True)
class ChatPrompt:
    """Text written by a chat template: tokenized with its special tokens parsed as such
    (`<start_of_turn>` is one control token, not eleven characters) and BOS added only when the
    template did not write it already. A plain str prompt is tokenized as plain text. Not a str
    itself, so that no string operation can turn it into plain text unnoticed."""

    text: str


Prompt = Union[str, ChatPrompt]  # what the engine generates from


def prompt_text(prompt: Prompt) -> str:
    return prompt.text if isinstance(prompt, ChatPrompt) else prompt


def prompt_tokens(model: Model, prompt: Prompt) -> list[int]:
    """The tokens of a prompt as the engine feeds them: a ChatPrompt with BOS once, plain text
    with the model's own special tokens (BOS) added and any special-looking text kept as text."""
    if not isinstance(prompt, ChatPrompt):
        return model.tokenize(prompt, add_special=True)
    tokens = model.tokenize(prompt.text, add_special=False, parse_special=True)
    if model.add_bos and model.bos >= 0 and tokens[:1] != [model.bos]:
        tokens.insert(0, model.bos)
    return tokens


class ChatTemplate:
    """A model's chat template, compiled once; render() turns messages into a ChatPrompt."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        import jinja2

        env = _timed_sandbox()(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise EdgeTreeError(f"the model's chat template does not compile: {e}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def of(cls, model: Model) -> "ChatTemplate":
        """The template in the model's metadata; a model without one is an InputError (a chat
        request it cannot serve), while plain completions still work."""
        source = model.chat_template
        if not source:
            raise InputError("messages", f"the model {model.path.name} has no chat template "
                                         "(tokenizer.chat_template in its GGUF metadata): "
                                         "use plain completions, or a chat-tuned model")
        return cls(source, _token_text(model, model.bos), _token_text(model, model.eos))

    def render(self, messages: Sequence[Mapping]) -> ChatPrompt:
        import jinja2

        _deadline.at = time.monotonic() + RENDER_LIMIT_S
        try:
            text = self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except _TooLong:
            raise InputError("messages", f"the chat template took more than {RENDER_LIMIT_S:g} s to "
                                         "render the messages") from None
        except jinja2.TemplateError as e:  # raise_exception() included: the template's own words
            raise InputError("messages", f"the chat template refused the messages: {e}") from None
        return ChatPrompt(text)


def user_message(text: str) -> list[dict]:
    """A conversation of one user message (`edge-tree generate --chat`)."""
    return [{"role": "user", "content": text}]


_deadline = threading.local()  # this thread's render must end by _deadline.at (time.monotonic())


class _TooLong(Exception):
    pass


def _in_time() -> None:
    if time.monotonic() > getattr(_deadline, "at", float("inf")):  # inf: not inside a render
        raise _TooLong


def _timed_sandbox():
    """Jinja's immutable sandbox, checking the render's deadline at every call, attribute and
    item a template reaches: no loop runs long without one (a range() is a call; Jinja's sandbox
    caps a range at 100,000 items)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class TimedSandbox(ImmutableSandboxedEnvironment):
        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805  as Jinja's: any keyword passes
            _in_time()
            return ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            _in_time()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _in_time()
            return super().getitem(obj, argument)

    return TimedSandbox


def _token_text(model: Model, token: int) -> str:
    return model.token_text(token) if token >= 0 else ""


def _raise_exception(message: str):
    import jinja2

    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False) -> str:
    """As transformers' tojson: plain JSON, not Jinja's HTML-escaped one."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)
