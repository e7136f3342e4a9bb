"""The one interface every model backend implements.

A backend turns prompts into text. The guard loop (``guardrail.guard``) owns validation and
retries; a backend only generates, reports tokens and timing, and raises ``TransportError`` for
failures worth retrying (``BackendError`` for the rest).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardrail.schema import Schema

#: A prompt is plain text or a list of chat messages ``{"role": ..., "content": ...}``, the content
#: a str or a list of text and image parts (``guardrail.messages``).
Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Sampling:
    """How to decode. Greedy unless ``temperature`` > 0.

    ``constrained`` false asks a backend that constrains decoding to generate freely instead
    (validation still runs): it is how reports show what constrained decoding buys.
    """

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_new_tokens: int = 256
    constrained: bool = True
    #: > 1 discourages repeating tokens: small models under a grammar tend to loop (list items,
    #: digits). ``None`` leaves the model's distribution untouched.
    repetition_penalty: float | None = None

    def but(self, **changes: Any) -> Sampling:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class Generation:
    """What one prompt produced.

    ``finish_reason`` is ``"stop"`` when the model ended on its own, ``"length"`` when it hit
    ``max_new_tokens``, ``"repetition"`` when the local backend stopped it for repeating itself
    (``guardrail.backends.loops``), or ``None`` when the backend cannot tell. ``logprobs``, when the backend
    knows them, lists the output's tokens in order as ``(token text, natural-log probability of
    that token)``; the token texts join to ``text``. The local backend gives the probability under
    the model's distribution at temperature 1 restricted to what the grammar allows (so greedy and
    sampled outputs are comparable); a server gives what it reports.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    duration_s: float | None = None
    logprobs: list[tuple[str, float]] | None = None
    #: The thinking a reasoning model's server sent apart (``reasoning_content``), if any.
    reasoning: str | None = None


@dataclass(frozen=True)
class StreamDelta:
    """A piece of a streamed generation: new answer ``text`` and new ``reasoning`` text.

    The last delta of a stream has ``final`` true and carries the token counts, finish reason and
    the whole output's ``logprobs`` (see ``Generation``) when the backend knows them. ``assemble``
    joins a stream's deltas into a ``Generation``.
    """

    text: str = ""
    reasoning: str = ""
    final: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    logprobs: list[tuple[str, float]] | None = None


def assemble(deltas: Iterable[StreamDelta], duration_s: float | None = None) -> Generation:
    """The ``Generation`` a whole stream of deltas amounts to.

    >>> assemble([StreamDelta('{"a": '), StreamDelta("1}"), StreamDelta(final=True, finish_reason="stop")])
    Generation(text='{"a": 1}', prompt_tokens=None, completion_tokens=None, finish_reason='stop', duration_s=None, \
logprobs=None, reasoning=None)
    """
    text: list[str] = []
    thought: list[str] = []
    last = StreamDelta()
    for delta in deltas:
        text.append(delta.text)
        thought.append(delta.reasoning)
        if delta.final:
            last = delta
    reasoning = "".join(thought)
    return Generation("".join(text), last.prompt_tokens, last.completion_tokens, last.finish_reason, duration_s,
                      logprobs=last.logprobs, reasoning=reasoning or None)


def whole(generation: Generation) -> StreamDelta:
    """A finished generation as the one, final delta of a stream."""
    return StreamDelta(generation.text, generation.reasoning or "", True, generation.prompt_tokens,
                       generation.completion_tokens, generation.finish_reason, generation.logprobs)


class Backend(ABC):
    """Generates text for prompts, optionally constrained to a schema.

    ``batches`` true means ``generate`` runs a list of prompts in one batched call, so
    ``Guard.run_many`` hands it whole batches; otherwise prompts go one per call, concurrently.
    ``wants_instructions`` true means the guard adds its system prompt (the task and the schema
    in a compact form); a user's own callable gets the prompt untouched. ``queues`` true means the
    backend takes prompts one by one through ``submit`` into a running batch of its own
    (continuous batching): the guard then submits every attempt as soon as its prompt needs one,
    so re-asks join the batch beside new prompts. ``reads_images`` true means chat messages may
    hold image parts (``guardrail.messages``); otherwise the guard flattens them with
    ``messages.text_only``, which refuses an image.
    """

    batches: bool = False
    queues: bool = False
    #: Can hold string fields to spans of the input while decoding (``generate``/``submit`` take
    #: ``spans=``); other backends leave it to validation (``guardrail.extractive``).
    spans: bool = False
    wants_instructions: bool = True
    reads_images: bool = False

    def prepare(self, schema: Schema) -> None:  # noqa: B027 - optional hook
        """Do the expensive per-schema work (compiling a grammar) once, ahead of calls."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        """Generate one text per prompt, in order."""

    async def agenerate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        """Async twin of ``generate``; by default it runs ``generate`` in a worker thread."""
        return await asyncio.to_thread(self.generate, prompts, schema, sampling)

    def submit(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Future[Generation]:
        """Queue one prompt (backends with ``queues``); the future resolves to its ``Generation``."""
        raise NotImplementedError(f"{type(self).__name__} does not queue prompts; call generate()")

    def stream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Iterator[StreamDelta]:
        """Generate for one prompt, yielding text as it comes; the last delta has ``final`` true.

        A backend that cannot stream yields its whole ``generate`` result as one final delta. A
        stream that fails part-way raises (``TransportError`` for a cut connection): what it
        yielded before is not an answer.
        """
        yield whole(self.generate([prompt], schema, sampling)[0])

    async def astream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> AsyncIterator[StreamDelta]:
        """Async twin of ``stream``; by default the whole ``agenerate`` result as one final delta."""
        yield whole((await self.agenerate([prompt], schema, sampling))[0])

    def describe(self) -> dict[str, Any]:
        """Name and versions, recorded in reports."""
        return {"backend": type(self).__name__}
