"""``LocalBackend``: a transformers model in this process, its decoding constrained to the schema.

The parts live beside this module: ``models`` loads a model once per process, ``engines`` adapts
the grammar engines (llguidance, then xgrammar, then outlines_core), ``grammars`` picks and keeps
each request's grammar, ``text`` renders prompts and decodes tokens, ``scheduler`` runs the one
decode loop per model in which every request is a row (continuous batching), ``kv`` keeps the
rows' key/value states and the stored prompt prefixes, and ``sampling`` picks each row's token.
This module turns prompts into requests (rendered, tokenized, given their grammar) and the
finished rows back into ``Generation`` objects.

>>> from guardrail.schema import Schema  # doctest: +SKIP
>>> backend = LocalBackend()  # the embedded model, loaded on first use  # doctest: +SKIP
>>> schema = Schema.load({"type": "object", "properties": {"name": {"type": "string"}}})  # doctest: +SKIP
>>> [g.text for g in backend.generate(["Extract the name: Ada Lovelace"], schema, Sampling())]  # doctest: +SKIP
['{"name": "Ada Lovelace"}']
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta
from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP
from guardrail.backends.local.engines import ENGINES
from guardrail.backends.local.grammars import Grammars
from guardrail.backends.local.models import Compiled, LoadedModel, load, loaded, resolve_device
from guardrail.backends.local.text import Detokenizer, instructions_length, render
from guardrail.backends.reasoning_grammar import reasoning_budget, tag_room, think_opened
from guardrail.errors import BackendError
from guardrail.messages import text_only

if TYPE_CHECKING:
    from guardrail.backends.local.scheduler import Finished, Request
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

__all__ = ["DEFAULT_MAX_BATCH", "LocalBackend"]

#: Rows decoded at once by default: on a 2-core CPU, 16 is where a step's cost stops growing slower
#: than the batch (issue 6's measurements); a GPU takes many more.
DEFAULT_MAX_BATCH = 16


class LocalBackend(Backend):
    """A transformers model in this process, constrained to the schema by a grammar engine.

    ``model``: ``None`` or ``"embedded"`` for the default embedded model, an embedded model's
    name (``"smollm2-135m"``, ``"gemma3-270m"``: ``guardrail.backends.embedded``), else a Hugging
    Face id or directory already on disk (never downloaded). ``engine``: the grammar engine to try first
    (default ``"llguidance"``); the others follow in ``ENGINES`` order as fallbacks. ``device``:
    ``"cpu"``, ``"cuda"``... (default: CUDA when available). ``string_cap``: ``maxLength`` given,
    for decoding only, to strings that have none (``None``: no cap). ``threads``: torch CPU
    threads while generating (default: torch's setting, one per core); on a machine busy with
    other work ``threads=1`` can be several times faster. ``grammar_cache``: where xgrammar and
    outlines_core grammars are kept between processes (default ``cache_root()/grammars``;
    ``False``: compile in every process; see ``guardrail.backends.grammar_cache``).
    ``share_prefix``: prefill the prompts' common prefix (the guard's instructions) once and keep
    its states for later requests (default ``True``). ``stop_loops``: end a row whose newest
    tokens repeat one unit over and over, with ``finish_reason="repetition"`` (default ``True``;
    see ``guardrail.backends.loops``). ``max_batch``: how many rows the model decodes at once
    (default 16); further requests wait for a free slot, and every request of the process for
    this model shares them (several guards, several threads). ``reasoning``: let the model think
    before it answers (for reasoning models such as Qwen3 or DeepSeek-R1 distills): ``True`` for
    up to ``DEFAULT_REASONING_TOKENS`` tokens of thinking, a number for that many, ``False`` (the
    default) for none. The grammar then lets it write free text in a ``<think>`` block (opened by
    the model, or already by the chat template) up to ``</think>``, closes the block when the
    budget is spent, and holds what follows to the schema; ``max_new_tokens`` still bounds the
    answer (the thinking budget comes on top). It needs the llguidance engine; the guard keeps the
    thinking apart (``Attempt.reasoning``) and validates the answer.

    ``stream`` yields the output token by token from the decode loop (as text: a character split
    across tokens comes whole with its last token), ``astream`` the same for asyncio.

    The model loads on first use, once per process per (model, device); each schema is compiled
    once per engine, so a warm call compiles nothing (``compile_count`` says how many compilations
    ran). ``duration_s`` of each ``Generation`` is the time its row spent in the batch (prefill
    included, the wait for a slot not); ``completion_tokens`` counts the end token. ``logprobs``
    lists the output's tokens (the end token excluded) with the natural-log probability of each
    under the constrained distribution: the model's next-token distribution at temperature 1,
    after the repetition penalty, restricted to the tokens the grammar allows and renormalised,
    before temperature, top-k and top-p (``guardrail.backends.local.sampling``).

    >>> backend = LocalBackend()  # doctest: +SKIP
    >>> backend.generate(["Ada Lovelace, ada@example.com"], Schema.load("contact"), Sampling())  # doctest: +SKIP
    [Generation(text='{"name": "Ada Lovelace", ...}', prompt_tokens=61, completion_tokens=34, ...)]
    """

    batches = True
    queues = True
    spans = True
    wants_instructions = True

    def __init__(self, model: str | None = None, *, engine: str | None = None, device: str | None = None,
                 string_cap: int | None = DEFAULT_STRING_CAP, threads: int | None = None,
                 grammar_cache: bool | str | os.PathLike[str] = True, share_prefix: bool = True,
                 stop_loops: bool = True, max_batch: int = DEFAULT_MAX_BATCH, reasoning: bool | int = False) -> None:
        #: Tokens of thinking allowed before the answer (0: the model answers at once).
        self.reasoning_tokens = reasoning_budget(reasoning)
        if self.reasoning_tokens and engine not in (None, "llguidance"):
            raise BackendError(f"reasoning= needs the llguidance engine, not {engine!r}",
                               hint="leave engine unset (llguidance is tried first), or turn reasoning off")
        self.share_prefix = share_prefix
        self.stop_loops = stop_loops
        from guardrail.backends.embedded import EMBEDDED_MODELS, require_installed, resolve_embedded

        # An embedded model by its own name, so "embedded" and its name share one loaded copy.
        embedded = model in (None, "embedded") or model in EMBEDDED_MODELS
        self.model_name = resolve_embedded(model).name if embedded else str(model)
        if grammar_cache is True:
            from guardrail.backends.embedded import cache_root

            grammar_cache = cache_root() / "grammars"
        self.grammar_cache: Path | None = Path(grammar_cache) if grammar_cache else None
        if engine is not None and engine not in ENGINES:
            raise BackendError(f"unknown engine {engine!r}", hint=f"choose one of {', '.join(ENGINES)}")
        self.engines: tuple[str, ...] = (engine, *(e for e in ENGINES if e != engine)) if engine else ENGINES
        if string_cap is not None and string_cap < 1:
            raise ValueError(f"string_cap must be a positive number of characters or None, got {string_cap}")
        self.string_cap = string_cap
        self._device = device
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive number of rows, got {max_batch!r}")
        self.max_batch = max_batch
        if embedded:
            require_installed(self.model_name)  # fail now, with the install hint, rather than at the first call

    # -- loading and compiling ------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """Load the model now (it otherwise loads on the first call); cached per process."""
        return load(self.model_name, resolve_device(self._device))

    @property
    def compile_count(self) -> int:
        """How many grammar compilations have run for this backend's model (0 before loading)."""
        found = loaded(self.model_name, resolve_device(self._device))
        return found.compiles if found is not None else 0

    @property
    def disk_load_count(self) -> int:
        """How many grammars were read from the on-disk cache instead of compiled."""
        found = loaded(self.model_name, resolve_device(self._device))
        return found.disk_loads if found is not None else 0

    @property
    def scheduler(self) -> Any:
        """The model's decode loop (its ``occupancy``, ``prefixes``... for benchmarks)."""
        model = self.load()
        return model.scheduler(self.max_batch, self.threads)

    def prepare(self, schema: Schema) -> None:
        """Compile ``schema`` for the first engine that accepts it, ahead of the first call."""
        self._compiled(self.load(), schema)

    def engine_for(self, schema: Schema) -> str | None:
        """The engine that constrains ``schema`` (compiling it if needed); None means unconstrained."""
        return self._compiled(self.load(), schema).engine

    def _grammars(self) -> Grammars:
        return Grammars(self.engines, self.string_cap, self.grammar_cache, self.reasoning_tokens)

    def _compiled(self, loaded: LoadedModel, schema: Schema) -> Compiled:
        return self._grammars().for_schema(loaded, schema)

    # -- generating -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling, *,
                 spans: Sequence[Spans | None] | None = None) -> list[Generation]:
        """Generate one text per prompt; the rows join the model's running batch.

        ``spans``, one per prompt: the input whose spans the chosen string fields are held to
        while decoding (``guardrail.extractive``).

        >>> LocalBackend().generate(["Ada, 36"], schema, Sampling(max_new_tokens=64))  # doctest: +SKIP
        """
        chosen = list(spans) if spans is not None else [None] * len(prompts)
        if len(chosen) != len(prompts):
            raise ValueError(f"got {len(chosen)} spans for {len(prompts)} prompts")
        futures = [self.submit(prompt, schema, sampling, spans=one) for prompt, one in zip(prompts, chosen, strict=True)]
        try:
            return [future.result() for future in futures]
        except BaseException:  # Ctrl-C or a failure: the other rows need not run on
            for future in futures:
                future.cancel()
            raise

    def submit(self, prompt: Prompt, schema: Schema, sampling: Sampling, *,
               spans: Spans | None = None) -> concurrent.futures.Future[Generation]:
        """Queue one prompt; the future resolves to its ``Generation`` when its row ends.

        Cancelling the future drops the row. Rows from every thread and every guard using this
        model share its batch.
        """
        model = self.load()
        request = self.request(model, prompt, schema, sampling, spans)
        scheduler = model.scheduler(self.max_batch, self.threads)
        outer: concurrent.futures.Future[Generation] = concurrent.futures.Future()

        def relay(inner: concurrent.futures.Future[Finished]) -> None:
            if inner.cancelled():
                outer.cancel()
                return
            error = inner.exception()
            if error is not None:
                outer.set_exception(error)
                return
            try:
                outer.set_result(self._generation(model, inner.result()))
            except Exception as exc:  # noqa: BLE001 - decoding the tokens failed: this request fails
                outer.set_exception(exc)

        def cancel(done: concurrent.futures.Future[Generation]) -> None:
            if done.cancelled():
                request.future.cancel()

        outer.add_done_callback(cancel)
        scheduler.submit(request).add_done_callback(relay)
        outer.set_running_or_notify_cancel()
        return outer

    def request(self, model: LoadedModel, prompt: Prompt, schema: Schema, sampling: Sampling,
                spans: Spans | None = None) -> Request:
        """The decode request for one prompt: its tokens, grammar and options."""
        from guardrail.backends.local.scheduler import Grammar, Request

        prompt = text_only(prompt, type(self).__name__)
        tokenizer = model.tokenizer
        text, templated = render(tokenizer, prompt)
        compiled = self._compiled(model, schema) if sampling.constrained else Compiled(None)
        if self.reasoning_tokens and compiled.engine is not None:
            compiled = self._grammars().for_reasoning(model, schema, compiled, think_opened(text), spans is not None)
            sampling = sampling.but(max_new_tokens=sampling.max_new_tokens + tag_room(self.reasoning_tokens))
        elif spans is not None and compiled.engine is not None:
            compiled = self._grammars().for_spans(model, schema, spans, compiled)
        tokens = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        shared = 0
        if templated and not isinstance(prompt, str) and len(prompt) > 1:
            shared = instructions_length(tokenizer, json.dumps(list(prompt)[:-1]), tuple(tokens[:2048]))
        grammar = None
        if compiled.engine is not None:
            grammar = Grammar(model.engine(compiled.engine), compiled.grammar)
        return Request(tokens=list(tokens), sampling=sampling, eos_ids=model.eos_ids, grammar=grammar, shared=shared,
                       stop_loops=self.stop_loops, share_prefix=self.share_prefix)

    # -- streaming ------------------------------------------------------------------------------

    def stream(self, prompt: Prompt, schema: Schema, sampling: Sampling, *,
               spans: Spans | None = None) -> Iterator[StreamDelta]:
        """Generate for one prompt in the running batch, yielding its text token by token.

        The joined deltas are exactly ``generate``'s text; the final one carries the token counts,
        finish reason and log-probabilities. Closing the iterator early ends the row.
        """
        model = self.load()
        tokens: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        row, closed = self._submit_streaming(model, prompt, schema, sampling, spans, tokens.put)
        text = Detokenizer(model.tokenizer)
        try:
            while (token := tokens.get()) is not None:
                if piece := text.add(token):
                    yield StreamDelta(piece)
            yield from self._ending(model, row.result(), text)
        finally:
            closed.set()
            row.cancel()

    async def astream(self, prompt: Prompt, schema: Schema, sampling: Sampling, *,
                      spans: Spans | None = None) -> AsyncIterator[StreamDelta]:
        """Async ``stream``: the tokens reach the event loop as the decode thread makes them."""
        model = self.load()
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()

        def hand_over(token: int | None) -> None:
            with suppress(RuntimeError):  # the event loop has closed: nobody is reading any more
                loop.call_soon_threadsafe(tokens.put_nowait, token)

        row, closed = self._submit_streaming(model, prompt, schema, sampling, spans, hand_over)
        text = Detokenizer(model.tokenizer)
        try:
            while (token := await tokens.get()) is not None:
                if piece := text.add(token):
                    yield StreamDelta(piece)
            for delta in self._ending(model, await asyncio.wrap_future(row), text):
                yield delta
        finally:
            closed.set()
            row.cancel()

    def _submit_streaming(self, model: LoadedModel, prompt: Prompt, schema: Schema, sampling: Sampling,
                          spans: Spans | None, hand_over: Any) -> tuple[concurrent.futures.Future[Finished],
                                                                          threading.Event]:
        """Queue one row whose tokens go to ``hand_over`` from the decode thread, then ``None`` when it ends.

        Setting the returned event ends the row at its next token (the decode loop ends a row
        whose token callback raises).
        """
        request = self.request(model, prompt, schema, sampling, spans)
        closed = threading.Event()

        def on_token(token: int) -> None:
            if closed.is_set():
                raise _StreamClosed("the stream was closed")
            hand_over(token)

        request.on_token = on_token
        row = model.scheduler(self.max_batch, self.threads).submit(request)
        row.add_done_callback(lambda _: hand_over(None))  # after the last token: the same thread, in order
        return row, closed

    def _ending(self, model: LoadedModel, finished: Finished, text: Detokenizer) -> Iterator[StreamDelta]:
        """The text the last tokens held back, then the final delta."""
        generation = self._generation(model, finished)
        rest = text.rest(generation.text)
        if rest:
            yield StreamDelta(rest)
        yield StreamDelta(final=True, prompt_tokens=generation.prompt_tokens,
                          completion_tokens=generation.completion_tokens, finish_reason=generation.finish_reason,
                          logprobs=generation.logprobs)

    @staticmethod
    def _generation(model: LoadedModel, finished: Finished) -> Generation:
        from guardrail.backends.local.sampling import token_logprobs

        text = model.tokenizer.decode(finished.tokens, skip_special_tokens=True)
        return Generation(text=text, prompt_tokens=finished.prompt_tokens, completion_tokens=finished.count,
                          finish_reason=finished.finish_reason, duration_s=finished.seconds,
                          logprobs=token_logprobs(model.tokenizer, finished.tokens, finished.logprobs, text))

    def describe(self) -> dict[str, Any]:
        """Backend, model, device, engine order and library versions, for reports."""
        info: dict[str, Any] = {"backend": type(self).__name__, "model": self.model_name,
                                "device": self._device or "auto", "engines": list(self.engines),
                                "string_cap": self.string_cap, "threads": self.threads, "max_batch": self.max_batch}
        found = loaded(self.model_name, resolve_device(self._device))
        if found is not None:
            info.update(device=found.device, source=found.source, load_seconds=round(found.load_seconds, 2))
        from importlib.metadata import PackageNotFoundError, version

        for package in ("torch", "transformers", "outlines", "llguidance", "xgrammar", "outlines_core"):
            with suppress(PackageNotFoundError):
                info[package] = version(package)
        return info


class _StreamClosed(Exception):
    """Raised in the decode thread for a row whose stream nobody reads any more: the row ends."""
