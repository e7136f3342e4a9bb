"""The text side of a local model: prompts rendered to the model's text, tokens back to text.

A prompt goes through the tokenizer's chat template when it has one; a base model (no template)
reads the messages as ``Input:``/``Output:`` pages (``transcript``). While streaming, tokens are
turned back into text piece by piece (``Detokenizer``), the pieces joining to exactly what
``tokenizer.decode`` makes of the whole output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from guardrail.backends.base import Prompt

#: How a base model (no chat template) reads each role: an exchange it can continue.
_BASE_ROLES = {"system": "", "user": "Input: ", "assistant": "Output:\n"}


def render(tokenizer: Any, prompt: Prompt) -> tuple[str, bool]:
    """The prompt as model text, and whether a chat template produced it."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    if isinstance(prompt, str):
        return prompt, False
    return transcript(messages), False


def transcript(messages: Sequence[dict[str, Any]]) -> str:
    """Chat messages as plain text for a base model: the instructions, then ``Input:``/``Output:``
    pairs (the few-shot turns), ending where the next output goes. A base model has seen many
    such pages; ``user:``/``assistant:`` labels read to it like a transcript to go on with. An
    output starts on a line of its own, so the answer's first token is ``{`` as in the examples
    (the grammar allows no space before it).

    >>> print(transcript([{"role": "system", "content": "Extract."}, {"role": "user", "content": "a"},
    ...                   {"role": "assistant", "content": "{}"}, {"role": "user", "content": "b"}]))
    Extract.
    <BLANKLINE>
    Input: a
    Output:
    {}
    <BLANKLINE>
    Input: b
    Output:
    <BLANKLINE>
    """
    blocks: list[str] = []
    for message in messages:
        role, content = message.get("role", "user"), str(message.get("content", ""))
        label = _BASE_ROLES.get(role, f"{role}: ")
        if role == "assistant" and blocks and blocks[-1].startswith(_BASE_ROLES["user"]):
            blocks[-1] += f"\n{label}{content}"  # an answer sits right under its input
        else:
            blocks.append(f"{label}{content}")
    return "\n\n".join(blocks) + "\n" + _BASE_ROLES["assistant"]


@lru_cache(maxsize=64)
def instructions_length(tokenizer: Any, head_json: str, start: tuple[int, ...]) -> int:
    """How many tokens render the messages before the last one (0 if they do not line up): the
    part of a prompt other prompts of the same guard share."""
    head = tokenizer.apply_chat_template(json.loads(head_json), tokenize=False, add_generation_prompt=False)
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    return len(ids) if tuple(ids) == start[: len(ids)] else 0


class Detokenizer:
    """The text of a growing list of tokens, handed out as it becomes final.

    Each token decodes the whole list again, as ``sampling.token_logprobs`` does (tens of
    microseconds for hundreds of tokens), so the pieces join to exactly what ``tokenizer.decode``
    makes of the whole output. A piece is held back while it ends in half a character (U+FFFD) or
    does not extend what was handed out (a tokenizer that tidies spaces before punctuation can
    change its mind about the end of the text; its last word is then the text handed out).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent):]
        self.sent = text
        return piece

    def rest(self, whole: str) -> str:
        """What ``whole`` (the final text) adds to what was handed out."""
        shared = 0
        for a, b in zip(self.sent, whole, strict=False):
            if a != b:
                break
            shared += 1
        return whole[shared:]
