"""``LlamaCppBackend``: a GGUF model run by llama.cpp in this process, constrained by llguidance.

The package docstring (``guardrail.backends.llamacpp``) says how and why. The loaded models are
in ``model``, the grammars in ``grammars``, and the decode loop's pieces that need no backend
(prompt, KV-cache snapshots, mask, draw) in ``decode``; the loop itself is ``_one`` here.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import importlib.util
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta
from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP
from guardrail.backends.llamacpp.decode import _allowed, _draw, _feed_prompt, _tokens
from guardrail.backends.llamacpp.grammars import _schema_grammar, _span_grammar
from guardrail.backends.llamacpp.model import (
    _MODELS,
    LLAMACPP_HINT,
    _default_threads,
    _import_llama_cpp,
    _load,
    _LoadedLlama,
    _texts,
)
from guardrail.backends.loops import ends_in_loop
from guardrail.backends.reasoning_grammar import reasoning_budget, tag_room
from guardrail.errors import BackendError

if TYPE_CHECKING:
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend(Backend):
    """A GGUF model run by llama.cpp in this process, constrained to the schema by llguidance.

    ``model``: ``None`` or ``"embedded"`` for the default embedded model (``DEFAULT_EMBEDDED``,
    Gemma 3 270M, unless the environment variable ``GUARDRAIL_EMBEDDED`` names another), an
    embedded model's name (``"gemma3-270m"``, ``"smollm2-135m"``: ``guardrail.backends.embedded``),
    else the path of a ``.gguf`` file. ``n_threads``: CPU threads, for the prompt and for each
    token (``threads`` is accepted as an alias, as ``LocalBackend`` spells it); default: half the
    cores, at least one. On a machine busy with other work, fewer threads are faster: llama.cpp's
    threads wait for each other at every layer. ``n_ctx``: the context window in tokens (prompt and output
    together). ``string_cap``: ``maxLength`` given, for decoding only, to strings that have none
    (``None``: no cap). ``engine``: only ``"llguidance"`` (or ``None``) exists here.
    ``n_gpu_layers``: layers to offload when llama-cpp-python was built with GPU support (default
    0: the CPU; for a GPU, the transformers path is the one guardrail tests).
    ``prefix_cache_mb``: memory for KV-cache snapshots of prompt prefixes (default 256 MB; 0
    turns them off). Leading messages that two prompts share (the system prompt with the schema,
    the few-shot examples) are saved, and later prompts that start with them only evaluate the
    rest: on a CPU the prompt is a large part of each request. Outputs are identical with or
    without snapshots (see ``decode._feed_prompt``). SmolLM2-135M takes about 15 KB per token of
    prefix; a 7B model up to 0.5 MB. ``stop_loops``: end an output that repeats one unit over and
    over, with ``finish_reason="repetition"`` (see ``guardrail.backends.loops``; default ``True``).
    ``reasoning``: let a reasoning model think before it answers, as ``LocalBackend`` does
    (``True``: up to 512 tokens of thinking; a number: that many; default ``False``).

    One prompt at a time (``batches`` is false): ``Guard.run_many`` sends its prompts as
    concurrent calls, which take turns on the model. The model loads on first use, once per
    process per (file, ``n_ctx``); each schema compiles once (``compile_count``). A
    ``Generation``'s ``duration_s`` is the wall time of its own prompt once it has the model (not
    the wait behind other calls); ``completion_tokens`` counts the end token; ``logprobs`` lists
    the output's tokens with their natural-log probability under the constrained distribution
    (the model's at temperature 1, after the repetition penalty, restricted to what the grammar
    allows and renormalised), as ``LocalBackend`` reports them.
    """

    batches = False
    spans = True
    wants_instructions = True

    def __init__(self, model: str | os.PathLike[str] | None = None, *, n_threads: int | None = None,
                 threads: int | None = None, n_ctx: int = 2048, string_cap: int | None = DEFAULT_STRING_CAP,
                 engine: str | None = None, n_gpu_layers: int = 0, prefix_cache_mb: float = 256,
                 stop_loops: bool = True, reasoning: bool | int = False) -> None:
        #: Tokens of thinking allowed before the answer (0: the model answers at once).
        self.reasoning_tokens = reasoning_budget(reasoning)
        self.stop_loops = stop_loops
        if threads is not None and n_threads is not None and threads != n_threads:
            raise ValueError(f"give n_threads or threads, not both ({n_threads} and {threads})")
        n_threads = n_threads if n_threads is not None else threads
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {n_threads}")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16 tokens, got {n_ctx}")
        if string_cap is not None and string_cap < 1:
            raise ValueError(f"string_cap must be a positive number of characters or None, got {string_cap}")
        if engine not in (None, "llguidance"):
            raise BackendError(f"the llama.cpp runtime constrains decoding with llguidance only, not {engine!r}",
                               hint="leave engine unset, or use runtime='transformers' for xgrammar or outlines_core")
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be 0 (off) or more, got {prefix_cache_mb}")
        self.n_threads = n_threads
        self.prefix_cache_mb = prefix_cache_mb
        self.n_ctx = n_ctx
        self.string_cap = string_cap
        self.n_gpu_layers = n_gpu_layers
        from guardrail.backends.embedded import EMBEDDED_MODELS, find_embedded_gguf, resolve_embedded

        if model in (None, "embedded") or model in EMBEDDED_MODELS:
            self.model_name = resolve_embedded(model).name
            self.path = find_embedded_gguf(self.model_name)  # fails now, with the install hint
        else:
            self.model_name = str(model)
            self.path = Path(model).expanduser()
            if not self.path.is_file():
                raise BackendError(f"no GGUF file at {self.path}", hint="the llama.cpp runtime takes 'embedded', an "
                                   f"embedded model's name ({', '.join(EMBEDDED_MODELS)}) or the path of a .gguf "
                                   "file; a Hugging Face model id needs runtime='transformers'")
        _import_llama_cpp()  # fail now, with the install hint, rather than at the first call
        if importlib.util.find_spec("llguidance") is None:
            raise BackendError("the llama.cpp runtime needs llguidance", hint=LLAMACPP_HINT)

    # -- loading and compiling ------------------------------------------------------------------

    def load(self) -> _LoadedLlama:
        """Load the model now (it otherwise loads on the first call); cached per process."""
        return _load(self.path.resolve(), self.n_ctx, self.n_gpu_layers)

    @property
    def compile_count(self) -> int:
        """How many grammar compilations have run for this backend's model (0 before loading)."""
        loaded = _MODELS.get((str(self.path.resolve()), self.n_ctx, self.n_gpu_layers))
        return loaded.compiles if loaded is not None else 0

    @property
    def prefix_hits(self) -> int:
        """How many prompts started from a saved KV-cache prefix (for this backend's model)."""
        loaded = _MODELS.get((str(self.path.resolve()), self.n_ctx, self.n_gpu_layers))
        return loaded.prefix_hits if loaded is not None else 0

    def prepare(self, schema: Schema) -> None:
        """Load the model and compile ``schema`` ahead of the first call."""
        _schema_grammar(self.load(), schema, self.string_cap, self.reasoning_tokens)

    def engine_for(self, schema: Schema) -> str | None:
        """``"llguidance"``, or None when it cannot constrain ``schema`` (generated unconstrained)."""
        found = _schema_grammar(self.load(), schema, self.string_cap, self.reasoning_tokens)
        return "llguidance" if found is not None else None

    # -- generating -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling, *,
                 spans: Sequence[Spans | None] | None = None) -> list[Generation]:
        """Generate one text per prompt, one after the other.

        ``spans``, one per prompt: the input whose spans the chosen string fields are held to
        while decoding (``guardrail.extractive``).

        >>> LlamaCppBackend().generate(["Ada, 36"], schema, Sampling(max_new_tokens=64))  # doctest: +SKIP
        """
        if not prompts:
            return []
        loaded = self.load()
        chosen = list(spans) if spans is not None else [None] * len(prompts)
        return [self._one(loaded, prompt, schema, sampling, one) for prompt, one in zip(prompts, chosen, strict=True)]

    async def agenerate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling, *,
                        spans: Sequence[Spans | None] | None = None) -> list[Generation]:
        """Async ``generate`` (in a worker thread)."""
        return await asyncio.to_thread(self.generate, prompts, schema, sampling, spans=spans)

    def stream(self, prompt: Prompt, schema: Schema, sampling: Sampling, *,
               spans: Spans | None = None) -> Iterator[StreamDelta]:
        """Generate for one prompt, yielding its text token by token (a character split across tokens
        comes whole with its last token); the joined deltas are exactly ``generate``'s text, the final
        one carries the token counts, finish reason and log-probabilities. Closing it early ends the
        generation at its next token. ``spans``: as ``generate``'s, for this prompt."""
        loaded = self.load()
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        closed = threading.Event()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # as _texts decodes the whole output

        def on_token(token: int) -> None:  # in the worker thread, with the model's lock held
            if closed.is_set():
                raise _StreamClosed("the stream was closed")
            if piece := decoder.decode(loaded.pieces[token]):
                pieces.put(piece)

        done: concurrent.futures.Future[Generation] = concurrent.futures.Future()

        def work() -> None:
            try:
                done.set_result(self._one(loaded, prompt, schema, sampling, spans, on_token))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread
                done.set_exception(exc)
            pieces.put(None)

        threading.Thread(target=work, name="guardrail-llamacpp-stream", daemon=True).start()
        sent = 0
        try:
            while (piece := pieces.get()) is not None:
                sent += len(piece)
                yield StreamDelta(piece)
            generation = done.result()
            if generation.text[sent:]:  # what the decoder held back at the very end
                yield StreamDelta(generation.text[sent:])
            yield StreamDelta(final=True, prompt_tokens=generation.prompt_tokens,
                              completion_tokens=generation.completion_tokens, finish_reason=generation.finish_reason,
                              logprobs=generation.logprobs)
        finally:
            closed.set()

    def _one(self, loaded: _LoadedLlama, prompt: Prompt, schema: Schema, sampling: Sampling,
             spans: Spans | None = None, on_token: Callable[[int], None] | None = None) -> Generation:
        """One generation; ``on_token`` gets each token of the output as it is chosen (an end token excepted).

        With ``reasoning``, extractive fields are checked after decoding only (the thinking grammar
        wraps the schema's own).
        """
        import numpy as np

        llama_cpp = _import_llama_cpp()
        tokens, cuts, opened = _tokens(loaded, prompt)
        grammar = (_schema_grammar(loaded, schema, self.string_cap, self.reasoning_tokens, opened)
                   if sampling.constrained else None)
        if not self.reasoning_tokens:
            grammar = _span_grammar(loaded, schema, self.string_cap, spans, grammar)
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise BackendError(f"the prompt has {len(tokens)} tokens, which leaves no room in a context of "
                               f"{self.n_ctx}", hint="pass a larger n_ctx, or shorten the prompt")
        thinking = tag_room(self.reasoning_tokens) if grammar is not None else 0
        budget = min(sampling.max_new_tokens + thinking, room)
        matcher = grammar.deep_copy() if grammar is not None else None
        bitmask = np.zeros((1, (loaded.n_vocab + 31) // 32), dtype=np.int32) if matcher is not None else None
        sample = sampling.temperature > 0
        rng = np.random.default_rng(sampling.seed) if sample else None
        penalty = sampling.repetition_penalty
        seen = set(tokens) if penalty is not None else set()
        llama = loaded.llama
        out: list[int] = []
        chosen_logprobs: list[float] = []
        finish = "length"
        with loaded.lock:  # one generation at a time per model
            started = time.perf_counter()
            threads = self._set_threads(llama_cpp, llama)
            _feed_prompt(llama_cpp, loaded, tokens, cuts, threads, self.prefix_cache_mb)
            for step in range(budget):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1),
                                               shape=(loaded.n_vocab,)).astype(np.float64)
                if penalty is not None and seen:
                    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
                    values = logits[ids]
                    logits[ids] = np.where(values < 0, values * penalty, values / penalty)
                if matcher is not None:
                    allowed = _allowed(matcher, bitmask, loaded.n_vocab)
                    if allowed is None:  # the grammar allows nothing (it should not happen): end here
                        out.append(loaded.eos)
                        finish = "stop"
                        break
                    logits[~allowed] = -np.inf
                top = float(np.max(logits))
                logprobs = logits - (top + np.log(np.sum(np.exp(logits - top))))
                token = _draw(logprobs, sampling, rng) if sample else int(np.argmax(logprobs))
                out.append(token)
                if token in loaded.end_tokens:
                    finish = "stop"
                    break
                chosen_logprobs.append(float(logprobs[token]))
                if matcher is not None and not matcher.consume_token(token):
                    out.append(loaded.eos)  # rejected (it should not happen): end, and let validation judge
                    finish = "stop"
                    break
                if on_token is not None:
                    on_token(token)
                if penalty is not None:
                    seen.add(token)
                if self.stop_loops and ends_in_loop(out):
                    finish = "repetition"
                    break
                if step + 1 < budget:
                    llama.eval([token])
        kept = out[:-1] if finish == "stop" else out
        pieces = _texts(loaded, kept)
        return Generation(
            text="".join(pieces),
            prompt_tokens=len(tokens),
            completion_tokens=len(out),
            finish_reason=finish,
            duration_s=time.perf_counter() - started,
            logprobs=list(zip(pieces, chosen_logprobs, strict=True)) if len(chosen_logprobs) == len(pieces) else None,
        )

    def _set_threads(self, llama_cpp: Any, llama: Any) -> int:
        wanted = self.n_threads or _default_threads()
        if (llama_cpp.llama_n_threads(llama.ctx), llama_cpp.llama_n_threads_batch(llama.ctx)) != (wanted, wanted):
            llama_cpp.llama_set_n_threads(llama.ctx, wanted, wanted)
        return wanted

    def describe(self) -> dict[str, Any]:
        """Backend, runtime, model file, threads, context and library versions, for reports."""
        info: dict[str, Any] = {"backend": type(self).__name__, "runtime": "llamacpp", "model": self.model_name,
                                "gguf": self.path.name, "engines": ["llguidance"], "string_cap": self.string_cap,
                                "threads": self.n_threads or _default_threads(), "n_ctx": self.n_ctx,
                                "prefix_cache_mb": self.prefix_cache_mb}
        loaded = _MODELS.get((str(self.path.resolve()), self.n_ctx, self.n_gpu_layers))
        if loaded is not None:
            info["load_seconds"] = round(loaded.load_seconds, 2)
        from importlib.metadata import PackageNotFoundError, version

        for package in ("llama_cpp_python", "llguidance", "numpy"):
            with suppress(PackageNotFoundError):
                info[package] = version(package)
        return info


class _StreamClosed(Exception):
    """Raised in the generating thread when nobody reads its stream any more: the generation ends."""
