"""Which grammar constrains a llama.cpp request: the schema's own, after a thinking block, or held to spans.

Grammars are llguidance matchers over the model's vocabulary (``_compile``), built from the same
*decoding schema* and one-line layout as the transformers runtime's, and kept on the loaded model:
the schema's own (with ``reasoning``, a thinking block then the schema) once per schema, and the
one holding chosen fields to spans of an input (``guardrail.backends.span_grammar``) per input.
A schema llguidance refuses is generated unconstrained, with a warning.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from guardrail.backends.decoding_schema import decoding_schema
from guardrail.backends.llamacpp.model import LLAMACPP_HINT, _LoadedLlama
from guardrail.backends.local.engines import LLGUIDANCE_LAYOUT, EngineRefused, llguidance_matcher
from guardrail.backends.reasoning_grammar import reasoning_lark
from guardrail.errors import BackendError
from guardrail.events import engine_fallback

if TYPE_CHECKING:
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

def _schema_grammar(loaded: _LoadedLlama, schema: Schema, string_cap: int | None, reasoning_tokens: int,
                    opened: bool = False) -> Any:
    """The compiled grammar for ``schema`` (an LLMatcher to copy), or None: generate unconstrained.

    With ``reasoning_tokens``, the grammar of a thinking block then the schema (``opened``: the
    prompt has opened the block already).
    """
    key = (schema.hash, string_cap, reasoning_tokens, opened and bool(reasoning_tokens))
    with loaded.lock:
        if key not in loaded.grammars:
            loaded.compiles += 1
            target = decoding_schema(schema.json_schema, string_cap=string_cap, forbid_newlines=True,
                                     cap_patterns=True)
            try:
                if reasoning_tokens:
                    answer = json.dumps({**target, "x-guidance": LLGUIDANCE_LAYOUT})
                    lark = reasoning_lark(answer, reasoning_tokens, opened=opened)
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


def _span_grammar(loaded: _LoadedLlama, schema: Schema, string_cap: int | None, spans: Spans | None,
                  plain: Any) -> Any:
    """The grammar holding ``spans.fields`` to spans of the input; ``plain`` (with a warning) if none."""
    if spans is None or plain is None:
        return plain
    from guardrail.backends.span_grammar import cached_span_grammar

    return cached_span_grammar(
        loaded.span_grammars, loaded.lock, schema, string_cap, spans, plain,
        target=lambda: decoding_schema(schema.json_schema, string_cap=string_cap, forbid_newlines=True,
                                       cap_patterns=True),
        compile_lark=lambda lark: _compile(loaded, lark, lark=True), stacklevel=4)


def _compile(loaded: _LoadedLlama, grammar_text: str, *, lark: bool = False) -> Any:
    """An llguidance matcher for a JSON Schema (or, with ``lark``, a Lark grammar) over the model's
    vocabulary; EngineRefused if it cannot."""
    try:
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
    return llguidance_matcher(loaded.tokenizer, grammar_text, lark=lark)
