"""Local generation with llama.cpp (``llama-cpp-python``), constrained to a JSON Schema by llguidance.

``LlamaCppBackend`` runs a GGUF model in this process through ``llama_cpp.Llama``: the embedded
SmolLM2-135M-Instruct by default (read straight from its quantized GGUF file, nothing converted
or cached), or any GGUF file on disk. On a CPU it answers one request two to three times faster
than the transformers path (``guardrail.backends.local``): llama.cpp computes with the quantized
weights and its own kernels, where transformers dequantizes to float32 and pays PyTorch's
per-operator overhead at every token. See ``benchmarks/BENCHMARKS.md`` ("llama.cpp local
runtime") for figures and for when to pick which; in short, this one for single requests on a
CPU, transformers for batches, GPUs and Hugging Face models. Select it with
``Guard(schema, runtime="llamacpp")`` (``pip install 'guardrail-llm[llamacpp]'``).

How decoding is constrained. The decode loop is ours (prompt → ``Llama.eval`` → logits →
mask → pick → feed the token back), and the mask comes from llguidance, the engine the
transformers path tries first, driven through its llama.cpp tokenizer adapter
(``llguidance.llamacpp``): the same engine, the same *decoding schema* (``decoding_schema``:
capped strings without newlines, closed objects) and the same one-line layout (``SEPARATORS``),
so both runtimes allow exactly the same outputs. Alternatives considered:

* llama.cpp's own GBNF grammars (``LlamaGrammar.from_json_schema``) are fast, but
  llama-cpp-python 0.3.36's converter silently drops what it does not know: ``minimum``,
  ``maximum``, ``multipleOf``, ``format`` other than dates, times and UUIDs (so ``email`` and
  ``uri``), ``uniqueItems``, ``not``, ``maxLength`` beside a ``pattern`` (so the decoding
  schema's capped no-newline strings), and it reads ``oneOf`` as ``anyOf``; its sampler chain
  reports no per-token probabilities either;
* ``outlines.from_llamacpp`` returns text only (no token counts, finish reason or logprobs),
  rebuilds its logits processor per call and samples through llama.cpp's sampler chain, whose
  defaults (top-k 40, min-p 0.05) would have to be undone.

Owning the loop also gives: greedy or seeded sampling identical in meaning to the transformers
path (temperature, then top-k, then top-p, drawn from a NumPy generator seeded with
``Sampling.seed``), the same repetition penalty, ``logprobs`` under the *constrained
distribution* (see ``guardrail.backends.local._TokenLogprobs``), and snapshots of the KV cache for
prompt prefixes that requests share (the system prompt, the schema, the examples): later prompts
only evaluate what is new, with outputs identical bit for bit to a cold evaluation.

A schema llguidance refuses is generated unconstrained, with a warning; validation still runs.

``stream`` yields the output token by token from this loop (run in a worker thread, so a slow
reader never holds the model), ``reasoning=`` lets a reasoning model think before it answers
(``guardrail.backends.reasoning_grammar``), as in the transformers runtime.

>>> backend = LlamaCppBackend(n_threads=1)  # doctest: +SKIP
>>> [g.text for g in backend.generate(["Ada Lovelace, London"], Schema.load("contact"), Sampling())]  # doctest: +SKIP
['{"name": "Ada Lovelace", ...}']
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import concurrent.futures
import importlib.util
import json
import os
import queue
import sys
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta
from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP, SEPARATORS, decoding_schema
from guardrail.backends.local.engines import EngineRefused
from guardrail.backends.loops import ends_in_loop
from guardrail.backends.reasoning_grammar import reasoning_budget, reasoning_lark, tag_room, think_opened
from guardrail.errors import BackendError
from guardrail.events import engine_fallback
from guardrail.messages import text_only

if TYPE_CHECKING:
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

__all__ = ["LLAMACPP_HINT", "LlamaCppBackend", "unload_llamacpp_models"]

LLAMACPP_HINT = "pip install 'guardrail-llm[llamacpp]'"
#: Grammars held to one input's spans kept per model (an input recurs with its re-asks and votes).
_SPAN_GRAMMARS = 256
#: The shortest prompt prefix worth a KV-cache snapshot, in tokens.
_MIN_PREFIX = 32


# --------------------------------------------------------------------------------------------
# Loaded models, shared by every LlamaCppBackend of the process


@dataclass
class _Snapshot:
    state: Any  # a ctypes byte array from llama_state_seq_get_data
    size: int


@dataclass
class _LoadedLlama:
    path: Path
    llama: Any
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    formatter: Any = None  # a Jinja2ChatFormatter from the GGUF's chat template, or None
    history_formatter: Any = None  # the same without the generation prompt: renders leading messages
    eos: int = -1  # the token the grammar ends with
    end_tokens: frozenset[int] = frozenset()  # every end-of-generation token
    pieces: list[bytes] = field(default_factory=list)  # token id -> its bytes (special tokens: b"")
    tokenizer: Any = None  # llguidance's tokenizer, built on first constrained use (about 1 s)
    # (schema hash, string cap, thinking budget, block opened by the prompt) -> an LLMatcher in its
    # initial state, or the EngineRefused it raised
    grammars: dict[tuple[str, int | None, int, bool], Any] = field(default_factory=dict)
    # (schema hash, string cap, fields, input) -> a matcher holding those fields to the input's spans
    span_grammars: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict)
    compiles: int = 0
    # The KV-cache prefix snapshots: (threads, prompt prefix) -> the sequence state after it, most
    # recently used last; and the latest prompts, to spot a prefix worth a snapshot.
    snapshots: OrderedDict[tuple[int, tuple[int, ...]], _Snapshot] = field(default_factory=OrderedDict)
    recent: deque[tuple[int, tuple[int, ...]]] = field(default_factory=lambda: deque(maxlen=8))
    prefix_hits: int = 0

    @property
    def n_vocab(self) -> int:
        return int(self.llama.n_vocab())


_MODELS: dict[tuple[str, int, int], _LoadedLlama] = {}
_MODELS_LOCK = threading.Lock()


def unload_llamacpp_models() -> None:
    """Forget every loaded llama.cpp model and compiled grammar (the next use loads again)."""
    with _MODELS_LOCK:
        for loaded in _MODELS.values():
            with suppress(Exception):
                loaded.llama.close()
        _MODELS.clear()


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendError(f"the llama.cpp runtime needs llama-cpp-python ({exc})", hint=LLAMACPP_HINT) from exc
    return llama_cpp


def _load(path: Path, n_ctx: int, n_gpu_layers: int) -> _LoadedLlama:
    key = (str(path), n_ctx, n_gpu_layers)
    with _MODELS_LOCK:  # one load per (file, context size) even when threads race
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        llama_cpp = _import_llama_cpp()
        started = time.perf_counter()
        try:
            llama = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, logits_all=False,
                                    verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(f"llama.cpp could not load {path}: {exc}",
                               hint="is it a GGUF file of a model llama.cpp supports?") from exc
        if not _MODELS:
            # Free the models while llama_cpp can still do it: left to interpreter shutdown,
            # Llama.__del__ finds the module half torn down and prints a traceback.
            atexit.register(unload_llamacpp_models)
        loaded = _LoadedLlama(path, llama, time.perf_counter() - started)
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        loaded.eos = int(llama.token_eos())
        loaded.end_tokens = frozenset(t for t in range(loaded.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))
        loaded.end_tokens |= {loaded.eos}
        # Plain text of every token, as the output is assembled from them; control tokens are
        # empty, as transformers' skip_special_tokens makes them.
        loaded.pieces = [_piece(llama_cpp, vocab, t, special=False) for t in range(loaded.n_vocab)]
        template = llama.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def special(token: int) -> str:
                return _piece(llama_cpp, vocab, token, special=True).decode("utf-8", "replace") if token >= 0 else ""

            eos, bos = special(loaded.eos), special(int(llama.token_bos()))
            loaded.formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
            loaded.history_formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos,
                                                           add_generation_prompt=False)
        _MODELS[key] = loaded
        return loaded


def _piece(llama_cpp: Any, vocab: Any, token: int, *, special: bool) -> bytes:
    """The bytes of one token (``special``: control tokens as their text, else as nothing)."""
    import ctypes

    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, special)
        if written >= 0:
            return bytes(buffer.raw[:written])
        size = -written  # too small: llama.cpp says how much it needs


# --------------------------------------------------------------------------------------------
# The backend


class LlamaCppBackend(Backend):
    """A GGUF model run by llama.cpp in this process, constrained to the schema by llguidance.

    ``model``: ``None`` or ``"embedded"`` for the embedded SmolLM2-135M-Instruct, else the path of
    a ``.gguf`` file. ``n_threads``: CPU threads, for the prompt and for each token (``threads``
    is accepted as an alias, as ``LocalBackend`` spells it); default: half the cores, at least
    one. On a machine busy with other work, fewer threads are faster: llama.cpp's threads wait for
    each other at every layer. ``n_ctx``: the context window in tokens (prompt and output
    together). ``string_cap``: ``maxLength`` given, for decoding only, to strings that have none
    (``None``: no cap). ``engine``: only ``"llguidance"`` (or ``None``) exists here.
    ``n_gpu_layers``: layers to offload when llama-cpp-python was built with GPU support (default
    0: the CPU; for a GPU, the transformers path is the one guardrail tests).
    ``prefix_cache_mb``: memory for KV-cache snapshots of prompt prefixes (default 256 MB; 0
    turns them off). Leading messages that two prompts share (the system prompt with the schema,
    the few-shot examples) are saved, and later prompts that start with them only evaluate the
    rest: on a CPU the prompt is a large part of each request. Outputs are identical with or
    without snapshots (see ``_feed_prompt``). SmolLM2-135M takes about 15 KB per token of
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
        self._grammar(self.load(), schema)

    def engine_for(self, schema: Schema) -> str | None:
        """``"llguidance"``, or None when it cannot constrain ``schema`` (generated unconstrained)."""
        return "llguidance" if self._grammar(self.load(), schema) is not None else None

    def _grammar(self, loaded: _LoadedLlama, schema: Schema, opened: bool = False) -> Any:
        """The compiled grammar for ``schema`` (an LLMatcher to copy), or None: generate unconstrained.

        With ``reasoning``, the grammar of a thinking block then the schema (``opened``: the prompt
        has opened the block already).
        """
        key = (schema.hash, self.string_cap, self.reasoning_tokens, opened and bool(self.reasoning_tokens))
        with loaded.lock:
            if key not in loaded.grammars:
                loaded.compiles += 1
                target = decoding_schema(schema.json_schema, string_cap=self.string_cap, forbid_newlines=True,
                                         cap_patterns=True)
                try:
                    if self.reasoning_tokens:
                        answer = json.dumps({**target, "x-guidance": _LAYOUT})
                        lark = reasoning_lark(answer, self.reasoning_tokens, opened=opened)
                        loaded.grammars[key] = _compile(loaded, lark, lark=True)
                    else:
                        loaded.grammars[key] = _compile(loaded, json.dumps(target))
                except EngineRefused as exc:
                    loaded.grammars[key] = exc
                    warnings.warn(f"guardrail: llguidance cannot compile schema {schema.name!r} ({exc}); generating "
                                  "unconstrained, validation still applies", RuntimeWarning, stacklevel=4)
                    engine_fallback(schema.name, "llguidance", None, str(exc))
            found = loaded.grammars[key]
        return None if isinstance(found, EngineRefused) else found

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

    def _span_grammar(self, loaded: _LoadedLlama, schema: Schema, spans: Spans | None, plain: Any) -> Any:
        """The grammar holding ``spans.fields`` to spans of the input; ``plain`` (with a warning) if none."""
        if spans is None or plain is None:
            return plain
        key = (schema.hash, self.string_cap, spans.fields, spans.text)
        with loaded.lock:
            found = loaded.span_grammars.get(key)
        if found is not None:
            return found
        from guardrail.backends.span_grammar import span_lark

        target = decoding_schema(schema.json_schema, string_cap=self.string_cap, forbid_newlines=True, cap_patterns=True)
        try:
            lark, held = span_lark(target, spans.fields, spans.text)
            found = _compile(loaded, lark, lark=True) if held else None
            reason = "" if held else "no chosen field lies where the grammar can hold it"
        except (ValueError, EngineRefused) as exc:
            reason = str(exc)
        if found is None:
            warnings.warn(f"guardrail: extractive fields of schema {schema.name!r} are checked after decoding only: "
                          f"{reason}", RuntimeWarning, stacklevel=4)
            found = plain
        with loaded.lock:
            loaded.span_grammars[key] = found
            while len(loaded.span_grammars) > _SPAN_GRAMMARS:
                loaded.span_grammars.popitem(last=False)
        return found

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
        tokens, cuts, opened = self._tokens(loaded, prompt)
        grammar = self._grammar(loaded, schema, opened) if sampling.constrained else None
        if not self.reasoning_tokens:
            grammar = self._span_grammar(loaded, schema, spans, grammar)
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
            self._feed_prompt(llama_cpp, loaded, tokens, cuts, threads)
            for step in range(budget):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1),
                                               shape=(loaded.n_vocab,)).astype(np.float64)
                if penalty is not None and seen:
                    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
                    values = logits[ids]
                    logits[ids] = np.where(values < 0, values * penalty, values / penalty)
                if matcher is not None:
                    allowed = self._allowed(matcher, bitmask, loaded.n_vocab)
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

    def _feed_prompt(self, llama_cpp: Any, loaded: _LoadedLlama, tokens: list[int], cuts: list[int],
                     threads: int) -> None:
        """Evaluate the prompt into an empty KV cache, starting from a saved prefix when one fits.

        Outputs must not depend on what ran before, and llama.cpp's results do depend, slightly,
        on how a prompt is split into batches and on where its cells lie in the KV cache. So:

        * the cache is cleared first, so the cells lie as in a fresh process (llama.cpp's server
          instead keeps the cells of the previous request, which reorders them);
        * the prompt is always evaluated in the same pieces, cut where its messages end
          (``cuts``, which depend on the prompt only);
        * snapshots (``llama_state_seq_get_data``) are taken, and restored, only at those cuts:
          a restored prefix holds the very bytes that evaluating it would write, and the rest is
          computed exactly as without the snapshot.

        A cut is saved once a recent prompt shared it (the system prompt, the examples: whatever
        the requests of a guard have in common), within ``prefix_cache_mb``, least recently used
        out first. Tests check that outputs and log-probabilities are the same bit for bit with
        and without snapshots.
        """
        llama = loaded.llama
        llama._ctx.kv_cache_clear()
        llama.reset()
        start = 0
        save_at: set[int] = set()
        budget = int(self.prefix_cache_mb * 2**20)
        if budget > 0 and cuts:
            for cut in reversed(cuts):  # the longest saved prefix first
                key = (threads, tuple(tokens[:cut]))
                snapshot = loaded.snapshots.get(key)
                if snapshot is None:
                    continue
                if llama_cpp.llama_state_seq_set_data(llama.ctx, snapshot.state, snapshot.size, 0) == snapshot.size:
                    start = cut
                    llama.input_ids[:cut] = tokens[:cut]
                    llama.n_tokens = cut
                    loaded.snapshots.move_to_end(key)
                    loaded.prefix_hits += 1
                else:  # refused: forget it, and evaluate everything
                    del loaded.snapshots[key]
                    llama._ctx.kv_cache_clear()
                    llama.reset()
                break
            shared = max((_common(tokens, earlier) for count, earlier in loaded.recent if count == threads), default=0)
            save_at = {cut for cut in cuts if start < cut <= shared and cut >= _MIN_PREFIX}
            loaded.recent.append((threads, tuple(tokens)))
        for end in [*(cut for cut in cuts if cut > start), len(tokens)]:
            llama.eval(tokens[start:end])
            start = end
            if end in save_at:
                self._save(llama_cpp, loaded, (threads, tuple(tokens[:end])), budget)

    @staticmethod
    def _save(llama_cpp: Any, loaded: _LoadedLlama, key: tuple[int, tuple[int, ...]], budget: int) -> None:
        import ctypes

        size = int(llama_cpp.llama_state_seq_get_size(loaded.llama.ctx, 0))
        if size > budget:
            return
        state = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(loaded.llama.ctx, state, size, 0))
        if written <= 0:
            return
        loaded.snapshots[key] = _Snapshot(state, written)
        loaded.snapshots.move_to_end(key)
        while sum(s.size for s in loaded.snapshots.values()) > budget:
            loaded.snapshots.popitem(last=False)  # the least recently used

    @staticmethod
    def _allowed(matcher: Any, bitmask: Any, n_vocab: int) -> Any:
        """The tokens ``matcher`` allows next, as a boolean array; None when it allows none."""
        import llguidance.numpy
        import numpy as np

        if matcher.is_error():
            return None
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        words = bitmask[0] if sys.byteorder == "little" else bitmask[0].byteswap()
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)
        if allowed.shape[0] < n_vocab:  # logits wider than the grammar's vocabulary
            allowed = np.pad(allowed, (0, n_vocab - allowed.shape[0]))
        return allowed if allowed.any() else None

    @staticmethod
    def _tokens(loaded: _LoadedLlama, prompt: Prompt) -> tuple[list[int], list[int], bool]:
        """The prompt as tokens (through the GGUF's chat template when it has one), its cuts, and whether
        it opens a thinking block (``reasoning_grammar.think_opened``).

        The cuts are the token positions where a message ends (where the tokens of the leading
        messages alone stop), found from the prompt alone: the prompt is always evaluated in
        pieces between them, and KV-cache snapshots are taken only there (``_feed_prompt``).
        """
        prompt = text_only(prompt, "LlamaCppBackend")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        llama = loaded.llama
        if loaded.formatter is None:
            if isinstance(prompt, str):
                text = prompt
            else:  # a base model without a template: a plain transcript that ends where the answer goes
                text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            return list(llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)), [], think_opened(text)

        def encode(text: str) -> list[int]:
            # The template writes any special tokens itself (transformers: add_special_tokens=False).
            return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

        text = loaded.formatter(messages=messages).prompt
        tokens = encode(text)
        cuts = []
        for end in range(1, len(messages)):
            head = loaded.history_formatter(messages=messages[:end]).prompt
            if head and text.startswith(head):
                part = encode(head)
                if 0 < len(part) < len(tokens) and tokens[:len(part)] == part:
                    cuts.append(len(part))
        return tokens, sorted(set(cuts)), think_opened(text)

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


def _default_threads() -> int:
    """Half the cores, at least one: llama.cpp's default for generating, used for prompts too."""
    return max(1, (os.cpu_count() or 2) // 2)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


#: The one-line JSON layout both runtimes decode (``SEPARATORS``, no free whitespace).
_LAYOUT: Any = {"whitespace_flexible": False, "item_separator": SEPARATORS[0], "key_separator": SEPARATORS[1]}


def _compile(loaded: _LoadedLlama, grammar_text: str, *, lark: bool = False) -> Any:
    """An llguidance matcher for a JSON Schema (or, with ``lark``, a Lark grammar) over the model's
    vocabulary; EngineRefused if it cannot."""
    try:
        from llguidance import LLMatcher
        from llguidance.llamacpp import lltokenizer_from_vocab
    except ImportError as exc:
        raise BackendError(f"the llama.cpp runtime needs llguidance with llama.cpp support ({exc})",
                           hint=LLAMACPP_HINT) from exc
    if loaded.tokenizer is None:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(loaded.llama.model)
        with warnings.catch_warnings():  # it calls llama_token_get_attr, deprecated: two warnings per token
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded.tokenizer = lltokenizer_from_vocab(vocab, eos_token=loaded.eos)
    try:
        grammar = LLMatcher.grammar_from_lark(grammar_text) if lark else LLMatcher.grammar_from_json_schema(
            grammar_text, overrides=_LAYOUT)
    except ValueError as exc:
        raise EngineRefused(str(exc)) from exc
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, loaded.tokenizer)
    if is_error:
        raise EngineRefused("; ".join(messages) or "invalid grammar")
    matcher = LLMatcher(loaded.tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise EngineRefused(matcher.get_error())
    return matcher


def _draw(logprobs: Any, sampling: Sampling, rng: Any) -> int:
    """Sample a token as transformers does: temperature, then top-k, then top-p (keeping at least one)."""
    import numpy as np

    scores = logprobs / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.shape[0])
        scores = np.where(scores < np.partition(scores, -k)[-k], -np.inf, scores)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        order = np.argsort(scores, kind="stable")  # ascending, as transformers' TopPLogitsWarper
        probs = np.exp(scores[order] - np.max(scores))
        cumulative = np.cumsum(probs / probs.sum())
        drop = cumulative <= 1 - sampling.top_p
        drop[-1] = False
        scores = scores.copy()
        scores[order[drop]] = -np.inf
    probs = np.exp(scores - np.max(scores))
    cumulative = np.cumsum(probs)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), scores.shape[0] - 1))


def _texts(loaded: _LoadedLlama, tokens: list[int]) -> list[str]:
    """Each token's text, joining to the output: a character split across tokens goes to the last one."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pieces = [decoder.decode(loaded.pieces[t]) for t in tokens]
    tail = decoder.decode(b"", final=True)
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces.append(tail)
    return pieces
