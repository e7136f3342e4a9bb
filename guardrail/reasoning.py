"""Separate a reasoning model's thinking from its answer.

Reasoning models (Qwen3, DeepSeek-R1, QwQ, Phi-4-reasoning ...) write their thinking first, in
a ``<think>…</think>`` block, then the answer. Validation wants the answer only, and a trace
of the thinking is worth keeping beside it.

``split_reasoning(text)`` returns ``(reasoning, answer)``:

* a leading block, after optional whitespace: ``"<think>plan</think>\\n{...}"`` gives
  ``("plan", "{...}")``; the reasoning is stripped of surrounding whitespace, the answer of leading whitespace;
* **a missing opening tag**: Qwen3's and DeepSeek-R1's chat templates put ``<think>`` in the
  prompt (the generation prompt opens the block), so the output starts inside it and only the
  closing tag appears: ``"plan</think>{...}"`` gives ``("plan", "{...}")``. This is read so
  only when the text does not start with ``{`` or ``[``: an answer that starts as JSON is an
  answer, even if a string inside it holds ``</think>``. ``implicit_open=False`` turns the
  rule off;
* an empty block (Qwen3 with thinking switched off writes ``<think>\\n\\n</think>``) gives
  ``("", answer)``: a block was there, with nothing in it;
* a block that never closes (the output was cut off while thinking) is all reasoning:
  ``("plan ...", "")``;
* anything else has no reasoning: ``(None, text)`` with the text untouched.

>>> split_reasoning("<think>The user wants JSON.</think>\\n\\n{\\"a\\": 1}")
('The user wants JSON.', '{"a": 1}')
>>> split_reasoning("Okay, a record.\\n</think>\\n{\\"a\\": 1}")
('Okay, a record.', '{"a": 1}')
>>> split_reasoning('{"a": "</think>"}')
(None, '{"a": "</think>"}')

Servers with a reasoning parser (vLLM ``--reasoning-parser``, SGLang, llama.cpp's
``llama-server``, DeepSeek's API) send the thinking apart, in the message's
``reasoning_content`` (or ``reasoning``) field: ``server_reasoning(message)`` reads it, and
``split_message(message)`` gives ``(reasoning, answer)`` for a whole message either way.

``ReasoningStream`` does the same split on a stream of chunks, handing out reasoning and answer
text as soon as it is known which is which (a tag split across chunks is held back until it is
complete).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CLOSE_TAG", "OPEN_TAG", "ReasoningStream", "server_reasoning", "split_message", "split_reasoning"]

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
#: The message (or stream delta) fields servers put reasoning in, in the order they are read.
SERVER_FIELDS = ("reasoning_content", "reasoning")


def split_reasoning(text: str, *, implicit_open: bool = True) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a model's whole output; see the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"split_reasoning takes the model's text (str), got {type(text).__name__}")
    body = text.lstrip()
    if body.startswith(OPEN_TAG):
        inner, closed, rest = body[len(OPEN_TAG):].partition(CLOSE_TAG)
        return inner.strip(), rest.lstrip() if closed else ""
    if implicit_open and not body.startswith(("{", "[")):
        inner, closed, rest = body.partition(CLOSE_TAG)
        if closed and OPEN_TAG not in inner:
            return inner.strip(), rest.lstrip()
    return None, text


def server_reasoning(message: Mapping[str, Any] | None) -> str | None:
    """The reasoning a server sent beside the answer (``reasoning_content`` or ``reasoning``), if any.

    Works on a chat message and on a streamed delta alike.

    >>> server_reasoning({"role": "assistant", "content": "{}", "reasoning_content": "Think."})
    'Think.'
    >>> server_reasoning({"content": "{}"}) is None
    True
    """
    if not isinstance(message, Mapping):
        return None
    for name in SERVER_FIELDS:
        value = message.get(name)
        if isinstance(value, str):
            return value
    return None


def split_message(message: Mapping[str, Any], *, implicit_open: bool = True) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a chat-completion message: the server's field, else the text's block.

    >>> split_message({"content": "{}", "reasoning_content": "Think."})
    ('Think.', '{}')
    >>> split_message({"content": "<think>Think.</think>{}"})
    ('Think.', '{}')
    """
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    given = server_reasoning(message)
    if given is None:
        return split_reasoning(text, implicit_open=implicit_open)
    inline, answer = split_reasoning(text, implicit_open=False)  # a server may leave an empty block behind
    return (given if not inline else f"{given}\n{inline}"), answer


class ReasoningStream:
    """Split streamed text into reasoning and answer as it arrives.

    ``feed(chunk)`` returns ``(reasoning_delta, answer_delta)``: the text newly known to be
    reasoning, and newly known to be answer; ``finish()`` returns what was held back. Joined,
    the deltas give exactly ``split_reasoning`` of the whole text (whitespace around the block
    and at the start of the answer dropped). ``reasoning`` is ``None`` until a block is seen.

    >>> s = ReasoningStream()
    >>> [s.feed(c) for c in ["<thi", "nk>Plan", " it.</th", "ink>\\n{", '"a": 1}']]
    [('', ''), ('Plan', ''), (' it.', ''), ('', '{'), ('', '"a": 1}')]

    Held back: leading whitespace, a possible tag cut by a chunk boundary and, when the text
    starts with prose (with ``implicit_open``, see ``split_reasoning``), everything until
    ``</think>`` shows it to be reasoning or the stream ends and shows it to be the answer.
    """

    def __init__(self, *, implicit_open: bool = True) -> None:
        self.implicit_open = implicit_open
        self._held = ""
        # "start": undecided; "prose": undecided, waiting for </think> or the end;
        # "thinking": inside a block; "answer-start": after the block (leading space dropped); "answer".
        self._state = "start"
        self.reasoning: str | None = None
        self.answer = ""

    def feed(self, chunk: str) -> tuple[str, str]:
        """The reasoning and answer text this chunk made certain."""
        if not isinstance(chunk, str):
            raise TypeError(f"ReasoningStream.feed takes text (str), got {type(chunk).__name__}")
        if self._state == "answer":
            self.answer += chunk
            return "", chunk
        self._held += chunk
        return self._advance(final=False)

    def finish(self) -> tuple[str, str]:
        """The stream has ended: hand out what was held back."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> tuple[str, str]:
        thought = said = ""
        while True:
            held, state = self._held, self._state
            if state == "start":
                body = held.lstrip()
                if not final and (not body or OPEN_TAG.startswith(body)):
                    break  # only space so far, or perhaps the start of <think>
                if body.startswith(OPEN_TAG):
                    self._held, self._state, self.reasoning = body[len(OPEN_TAG):], "thinking", ""
                elif self.implicit_open and body and not body.startswith(("{", "[")):
                    self._state = "prose"
                else:
                    self._held, self._state = "", "answer"
                    said += held
            elif state == "prose":
                before, closed, after = held.partition(CLOSE_TAG)
                if closed and OPEN_TAG not in before:  # an unopened block: it was reasoning
                    self.reasoning = before.strip()
                    thought += self.reasoning
                    self._held, self._state = after, "answer-start"
                elif closed or OPEN_TAG in held or final:  # not an unopened block: all answer
                    self._held, self._state = "", "answer"
                    said += held
                else:
                    break
            elif state == "thinking":
                before, closed, after = held.partition(CLOSE_TAG)
                keep = 0 if closed or final else _partial_tag(held)
                text = before if closed else held[: len(held) - keep]
                if not self.reasoning:
                    text = text.lstrip()
                # Trailing space may be the block's last: it is handed out once more text follows it.
                piece = text.rstrip()
                self.reasoning = (self.reasoning or "") + piece
                thought += piece
                if closed:
                    self._held, self._state = after, "answer-start"
                    continue
                self._held = "" if final else text[len(piece):] + held[len(held) - keep:]
                break
            elif state == "answer-start":
                body = held.lstrip()
                self._held = ""
                if body:
                    self._state = "answer"
                    said += body
                break
            else:
                break
        self.answer += said
        return thought, said


def _partial_tag(text: str) -> int:
    """How many trailing characters of ``text`` could begin ``</think>`` (held back for the next chunk)."""
    for size in range(min(len(CLOSE_TAG) - 1, len(text)), 0, -1):
        if CLOSE_TAG.startswith(text[-size:]):
            return size
    return 0
