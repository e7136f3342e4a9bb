"""Grammar engines behind the transformers runtime: compile a schema once, drive one matcher per row.

outlines' backend classes (``LLGuidanceBackend``, ``XGrammarBackend``, ``OutlinesCoreBackend``,
built on ``outlines.from_transformers``) adapt the tokenizer for each engine; the adapters here
compile, hand out matchers, and write each row's allowed tokens into a shared bitmask. The decode
loop (``guardrail.backends.local.scheduler``) applies the mask itself instead of through outlines'
logits processors because, with outlines 1.3.3 on a CPU, those

* apply the mask with a ``torch.compile`` kernel (llguidance, outlines_core): the first call
  costs about 30 s and needs a C compiler;
* recompile the llguidance grammar for every row of every call, and only warn when the grammar is
  invalid, so an engine that refuses a schema is never noticed and cannot be fallen back from;
* hold per-generation state, so one processor cannot serve rows that join a batch at any step.

The engines are tried in the order llguidance (fastest to compile, most complete), xgrammar,
outlines_core; a fallback engine is used only when it enforces every validation keyword of the
schema (``Engine.admit``): one that silently ignored a keyword would let through output the
validator rejects.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from guardrail.backends.decoding_schema import SEPARATORS, validation_keywords

__all__ = ["ENGINES", "ENGINE_CLASSES", "LLGUIDANCE_LAYOUT", "Engine", "EngineRefused", "LLGuidance", "OutlinesCore",
           "XGrammar", "bitmask_bias", "llguidance_matcher"]

#: Grammar engines, in the default order of preference.
ENGINES: tuple[str, ...] = ("llguidance", "xgrammar", "outlines_core")


class EngineRefused(Exception):
    """An engine cannot compile a schema (an unsupported keyword, a regex it cannot parse...)."""


class Engine:
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
        ignored = sorted(validation_keywords(schema) - self.enforces)
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


#: The one-line JSON layout llguidance decodes (``SEPARATORS``, no free whitespace), for both runtimes.
LLGUIDANCE_LAYOUT: Any = {"whitespace_flexible": False, "item_separator": SEPARATORS[0],
                          "key_separator": SEPARATORS[1]}


def llguidance_matcher(tokenizer: Any, grammar_text: str, *, lark: bool = False) -> Any:
    """An llguidance matcher in its initial state for a JSON Schema laid out as ``LLGUIDANCE_LAYOUT``
    (or, with ``lark``, a Lark grammar) over ``tokenizer``'s vocabulary; EngineRefused if it cannot."""
    from llguidance import LLMatcher

    try:
        grammar = (LLMatcher.grammar_from_lark(grammar_text) if lark
                   else LLMatcher.grammar_from_json_schema(grammar_text, overrides=LLGUIDANCE_LAYOUT))
    except ValueError as exc:
        raise EngineRefused(str(exc)) from exc
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise EngineRefused("; ".join(messages) or "invalid grammar")
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise EngineRefused(matcher.get_error())
    return matcher


class LLGuidance(Engine):
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
        return llguidance_matcher(self.tokenizer, schema_json)  # rows get deep copies

    def compile_lark(self, lark: str) -> Any:
        """A grammar in llguidance's Lark syntax (``guardrail.backends.span_grammar``)."""
        return llguidance_matcher(self.tokenizer, lark, lark=True)

    def new_matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def advance(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        target = bitmask[row]
        matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * target.element_size())

    def complete(self, matcher: Any) -> bool:
        return not matcher.is_error() and bool(matcher.is_accepting())


class XGrammar(Engine):
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


class OutlinesCore(Engine):
    name = "outlines_core"
    enforces = XGrammar.enforces
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


ENGINE_CLASSES: dict[str, type[Engine]] = {"llguidance": LLGuidance, "xgrammar": XGrammar,
                                           "outlines_core": OutlinesCore}



_BIAS_TABLE: Any = None


def bitmask_bias(bitmask: Any, width: int) -> Any:
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
