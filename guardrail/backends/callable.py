"""A backend around the user's own function: any SDK call, HTTP request or pipeline.

The function receives the prompt (a string or chat messages) and returns text. It may also return
a ``Generation`` (to report tokens) or an OpenAI-style response object, whose text, token usage
and reasoning (``message.reasoning_content``, as reasoning servers send it) are read. Sync and
async functions both work from ``run`` and ``arun``.

A function may also stream: return (or be a generator of) an iterator or async iterator of
chunks, each a str, a ``StreamDelta``, or an OpenAI-style stream chunk (``choices[0].delta``,
as the openai SDK yields with ``stream=True``: its ``content``, ``reasoning_content``,
``finish_reason`` and ``usage`` are read). ``stream``/``astream`` then hand the chunks on as they
come, and ``generate`` joins them. A function that returns a str streams it as one delta.
``timeout_s`` covers the call that returns the iterator, not the iteration.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta, assemble, whole
from guardrail.errors import BackendError

if TYPE_CHECKING:
    from guardrail.schema import Schema


class CallableBackend(Backend):
    """Calls ``fn(prompt)`` once per prompt; ``timeout_s`` cuts off a call that hangs.

    A sync function that overruns its timeout is abandoned in its worker thread (Python cannot
    kill a thread) and the attempt is recorded as a ``TimeoutError``, which is retried.
    """

    batches = False
    wants_instructions = False
    reads_images = True

    def __init__(self, fn: Callable[..., Any], *, timeout_s: float | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"llm must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.timeout_s = timeout_s
        # An async function, or an object whose __call__ is one.
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        # An async generator function: calling it returns an async iterator, with nothing to await.
        self.is_async_gen = inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(type(fn).__call__)

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [self._call_sync(prompt) for prompt in prompts]

    async def agenerate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [await self._call_async(prompt) for prompt in prompts]

    def stream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Iterator[StreamDelta]:
        start = time.perf_counter()
        out = self._out_sync(prompt)
        if _is_stream(out):
            yield from _deltas(_sync_chunks(out))
        else:
            yield whole(as_generation(out, time.perf_counter() - start))

    async def astream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> AsyncIterator[StreamDelta]:
        start = time.perf_counter()
        out = await self._out_async(prompt)
        if _is_stream(out):
            async for delta in _adeltas(out):
                yield delta
        else:
            yield whole(as_generation(out, time.perf_counter() - start))

    def _call_sync(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        out = self._out_sync(prompt)
        if _is_stream(out):
            return assemble(_deltas(_sync_chunks(out)), time.perf_counter() - start)
        return as_generation(out, time.perf_counter() - start)

    async def _call_async(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        out = await self._out_async(prompt)
        if _is_stream(out):
            return assemble([delta async for delta in _adeltas(out)], time.perf_counter() - start)
        return as_generation(out, time.perf_counter() - start)

    def _out_sync(self, prompt: Prompt) -> Any:
        """What the function returned (awaited, for an async one), from sync code."""
        if self.is_async:
            return asyncio.run(self._awaited(prompt))
        if self.timeout_s is None or self.is_async_gen:
            return self.fn(prompt)
        return _call_with_timeout(self.fn, prompt, self.timeout_s)

    async def _out_async(self, prompt: Prompt) -> Any:
        """What the function returned (awaited, for an async one), from async code."""
        if self.is_async:
            return await self._awaited(prompt)
        if self.is_async_gen:
            return self.fn(prompt)
        call = asyncio.to_thread(self.fn, prompt)
        return await (call if self.timeout_s is None else _timed_out(call, self.timeout_s))

    async def _awaited(self, prompt: Prompt) -> Any:
        call = self.fn(prompt)
        return await (call if self.timeout_s is None else _timed_out(call, self.timeout_s))

    def describe(self) -> dict[str, Any]:
        return {"backend": "callable", "function": getattr(self.fn, "__qualname__", repr(self.fn))}


async def _timed_out(awaitable: Any, timeout_s: float) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the LLM call did not return within {timeout_s:g} s") from None


def _call_with_timeout(fn: Callable[[Prompt], Any], prompt: Prompt, timeout_s: float) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(prompt)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    # A daemon thread, so a call that never returns cannot keep the interpreter alive.
    worker = threading.Thread(target=target, name="guardrail-llm-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"the LLM call did not return within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def as_generation(out: Any, duration_s: float) -> Generation:
    """Read text and token counts from what a user's function returned."""
    if isinstance(out, Generation):
        if out.duration_s is None:
            out.duration_s = duration_s
        return out
    if isinstance(out, str):
        return Generation(text=out, duration_s=duration_s)
    choices = getattr(out, "choices", None)
    if choices:  # an OpenAI-style chat completion
        first = choices[0]
        message = getattr(first, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(first, "text", None)
        if isinstance(text, str):
            usage = getattr(out, "usage", None)
            reason = getattr(first, "finish_reason", None)
            thought = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
            return Generation(
                text=text,
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                finish_reason="length" if reason == "length" else reason,
                duration_s=duration_s,
                reasoning=thought if isinstance(thought, str) else None,
            )
    raise BackendError(
        f"the LLM function returned {type(out).__name__}; it must return the model's text as a str",
        hint="return response.choices[0].message.content for an OpenAI-style client",
    )


# -- streams ---------------------------------------------------------------------------------


def _is_stream(out: Any) -> bool:
    """Whether a function's result is a stream of chunks (an iterator or async iterator, not text)."""
    return isinstance(out, (Iterator, AsyncIterator)) and not isinstance(out, (str, bytes))


class _DeltaReader:
    """Turns chunks into deltas; remembers what the final delta must carry (no I/O)."""

    def __init__(self) -> None:
        self.count = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def delta(self, chunk: Any) -> StreamDelta:
        self.count += 1
        if isinstance(chunk, str):
            return StreamDelta(chunk)
        if isinstance(chunk, StreamDelta):
            self._keep(chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens)
            return StreamDelta(chunk.text, chunk.reasoning)
        choices = _field(chunk, "choices")
        if isinstance(choices, (list, tuple)):  # an OpenAI-style stream chunk
            usage = _field(chunk, "usage")
            self._keep(None, _field(usage, "prompt_tokens"), _field(usage, "completion_tokens"))
            if not choices:  # the usage-only chunk that ends an OpenAI stream
                return StreamDelta()
            delta = _field(choices[0], "delta")
            reason = _field(choices[0], "finish_reason")
            self._keep("length" if reason == "length" else reason, None, None)
            text = _field(delta, "content")
            thought = _field(delta, "reasoning_content") or _field(delta, "reasoning")
            return StreamDelta(text if isinstance(text, str) else "", thought if isinstance(thought, str) else "")
        raise BackendError(
            f"the LLM function's stream yielded {type(chunk).__name__} (chunk {self.count}); each chunk must be a str",
            hint="yield text pieces, guardrail StreamDelta objects, or OpenAI stream chunks")

    def final(self) -> StreamDelta:
        return StreamDelta(final=True, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                           finish_reason=self.finish_reason)

    def _keep(self, reason: Any, prompt_tokens: Any, completion_tokens: Any) -> None:
        if isinstance(reason, str):
            self.finish_reason = reason
        if isinstance(prompt_tokens, int):
            self.prompt_tokens = prompt_tokens
        if isinstance(completion_tokens, int):
            self.completion_tokens = completion_tokens


def _field(holder: Any, name: str) -> Any:
    return holder.get(name) if isinstance(holder, dict) else getattr(holder, name, None)


def _deltas(chunks: Iterator[Any]) -> Iterator[StreamDelta]:
    reader = _DeltaReader()
    for chunk in chunks:
        yield reader.delta(chunk)
    yield reader.final()


async def _adeltas(out: Any) -> AsyncIterator[StreamDelta]:
    reader = _DeltaReader()
    async for chunk in _async_chunks(out):
        yield reader.delta(chunk)
    yield reader.final()


def _sync_chunks(out: Any) -> Iterator[Any]:
    """The chunks of a sync or async iterator, from sync code (an async one on a private event loop)."""
    if not isinstance(out, AsyncIterator):
        yield from out
        return
    iterator = out.__aiter__()
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(iterator.__anext__())
            except StopAsyncIteration:
                return
    finally:
        closing = getattr(iterator, "aclose", None)
        if closing is not None:
            loop.run_until_complete(closing())
        loop.close()


async def _async_chunks(out: Any) -> AsyncIterator[Any]:
    """The chunks of a sync or async iterator, from async code (a sync one advanced in a worker thread,
    so a blocking generator does not block the event loop)."""
    if isinstance(out, AsyncIterator):
        async for chunk in out:
            yield chunk
        return
    iterator = iter(out)
    done = object()
    while (chunk := await asyncio.to_thread(next, iterator, done)) is not done:
        yield chunk
