"""A backend around the user's own function: any SDK call, HTTP request or pipeline.

The function receives the prompt (a string or chat messages) and returns text. It may also return
a ``Generation`` (to report tokens) or an OpenAI-style response object, whose text and token
usage are read. Sync and async functions both work from ``run`` and ``arun``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling
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

    def __init__(self, fn: Callable[..., Any], *, timeout_s: float | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"llm must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.timeout_s = timeout_s
        # An async function, or an object whose __call__ is one.
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [self._call_sync(prompt) for prompt in prompts]

    async def agenerate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [await self._call_async(prompt) for prompt in prompts]

    def _call_sync(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        if self.is_async:
            out = asyncio.run(self._awaited(prompt))
        elif self.timeout_s is None:
            out = self.fn(prompt)
        else:
            out = _call_with_timeout(self.fn, prompt, self.timeout_s)
        return as_generation(out, time.perf_counter() - start)

    async def _call_async(self, prompt: Prompt) -> Generation:
        start = time.perf_counter()
        if self.is_async:
            out = await self._awaited(prompt)
        else:
            call = asyncio.to_thread(self.fn, prompt)
            out = await (call if self.timeout_s is None else _timed_out(call, self.timeout_s))
        return as_generation(out, time.perf_counter() - start)

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
            return Generation(
                text=text,
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                finish_reason="length" if reason == "length" else reason,
                duration_s=duration_s,
            )
    raise BackendError(
        f"the LLM function returned {type(out).__name__}; it must return the model's text as a str",
        hint="return response.choices[0].message.content for an OpenAI-style client",
    )
