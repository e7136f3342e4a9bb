"""Local generation with transformers, constrained to a JSON Schema through outlines' engines.

``LocalBackend`` runs a causal LM in this process: the embedded SmolLM2-135M-Instruct by
default, or any Hugging Face model id / directory already on disk (never downloaded). Every
prompt of a ``generate`` call goes through ONE batched ``model.generate`` (left padding, an
attention mask), masked token by token by a grammar engine so that the output can only be JSON
that the schema allows.

How outlines is used, and why not its ``Generator``: outlines' backend classes
(``LLGuidanceBackend``, ``XGrammarBackend``, ``OutlinesCoreBackend``, built on
``outlines.from_transformers``) adapt the tokenizer for each engine, and the engine compiles the
schema once per (schema hash, engine). Masking is done by ``_GrammarMask`` below instead of
outlines' logits processors because, with outlines 1.3.3 on a CPU, those processors

* apply the mask with a ``torch.compile`` kernel (llguidance, outlines_core): the first call
  costs about 30 s and needs a C compiler;
* recompile the llguidance grammar for every row of every call, and only warn when the grammar is
  invalid, so an engine that refuses a schema is never noticed and cannot be fallen back from;
* hold per-generation state, so one cached processor cannot serve two threads;
* return only text, while we report tokens and the finish reason per prompt.

The engines are tried in the order llguidance (fastest to compile, most complete), xgrammar,
outlines_core; one that refuses a schema is skipped with a warning naming it and its reason, and
when all refuse the text is generated unconstrained (validation still runs).

Runaway output: a small model under a constraint can stay inside a string until the token
budget runs out (``"phone": "+81 3 1234 5678 } 2022-01-22 22:22:58 ...``). The grammar is
therefore compiled from a *decoding* schema (``decoding_schema``): strings without ``maxLength``
get ``string_cap``; with llguidance, free strings also get a no-newline ``pattern``; objects
that list their properties get ``additionalProperties: false``. The JSON is laid out on one line
(``SEPARATORS``), so there is no whitespace to run on in either. Validation always uses the
user's schema.

>>> from guardrail.schema import Schema  # doctest: +SKIP
>>> backend = LocalBackend()  # the embedded model, loaded on first use  # doctest: +SKIP
>>> schema = Schema.load({"type": "object", "properties": {"name": {"type": "string"}}})  # doctest: +SKIP
>>> [g.text for g in backend.generate(["Extract the name: Ada Lovelace"], schema, Sampling())]  # doctest: +SKIP
['{"name": "Ada Lovelace"}']
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling
from guardrail.backends.loops import LoopStop
from guardrail.backends.prefix_cache import PrefixCache, left_padded
from guardrail.errors import BackendError

if TYPE_CHECKING:
    from guardrail.schema import Schema

__all__ = [
    "DEFAULT_STRING_CAP",
    "ENGINES",
    "SEPARATORS",
    "EngineRefused",
    "LocalBackend",
    "decoding_schema",
    "unload_models",
]

#: Grammar engines, in the default order of preference.
ENGINES: tuple[str, ...] = ("llguidance", "xgrammar", "outlines_core")
#: ``maxLength`` given to strings that have none. About 50 tokens: enough for names, addresses,
#: one-sentence summaries; short enough that a string that never closes ends soon.
DEFAULT_STRING_CAP = 200
#: How the JSON is laid out: on one line with these separators, as ``json.dumps`` writes it (and
#: so as the few-shot examples show it). Free whitespace lets a small model wander into runs of
#: newlines; on a sample of the shipped schemas the fixed layout was as accurate and 8% shorter.
SEPARATORS = (", ", ": ")
LOCAL_HINT = "pip install 'guardrail[local]'"
# A free string may not contain a line break: a newline inside a value is how a small model starts
# writing prose or the rest of the document into one field.
_NO_NEWLINE = "^[^\\n\\r]*$"


class EngineRefused(Exception):
    """An engine cannot compile a schema (an unsupported keyword, a regex it cannot parse...)."""


# --------------------------------------------------------------------------------------------
# The decoding schema


def decoding_schema(json_schema: Any, *, string_cap: int | None = DEFAULT_STRING_CAP,
                    forbid_newlines: bool = False, cap_patterns: bool = True, close_objects: bool = True) -> Any:
    """The schema the decoder is held to: ``json_schema`` tightened against runaway output.

    Every output it allows is valid against ``json_schema`` too, so the user's schema stays the
    one that validates. Changes, in positive positions only (never under ``not`` or ``if``):

    * a string without ``maxLength``, ``enum`` or ``const`` gets ``maxLength: string_cap``
      (at least its ``minLength``); ``string_cap=None`` leaves strings alone, and
      ``cap_patterns=False`` leaves those with a ``pattern`` or ``format`` alone (for engines that
      cannot apply both: outlines_core lets ``maxLength`` replace the pattern);
    * with ``forbid_newlines``, such a string that also has no ``pattern`` or ``format`` gets a
      pattern that rejects line breaks;
    * with ``close_objects``, an object that lists ``properties`` and says nothing about other
      properties gets ``additionalProperties: false``, unless the schema combines object schemas
      (``allOf``, ``$ref`` beside ``properties``...), where closing one part would reject the
      properties of another.

    >>> decoding_schema({"type": "object", "properties": {"a": {"type": "string"}}}, string_cap=50)
    {'type': 'object', 'properties': {'a': {'type': 'string', 'maxLength': 50}}, 'additionalProperties': False}
    """
    result = copy.deepcopy(json_schema)
    close = close_objects and not _combines_objects(result)
    _tighten(result, string_cap, forbid_newlines, cap_patterns, close)
    return result


# Keywords whose value is one subschema, a list of them, or a name -> subschema map, and where
# narrowing the subschema narrows the whole. "not", "if" and "propertyNames" are left out on
# purpose: narrowing inside them would widen (or shift) what the whole accepts.
_ONE = ("items", "additionalProperties", "contains", "then", "else", "unevaluatedItems",
        "unevaluatedProperties", "additionalItems")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _subschemas(node: dict[str, Any]) -> Iterator[Any]:
    for key in _ONE:
        if isinstance(node.get(key), dict):
            yield node[key]
    for key in _MANY:
        if isinstance(node.get(key), list):
            yield from node[key]
    for key in _MAP:
        if isinstance(node.get(key), dict):
            yield from node[key].values()


def _tighten(node: Any, cap: int | None, forbid_newlines: bool, cap_patterns: bool, close: bool) -> None:
    if not isinstance(node, dict):
        return
    types = node.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and not {"maxLength", "enum", "const"} & node.keys():
        if cap is not None and (cap_patterns or not {"pattern", "format"} & node.keys()):
            minimum = node.get("minLength")
            node["maxLength"] = max(cap, minimum) if isinstance(minimum, int) else cap
        if forbid_newlines and not {"pattern", "format"} & node.keys():
            node["pattern"] = _NO_NEWLINE
    if (close and isinstance(node.get("properties"), dict)
            and not {"additionalProperties", "patternProperties", "unevaluatedProperties"} & node.keys()):
        node["additionalProperties"] = False
    for sub in _subschemas(node):
        _tighten(sub, cap, forbid_newlines, cap_patterns, close)


def _combines_objects(node: Any) -> bool:
    """True if object schemas are merged anywhere (then no object may be closed)."""
    if isinstance(node, list):
        return any(_combines_objects(item) for item in node)
    if not isinstance(node, dict):
        return False
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        return True
    if ("$ref" in node or "$dynamicRef" in node or "allOf" in node) and {
        "properties", "required", "patternProperties", "additionalProperties"
    } & node.keys():
        return True
    if "dependentSchemas" in node or "if" in node:
        return True
    return any(
        _combines_objects(value) for key, value in node.items()
        if key not in ("enum", "const", "default", "examples")
    )


#: JSON Schema keywords that constrain instances (drafts 7 to 2020-12); the rest are annotations.
VALIDATION_KEYWORDS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems", "maxContains",
    "minContains", "contains", "maxProperties", "minProperties", "required", "dependentRequired", "dependencies",
    "dependentSchemas", "properties", "patternProperties", "additionalProperties", "propertyNames", "items",
    "prefixItems", "additionalItems", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not",
    "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef",
})
_NAMES = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _validation_keywords(node: Any) -> set[str]:
    """Every validation keyword used anywhere in a schema (an unreachable $defs entry included).

    ``maxLength``/``minLength`` next to ``pattern`` or ``format`` count as ``"length with pattern"``,
    which the fallback engines drop.
    """
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in ("enum", "const", "default", "examples"):  # values, not schemas
                found |= {key} & VALIDATION_KEYWORDS
            elif key in _NAMES and isinstance(value, dict):  # names -> schemas
                found |= {key} & VALIDATION_KEYWORDS
                stack.extend(value.values())
            elif key in VALIDATION_KEYWORDS:
                found.add(key)
                stack.append(value)
            elif isinstance(value, (dict, list)) and key not in ("required", "type"):
                stack.append(value)  # an unknown keyword holding schemas ($defs in older drafts...)
        if {"maxLength", "minLength"} & item.keys() and {"pattern", "format"} & item.keys():
            found.add("length with pattern")
    return found


# --------------------------------------------------------------------------------------------
# Engines: compile once per schema, then hand out one matcher per row of a batch


class _Engine:
    """One grammar engine bound to one tokenizer. Subclasses compile and drive matchers."""

    name = ""
    forbid_newlines = False  # whether it can hold free strings to a no-newline pattern
    cap_patterns = False  # whether it applies maxLength together with a pattern or format
    #: The validation keywords it enforces; None: all it accepts (it refuses what it cannot do).
    #: An engine that silently ignores a keyword would let through output the validator rejects,
    #: so a schema using any other keyword is refused before compiling (see ``admit``).
    enforces: frozenset[str] | None = None

    def __init__(self, outlines_model: Any) -> None:
        """Adapt the tokenizer of ``outlines_model`` (an ``outlines.from_transformers`` model)."""

    def words(self, width: int) -> int:
        """int32 words per row of the bitmask, for logits ``width`` wide."""
        return (width + 31) // 32

    def admit(self, schema: Any) -> None:
        """Raise ``EngineRefused`` if the engine would ignore a keyword of ``schema`` (never widen it)."""
        if self.enforces is None:
            return
        ignored = sorted(_validation_keywords(schema) - self.enforces)
        if ignored:
            raise EngineRefused(f"it would ignore {', '.join(ignored)}")

    def compile(self, schema_json: str) -> Any:
        raise NotImplementedError

    def serialize(self, compiled: Any) -> bytes | None:
        """The compiled grammar as plain data for the on-disk cache, or None if not worth it."""
        return None

    def deserialize(self, payload: bytes) -> Any:
        raise NotImplementedError

    def new_matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def advance(self, matcher: Any, token: int) -> bool:
        """Feed the sampled token; False if the matcher rejects it."""
        raise NotImplementedError

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens of ``matcher`` into ``bitmask[row]``."""
        raise NotImplementedError

    def accepts(self, compiled: Any, tokens: Sequence[int]) -> bool:
        """Whether the grammar lets ``tokens`` be a complete output (used to check soundness)."""
        matcher = self.new_matcher(compiled)
        return all(self.advance(matcher, t) for t in tokens) and self.complete(matcher)

    def complete(self, matcher: Any) -> bool:
        """Whether the output so far may end here."""
        raise NotImplementedError


class _LLGuidance(_Engine):
    name = "llguidance"
    # llguidance applies maxLength and pattern together, and matches the pattern against the
    # decoded string (a "\n" escape is a newline), so it can forbid line breaks.
    forbid_newlines = True
    cap_patterns = True

    def __init__(self, outlines_model: Any) -> None:
        from outlines.backends.llguidance import LLGuidanceBackend

        self.tokenizer = LLGuidanceBackend(outlines_model).llg_tokenizer

    def words(self, width: int) -> int:
        return (self.tokenizer.vocab_size + 31) // 32  # llguidance writes exactly its vocabulary

    def compile(self, schema_json: str) -> Any:
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(schema_json, overrides={
                "whitespace_flexible": False, "item_separator": SEPARATORS[0], "key_separator": SEPARATORS[1]})
        except ValueError as exc:
            raise EngineRefused(str(exc)) from exc
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise EngineRefused("; ".join(messages) or "invalid grammar")
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise EngineRefused(matcher.get_error())
        return matcher  # a matcher in its initial state; rows get deep copies

    def new_matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def advance(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        target = bitmask[row]
        matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * target.element_size())

    def complete(self, matcher: Any) -> bool:
        return not matcher.is_error() and bool(matcher.is_accepting())


class _XGrammar(_Engine):
    name = "xgrammar"
    # On the JSONSchemaBench dev sample it compiled schemas with "not", "dependencies",
    # "uniqueItems" and "oneOf" (as anyOf) and then accepted instances those keywords forbid.
    enforces = frozenset({"type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                          "minLength", "maxLength", "pattern", "format", "minItems", "maxItems", "items",
                          "prefixItems", "properties", "required", "additionalProperties", "anyOf", "$ref"})
    # xgrammar ignores maxLength next to a pattern or format (it prints a warning), so it gets the
    # cap alone.

    def __init__(self, outlines_model: Any) -> None:
        from outlines.backends.xgrammar import XGrammarBackend

        self.compiler = XGrammarBackend(outlines_model).grammar_compiler
        self.tokenizer_info: Any = None  # the compiler does not expose it: taken from a trivial grammar

    def serialize(self, compiled: Any) -> bytes | None:
        return str(compiled.serialize_json()).encode()

    def deserialize(self, payload: bytes) -> Any:
        import xgrammar

        if self.tokenizer_info is None:
            self.tokenizer_info = self.compiler.compile_builtin_json_grammar().tokenizer_info
        return xgrammar.CompiledGrammar.deserialize_json(payload.decode(), self.tokenizer_info)

    def compile(self, schema_json: str) -> Any:
        try:
            return self.compiler.compile_json_schema(schema_json, any_whitespace=False, separators=SEPARATORS)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise EngineRefused(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)) from exc

    def new_matcher(self, compiled: Any) -> Any:
        import xgrammar

        return xgrammar.GrammarMatcher(compiled)

    def advance(self, matcher: Any, token: int) -> bool:
        return matcher.is_terminated() or bool(matcher.accept_token(token))

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def complete(self, matcher: Any) -> bool:
        return bool(matcher.is_completed())


class _OutlinesCore(_Engine):
    name = "outlines_core"
    enforces = _XGrammar.enforces
    # maxLength next to a pattern or format replaces them in its regex, so those are not capped.

    def __init__(self, outlines_model: Any) -> None:
        from outlines.backends.outlines_core import OutlinesCoreBackend

        self.vocabulary = OutlinesCoreBackend(outlines_model).vocabulary

    def serialize(self, compiled: Any) -> bytes | None:
        _, (payload,) = compiled.__reduce__()  # (Index.from_binary, (bincode bytes,)): plain data
        return bytes(payload)

    def deserialize(self, payload: bytes) -> Any:
        from outlines_core import Index

        return Index.from_binary(payload)

    def compile(self, schema_json: str) -> Any:
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        try:
            # Its default whitespace, "[ ]?", is the closest it comes to SEPARATORS.
            regex = build_regex_from_schema(schema_json, None)
            return Index(regex, self.vocabulary)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise EngineRefused(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from exc

    def new_matcher(self, compiled: Any) -> Any:
        from outlines_core import Guide

        return Guide(compiled)

    def advance(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token_id=token, return_tokens=False)
        except (ValueError, RuntimeError):
            return False
        return True

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        target = bitmask[row]
        matcher.write_mask_into(target.data_ptr(), target.numel(), target.element_size())

    def complete(self, matcher: Any) -> bool:
        return bool(matcher.is_finished())


_ENGINE_CLASSES: dict[str, type[_Engine]] = {"llguidance": _LLGuidance, "xgrammar": _XGrammar,
                                             "outlines_core": _OutlinesCore}


class _GrammarMask:
    """A transformers logits processor that masks each row of a batch with its own matcher.

    Made fresh for every ``generate`` call from a compiled grammar, so nothing shared is mutated.
    A row stops being masked once it has produced EOS (transformers pads it from then on); a row
    whose matcher rejects a token (it should not happen) or allows nothing is made to end with EOS,
    so that validation, not an exception, reports it.
    """

    def __init__(self, engine: _Engine, compiled: Any, eos_ids: frozenset[int]) -> None:
        self.engine = engine
        self.compiled = compiled
        self.eos_ids = eos_ids
        self.matchers: list[Any] | None = None
        self.state: list[str] = []  # per row: "active", "done" (produced EOS) or "broken"
        self.bitmask: Any = None
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        batch, width = scores.shape
        if self.matchers is None:
            self.matchers = [self.engine.new_matcher(self.compiled) for _ in range(batch)]
            self.state = ["active"] * batch
            self.bitmask = torch.zeros((batch, self.engine.words(width)), dtype=torch.int32)
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.state[row] != "active":
                    continue
                if token in self.eos_ids:
                    self.state[row] = "done"
                elif not self.engine.advance(self.matchers[row], token):
                    self.state[row] = "broken"
        self.steps += 1
        for row, state in enumerate(self.state):
            if state == "active":
                self.engine.fill(self.matchers[row], self.bitmask, row)
            else:
                self.bitmask[row] = -1  # anything: the token is replaced by padding or EOS below
        bias = _bitmask_bias(self.bitmask, width)
        stuck = ~(self.bitmask != 0).any(dim=1)  # an active row that allows no token at all
        eos = sorted(i for i in self.eos_ids if i < width)
        for row, state in enumerate(self.state):
            if state == "broken" or (state == "active" and bool(stuck[row])):
                bias[row] = float("-inf")
                bias[row, eos] = 0.0
        return scores + bias.to(scores.device)


_BIAS_TABLE: Any = None


def _bitmask_bias(bitmask: Any, width: int) -> Any:
    """The additive mask for a packed bitmask: 0 where a token is allowed, -inf elsewhere.

    Each byte of the (little-endian) int32 words is looked up in a 256 x 8 table, which is 2-3
    times faster on a CPU than unpacking the bits with shifts (1.5 ms against 3.5-4.7 ms per step
    at batch 16, against about 170 ms for the forward pass).
    """
    import torch

    global _BIAS_TABLE
    if _BIAS_TABLE is None:
        bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1
        _BIAS_TABLE = torch.where(bits.bool(), 0.0, float("-inf"))
    rows = bitmask.shape[0]
    packed = bitmask.view(torch.uint8)
    if sys.byteorder == "big":  # pragma: no cover - put each word's low byte first
        packed = packed.view(rows, -1, 4).flip(-1).reshape(rows, -1)
    bias = torch.nn.functional.embedding(packed.long(), _BIAS_TABLE).view(rows, -1)
    if bias.shape[1] < width:  # logits wider than the grammar's vocabulary: padding tokens are never allowed
        bias = torch.nn.functional.pad(bias, (0, width - bias.shape[1]), value=float("-inf"))
    return bias[:, :width]


# --------------------------------------------------------------------------------------------
# Loaded models, shared by every LocalBackend of the process


@dataclass
class _Compiled:
    engine: str | None  # None: every engine refused, generate unconstrained
    grammar: Any = None


@dataclass
class _LoadedModel:
    name: str
    device: str
    model: Any
    tokenizer: Any
    source: str
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    outlines_model: Any = None
    engines: dict[str, _Engine | BaseException] = field(default_factory=dict)
    # (schema hash, engine, string cap) -> compiled grammar, or the EngineRefused it raised
    grammars: dict[tuple[str, str, int | None], Any] = field(default_factory=dict)
    # (schema hash, engine order, string cap) -> the engine chosen
    choices: dict[tuple[str, tuple[str, ...], int | None], _Compiled] = field(default_factory=dict)
    compiles: int = 0
    disk_loads: int = 0  # grammars read from the on-disk cache instead of compiled
    _fingerprint: str | None = None
    _prefixes: PrefixCache | None = None

    def prefixes(self) -> PrefixCache:
        """Key/value states of recent prompt prefixes (built on first use)."""
        if self._prefixes is None:
            self._prefixes = PrefixCache(self.model)
        return self._prefixes

    def tokenizer_fingerprint(self) -> str:
        """A digest of the vocabulary and special tokens: compiled grammars depend on nothing else."""
        if self._fingerprint is None:
            import hashlib

            vocabulary = sorted(self.tokenizer.get_vocab().items())
            facts = [vocabulary, self.tokenizer.eos_token_id, getattr(self.model.config, "vocab_size", None)]
            self._fingerprint = hashlib.blake2b(json.dumps(facts).encode(), digest_size=16).hexdigest()
        return self._fingerprint

    def engine(self, name: str) -> _Engine:
        """The adapter for engine ``name``, built once (it converts the whole vocabulary)."""
        found = self.engines.get(name)
        if found is None:
            try:
                if self.outlines_model is None:
                    import outlines

                    self.outlines_model = outlines.from_transformers(self.model, self.tokenizer)
                found = _ENGINE_CLASSES[name](self.outlines_model)
            except ImportError as exc:
                found = exc
            self.engines[name] = found
        if isinstance(found, BaseException):
            raise EngineRefused(f"not installed ({found})")
        return found


_MODELS: dict[tuple[str, str], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def unload_models() -> None:
    """Forget every loaded model and compiled grammar (the next use loads again)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(name: str, device: str) -> _LoadedModel:
    key = (name, device)
    with _MODELS_LOCK:  # one load per (model, device) even when threads race
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"local models need torch and transformers ({exc})", hint=LOCAL_HINT) from exc
        started = time.perf_counter()
        if name == "embedded":
            from guardrail.backends.embedded import load_embedded

            embedded = load_embedded()
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
        # Batches are left-padded so every row's last position is its newest token.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = _LoadedModel(name, device, model, tokenizer, source, time.perf_counter() - started)
        _MODELS[key] = loaded
        return loaded


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


# --------------------------------------------------------------------------------------------
# The backend


class LocalBackend(Backend):
    """A transformers model in this process, constrained to the schema by a grammar engine.

    ``model``: ``None`` or ``"embedded"`` for the embedded SmolLM2-135M-Instruct, else a Hugging
    Face id or directory already on disk. ``engine``: the grammar engine to try first (default
    ``"llguidance"``); the others follow in ``ENGINES`` order as fallbacks. ``device``: ``"cpu"``,
    ``"cuda"``... (default: CUDA when available). ``string_cap``: ``maxLength`` given, for
    decoding only, to strings that have none (``None``: no cap). ``threads``: torch CPU threads
    while generating (default: torch's setting, one per core). On a machine busy with other work,
    ``threads=1`` can be several times faster: torch's threads spin waiting for each other.
    ``grammar_cache``: where xgrammar and outlines_core grammars are kept between processes
    (default ``cache_root()/grammars``; ``False``: compile in every process). See
    ``guardrail.backends.grammar_cache``. ``share_prefix``: prefill the prompts' common prefix
    (the guard's instructions) once per batch and keep it for later calls (default ``True``; see
    ``guardrail.backends.prefix_cache``). ``stop_loops``: end a row whose newest tokens repeat one
    unit over and over, with ``finish_reason="repetition"`` (default ``True``; see
    ``guardrail.backends.loops``).

    The model loads on first use, once per process per (model, device); each schema is compiled
    once per engine, so a warm call compiles nothing (``compile_count`` says how many compilations
    ran). ``duration_s`` of each ``Generation`` is the wall time of the whole batched call that
    produced it; ``completion_tokens`` counts the EOS token and no padding. ``logprobs`` lists the
    output's tokens (EOS excluded) with the natural-log probability of each under the constrained
    distribution: the model's next-token distribution at temperature 1, after the repetition
    penalty, restricted to the tokens the grammar allows and renormalised, before temperature,
    top-k and top-p (so greedy and sampled outputs get comparable values; see ``_TokenLogprobs``).

    >>> backend = LocalBackend()  # doctest: +SKIP
    >>> backend.generate(["Ada Lovelace, ada@example.com"], Schema.load("contact"), Sampling())  # doctest: +SKIP
    [Generation(text='{"name": "Ada Lovelace", ...}', prompt_tokens=61, completion_tokens=34, ...)]
    """

    batches = True
    wants_instructions = True

    def __init__(self, model: str | None = None, *, engine: str | None = None, device: str | None = None,
                 string_cap: int | None = DEFAULT_STRING_CAP, threads: int | None = None,
                 grammar_cache: bool | str | os.PathLike[str] = True, share_prefix: bool = True,
                 stop_loops: bool = True) -> None:
        self.share_prefix = share_prefix
        self.stop_loops = stop_loops
        self.model_name = "embedded" if model in (None, "embedded") else str(model)
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
        if self.model_name == "embedded":
            from guardrail.backends.embedded import find_embedded_gguf

            find_embedded_gguf()  # fail now, with the install hint, rather than at the first call

    # -- loading and compiling ------------------------------------------------------------------

    def load(self) -> _LoadedModel:
        """Load the model now (it otherwise loads on the first call); cached per process."""
        return _load(self.model_name, _resolve_device(self._device))

    @property
    def compile_count(self) -> int:
        """How many grammar compilations have run for this backend's model (0 before loading)."""
        loaded = _MODELS.get((self.model_name, _resolve_device(self._device)))
        return loaded.compiles if loaded is not None else 0

    @property
    def disk_load_count(self) -> int:
        """How many grammars were read from the on-disk cache instead of compiled."""
        loaded = _MODELS.get((self.model_name, _resolve_device(self._device)))
        return loaded.disk_loads if loaded is not None else 0

    def prepare(self, schema: Schema) -> None:
        """Compile ``schema`` for the first engine that accepts it, ahead of the first call."""
        self._compiled(self.load(), schema)

    def engine_for(self, schema: Schema) -> str | None:
        """The engine that constrains ``schema`` (compiling it if needed); None means unconstrained."""
        return self._compiled(self.load(), schema).engine

    def _compiled(self, loaded: _LoadedModel, schema: Schema) -> _Compiled:
        key = (schema.hash, self.engines, self.string_cap)
        with loaded.lock:
            choice = loaded.choices.get(key)
            if choice is not None:
                return choice
            reasons: list[str] = []
            for name in self.engines:
                try:
                    grammar = self._grammar(loaded, schema, name)
                except EngineRefused as exc:
                    reasons.append(f"{name}: {exc}")
                    following = next((e for e in self.engines[self.engines.index(name) + 1:]), "unconstrained")
                    warnings.warn(
                        f"guardrail: the {name} engine cannot compile schema {schema.name!r} ({exc}); "
                        f"falling back to {following}", RuntimeWarning, stacklevel=3)
                    continue
                choice = _Compiled(name, grammar)
                break
            else:
                warnings.warn(f"guardrail: no engine can compile schema {schema.name!r}; generating unconstrained, "
                              f"validation still applies ({'; '.join(reasons)})", RuntimeWarning, stacklevel=3)
                choice = _Compiled(None)
            loaded.choices[key] = choice
            return choice

    def _grammar(self, loaded: _LoadedModel, schema: Schema, name: str) -> Any:
        key = (schema.hash, name, self.string_cap)
        if key not in loaded.grammars:
            engine = loaded.engine(name)
            target = decoding_schema(schema.json_schema, string_cap=self.string_cap,
                                     forbid_newlines=engine.forbid_newlines, cap_patterns=engine.cap_patterns)
            try:
                engine.admit(target)
            except EngineRefused as exc:
                loaded.grammars[key] = exc
            else:
                loaded.grammars[key] = self._compile_or_read(loaded, engine, json.dumps(target))
        found = loaded.grammars[key]
        if isinstance(found, EngineRefused):
            raise found
        return found

    def _compile_or_read(self, loaded: _LoadedModel, engine: _Engine, schema_json: str) -> Any:
        """Compile, or read what an earlier process compiled; an engine's refusal is returned."""
        disk, entry = None, ""
        if self.grammar_cache is not None and type(engine).serialize is not _Engine.serialize:
            from guardrail.backends.grammar_cache import GrammarCache

            disk = GrammarCache(self.grammar_cache)
            facts = {"engine": engine.name, "version": _version(engine.name), "tokenizer": loaded.tokenizer_fingerprint()}
            entry = disk.key(facts["engine"], facts["version"], facts["tokenizer"], schema_json)
            payload = disk.load(entry, **facts)
            if payload is not None:
                try:
                    compiled = engine.deserialize(payload)
                except Exception as exc:  # noqa: BLE001 - an engine that cannot read it: compile instead
                    warnings.warn(f"guardrail: ignoring a cached {engine.name} grammar it cannot read ({exc})",
                                  RuntimeWarning, stacklevel=5)
                else:
                    loaded.disk_loads += 1
                    return compiled
        loaded.compiles += 1
        try:
            compiled = engine.compile(schema_json)
        except EngineRefused as exc:
            return exc
        if disk is not None:
            payload = engine.serialize(compiled)
            if payload is not None:
                try:
                    disk.store(entry, payload, **facts)
                except OSError as exc:  # a read-only or full disk: only slower next time
                    warnings.warn(f"guardrail: could not write the grammar cache {disk.root}: {exc}",
                                  RuntimeWarning, stacklevel=5)
        return compiled

    # -- generating -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        """Generate one text per prompt, all in one batched call.

        >>> LocalBackend().generate(["Ada, 36"], schema, Sampling(max_new_tokens=64))  # doctest: +SKIP
        """
        if not prompts:
            return []
        loaded = self.load()
        started = time.perf_counter()
        compiled = self._compiled(loaded, schema) if sampling.constrained else _Compiled(None)
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        tokenizer, model = loaded.tokenizer, loaded.model
        texts, templated = zip(*(self._render(tokenizer, p) for p in prompts), strict=True)
        config = self._generation_config(model, tokenizer, sampling)
        eos_ids = _eos_ids(config, tokenizer)
        with loaded.lock:  # one generation at a time per model: torch would share the cores anyway
            encoded = self._encode(loaded, prompts, texts, not all(templated))
            recorder = _TokenLogprobs()
            processors = LogitsProcessorList([recorder])
            if compiled.engine is not None:
                mask = _GrammarMask(loaded.engine(compiled.engine), compiled.grammar, eos_ids)
                processors = LogitsProcessorList([mask, recorder])  # the recorder sees masked scores
            prompt_width = encoded["input_ids"].shape[1]
            loops = LoopStop(prompt_width, eos_ids)
            stopping = StoppingCriteriaList([loops] if self.stop_loops else [])
            with torch.inference_mode(), _threads(self.threads), \
                    _seeded(sampling.seed if config.do_sample else None, model.device):
                output = model.generate(**encoded, generation_config=config, logits_processor=processors,
                                        stopping_criteria=stopping)
                chosen = recorder.finish(output)
        elapsed = time.perf_counter() - started
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, new_tokens in enumerate(output[:, prompt_width:].tolist()):
            end = next((i for i, token in enumerate(new_tokens) if token in eos_ids), None)
            kept = new_tokens if end is None else new_tokens[:end]
            count = len(new_tokens) if end is None else end + 1
            finish = "length" if end is None else "stop"
            if row in loops.stopped and (end is None or end >= loops.stopped[row]):  # padding follows
                count = loops.stopped[row]
                kept, finish = new_tokens[:count], "repetition"
            text = tokenizer.decode(kept, skip_special_tokens=True)
            results.append(Generation(
                text=text,
                prompt_tokens=int(prompt_lengths[row]),
                completion_tokens=count,
                finish_reason=finish,
                duration_s=elapsed,
                logprobs=_token_logprobs(tokenizer, kept, chosen[row], text),
            ))
        return results

    def _encode(self, loaded: _LoadedModel, prompts: Sequence[Prompt], texts: Sequence[str],
                special: bool) -> dict[str, Any]:
        """``generate`` inputs: left-padded rows, or a shared prefix's cache plus each row's rest."""
        tokenizer = loaded.tokenizer
        rows = [tokenizer(text, add_special_tokens=special)["input_ids"] for text in texts]
        if not self.share_prefix:
            return left_padded(rows, tokenizer.pad_token_id, loaded.model.device)
        return loaded.prefixes().inputs(
            rows, tokenizer.pad_token_id,
            lambda: self._instructions_end(tokenizer, prompts[0], rows[0], special))

    @staticmethod
    def _instructions_end(tokenizer: Any, prompt: Prompt, row: list[int], special: bool) -> int:
        """How many of ``row``'s tokens render the messages before the last one (0 if they don't line up)."""
        if isinstance(prompt, str) or len(prompt) < 2 or not getattr(tokenizer, "chat_template", None):
            return 0
        head = tokenizer.apply_chat_template(list(prompt)[:-1], tokenize=False, add_generation_prompt=False)
        ids = tokenizer(head, add_special_tokens=special)["input_ids"]
        return len(ids) if row[: len(ids)] == ids else 0

    @staticmethod
    def _render(tokenizer: Any, prompt: Prompt) -> tuple[str, bool]:
        """The prompt as model text, and whether a chat template produced it."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        if isinstance(prompt, str):
            return prompt, False
        # A base model without a template: a plain transcript that ends where the answer goes.
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:", False

    @staticmethod
    def _generation_config(model: Any, tokenizer: Any, sampling: Sampling) -> Any:
        """Our sampling only: a model's shipped defaults (temperature, top_k...) must not leak in."""
        from transformers import GenerationConfig

        shipped = getattr(model, "generation_config", None)
        eos = getattr(shipped, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": getattr(shipped, "bos_token_id", None),
            "do_sample": sampling.temperature > 0,
        }
        if sampling.repetition_penalty is not None:
            options["repetition_penalty"] = sampling.repetition_penalty
        if options["do_sample"]:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p if sampling.top_p is not None else 1.0,
                           top_k=sampling.top_k if sampling.top_k is not None else 0)
        return GenerationConfig(**options)

    def describe(self) -> dict[str, Any]:
        """Backend, model, device, engine order and library versions, for reports."""
        info: dict[str, Any] = {"backend": type(self).__name__, "model": self.model_name,
                                "device": self._device or "auto", "engines": list(self.engines),
                                "string_cap": self.string_cap, "threads": self.threads}
        loaded = next((m for (name, device), m in _MODELS.items()
                       if name == self.model_name and device == (self._device or device)), None)
        if loaded is not None:
            info.update(device=loaded.device, source=loaded.source, load_seconds=round(loaded.load_seconds, 2))
        from importlib.metadata import PackageNotFoundError, version

        for package in ("torch", "transformers", "outlines", "llguidance", "xgrammar", "outlines_core"):
            with suppress(PackageNotFoundError):
                info[package] = version(package)
        return info


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _eos_ids(config: Any, tokenizer: Any) -> frozenset[int]:
    eos = config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


class _TokenLogprobs:
    """A logits processor that records the log-probability of every chosen token, per row.

    Placed after the grammar mask, it sees the scores the mask returns, and transformers applies
    the sampling warpers (temperature, top-k, top-p) only after every custom processor. So the
    distribution recorded is the model's next-token distribution at temperature 1, after the
    repetition penalty (if any) and restricted by the grammar and renormalised over the tokens it
    allows: the *constrained distribution*. It is the same whether the token was then picked
    greedily or sampled at some temperature, so confidences are comparable across strategies (the
    warped distribution would make every greedy choice, and every top-k survivor, look certain).

    The token chosen at step ``t`` is only known at step ``t + 1`` (as ``input_ids[:, -1]``), so
    each call keeps one ``batch × vocabulary`` row of log-probabilities for the next call's lookup
    and stores one number per row: memory stays bounded whatever the number of steps.
    ``finish(sequences)`` looks up the last step's token and returns ``batch × steps`` values.
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.chosen: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, input_ids[:, -1:].to(self.previous.device)).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: Any) -> list[list[float]]:
        """Per row, the log-probability of each generated token (padding after EOS included)."""
        import torch

        if self.previous is None:
            return [[] for _ in range(sequences.shape[0])]
        self.chosen.append(self.previous.gather(1, sequences[:, -1:].to(self.previous.device)).squeeze(1))
        self.previous = None
        return torch.stack(self.chosen, dim=1).cpu().tolist()  # type: ignore[no-any-return]


def _token_logprobs(tokenizer: Any, tokens: list[int], logprobs: list[float],
                    text: str) -> list[tuple[str, float]] | None:
    """``(token text, log-probability)`` per token, the texts joining exactly to ``text``.

    A token's text is what it adds to the decoded prefix: ``decode(tokens[:i + 1])`` minus
    ``decode(tokens[:i])``. A token that ends inside a multi-byte character adds nothing until
    the token that completes the character (which gets the whole character), so characters are
    never split or replaced. ``None`` when the pieces cannot be made to join to ``text`` (a
    tokenizer whose decoding of a prefix is not a prefix of the decoding).
    """
    pieces: list[str] = []
    done = ""  # decoded text already handed out
    for i in range(len(tokens)):
        current = tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)
        if current.endswith("\ufffd") and i + 1 < len(tokens):
            pieces.append("")  # an unfinished character: wait for the token that completes it
            continue
        if not current.startswith(done):
            return None
        pieces.append(current[len(done):])
        done = current
    if "".join(pieces) != text or len(logprobs) < len(tokens):
        return None
    return [(piece, float(value)) for piece, value in zip(pieces, logprobs, strict=False)]


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Use ``count`` torch CPU threads for the duration (the setting is process-wide: restore it)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed sampling without disturbing the process's global random state."""
    if seed is None:
        yield
        return
    import torch

    devices = [device] if getattr(device, "type", str(device)) == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
