"""Loaded transformers models, shared by every ``LocalBackend`` of the process.

A model loads once per (name, device), whatever the number of guards using it, and carries what
depends only on it: its tokenizer, the grammar-engine adapters (each converts the whole
vocabulary once), the compiled grammars, the stored prompt prefixes, and the one decode loop
(``Scheduler``) every request for it goes through.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from guardrail.backends.local.engines import ENGINE_CLASSES, Engine, EngineRefused
from guardrail.errors import BackendError

__all__ = ["LOCAL_HINT", "LoadedModel", "load", "loaded", "resolve_device", "unload_models"]

LOCAL_HINT = "pip install 'guardrail-llm[local]'"


@dataclass
class Compiled:
    """The engine chosen for a schema and its grammar; ``engine`` None: every engine refused."""

    engine: str | None
    grammar: Any = None


@dataclass
class LoadedModel:
    name: str
    device: str
    model: Any
    tokenizer: Any
    source: str
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    outlines_model: Any = None
    engines: dict[str, Engine | BaseException] = field(default_factory=dict)
    # (schema hash, engine, string cap) -> compiled grammar, or the EngineRefused it raised
    grammars: dict[tuple[str, str, int | None], Any] = field(default_factory=dict)
    # (schema hash, engine order, string cap) -> the engine chosen
    choices: dict[tuple[str, tuple[str, ...], int | None], Compiled] = field(default_factory=dict)
    # (schema hash, string cap, fields, input) -> the grammar holding those fields to the input's spans
    span_grammars: OrderedDict[tuple[Any, ...], Compiled] = field(default_factory=OrderedDict)
    compiles: int = 0
    disk_loads: int = 0  # grammars read from the on-disk cache instead of compiled
    _fingerprint: str | None = None
    _scheduler: Any = None
    _eos: frozenset[int] | None = None

    def scheduler(self, slots: int, threads: int | None) -> Any:
        """The decode loop of this model (started on first use)."""
        from guardrail.backends.local.scheduler import Scheduler

        with self.lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.model, self.tokenizer.pad_token_id, slots=slots, threads=threads)
            else:
                self._scheduler.threads = threads
                if slots != self._scheduler.slots:
                    self._scheduler.resize(slots)
            return self._scheduler

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every token that ends an answer: the generation config's end tokens and the tokenizer's."""
        if self._eos is None:
            shipped = getattr(self.model, "generation_config", None)
            eos = getattr(shipped, "eos_token_id", None)
            ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
            if self.tokenizer.eos_token_id is not None:
                ids.add(self.tokenizer.eos_token_id)
            self._eos = frozenset(int(i) for i in ids)
        return self._eos

    def tokenizer_fingerprint(self) -> str:
        """A digest of the vocabulary and special tokens: compiled grammars depend on nothing else."""
        if self._fingerprint is None:
            vocabulary = sorted(self.tokenizer.get_vocab().items())
            facts = [vocabulary, self.tokenizer.eos_token_id, getattr(self.model.config, "vocab_size", None)]
            self._fingerprint = hashlib.blake2b(json.dumps(facts).encode(), digest_size=16).hexdigest()
        return self._fingerprint

    def engine(self, name: str) -> Engine:
        """The adapter for engine ``name``, built once (it converts the whole vocabulary)."""
        found = self.engines.get(name)
        if found is None:
            try:
                if self.outlines_model is None:
                    import outlines

                    self.outlines_model = outlines.from_transformers(self.model, self.tokenizer)
                found = ENGINE_CLASSES[name](self.outlines_model)
            except ImportError as exc:
                found = exc
            self.engines[name] = found
        if isinstance(found, BaseException):
            raise EngineRefused(f"not installed ({found})")
        return found


_MODELS: dict[tuple[str, str], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def unload_models() -> None:
    """Forget every loaded model and compiled grammar (the next use loads again)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def loaded(name: str, device: str) -> LoadedModel | None:
    """The model if it is loaded already (never loads)."""
    return _MODELS.get((name, device))


def resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(name: str, device: str) -> LoadedModel:
    """Load ``name`` (an embedded model's name, a Hugging Face id or a directory) on ``device``, once."""
    key = (name, device)
    with _MODELS_LOCK:  # one load per (model, device) even when threads race
        found = _MODELS.get(key)
        if found is not None:
            return found
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"local models need torch and transformers ({exc})", hint=LOCAL_HINT) from exc
        started = time.perf_counter()
        from guardrail.backends.embedded import EMBEDDED_MODELS, load_embedded

        if name in EMBEDDED_MODELS or name == "embedded":
            embedded = load_embedded(name)
            model, tokenizer, source = embedded.model, embedded.tokenizer, f"embedded ({embedded.source})"
        else:
            model, tokenizer = _load_pretrained(name)
            source = "pretrained"
        if device != "cpu":
            try:
                model = model.to(device)
            except (RuntimeError, AssertionError) as exc:  # e.g. "Torch not compiled with CUDA enabled"
                raise BackendError(f"cannot move the model to {device}: {exc}") from exc
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        found = LoadedModel(name, device, model, tokenizer, source, time.perf_counter() - started)
        _MODELS[key] = found
        return found


def _load_pretrained(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        # local_files_only: guardrail never downloads weights; the model must already be on disk.
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackendError(
            f"could not load the model {name!r} from disk: {exc}",
            hint="give a local directory, or a model id already in the Hugging Face cache (guardrail never downloads)",
        ) from exc
    return model, tokenizer
