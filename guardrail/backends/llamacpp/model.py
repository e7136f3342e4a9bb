"""The GGUF models llama.cpp has loaded, shared by every ``LlamaCppBackend`` of the process.

A model loads once per process per (file, context size, GPU layers), through ``llama_cpp.Llama``;
with it are kept its tokens' bytes, its end tokens, its chat template (``Jinja2ChatFormatter``),
the grammars compiled for it and the KV-cache snapshots of prompt prefixes.
"""

from __future__ import annotations

import atexit
import codecs
import os
import threading
import time
from collections import OrderedDict, deque
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.errors import BackendError

__all__ = ["LLAMACPP_HINT", "unload_llamacpp_models"]

LLAMACPP_HINT = "pip install 'guardrail-llm[llamacpp]'"


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


def _default_threads() -> int:
    """Half the cores, at least one: llama.cpp's default for generating, used for prompts too."""
    return max(1, (os.cpu_count() or 2) // 2)
