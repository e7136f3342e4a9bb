"""Which grammar constrains a request: the schema's own, held to the input's spans, or after thinking.

Each schema is compiled once per model for the first engine that accepts it (llguidance, then
xgrammar, then outlines_core; a refusal falls back to the next, with a warning, and to
unconstrained decoding when none accepts). Compiled grammars are kept on the loaded model, and
xgrammar / outlines_core grammars also on disk between processes (``grammar_cache``). Two
variants are built per request when asked for: the schema with chosen string fields held to
spans of one input (``guardrail.backends.span_grammar``, kept per input because an input comes
back with its re-asks and votes), and a thinking block before the schema
(``guardrail.backends.reasoning_grammar``).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.backends.decoding_schema import decoding_schema
from guardrail.backends.local.engines import LLGUIDANCE_LAYOUT, Engine, EngineRefused
from guardrail.backends.local.models import Compiled, LoadedModel
from guardrail.backends.reasoning_grammar import reasoning_lark
from guardrail.events import engine_fallback

if TYPE_CHECKING:
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

logger = logging.getLogger("guardrail")


@dataclass(frozen=True)
class Grammars:
    """A backend's grammar settings: engine order, the decoding string cap, the on-disk cache and
    the thinking budget. The compiled grammars themselves live on the ``LoadedModel``."""

    engines: tuple[str, ...]
    string_cap: int | None
    disk: Path | None
    reasoning_tokens: int = 0

    def for_schema(self, loaded: LoadedModel, schema: Schema) -> Compiled:
        """The schema's grammar for the first engine that accepts it (``Compiled(None)``: none does)."""
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
                        f"falling back to {following}", RuntimeWarning, stacklevel=4)
                    engine_fallback(schema.name, name, None if following == "unconstrained" else following, str(exc))
                    continue
                choice = Compiled(name, grammar)
                break
            else:
                warnings.warn(f"guardrail: no engine can compile schema {schema.name!r}; generating unconstrained, "
                              f"validation still applies ({'; '.join(reasons)})", RuntimeWarning, stacklevel=4)
                choice = Compiled(None)
            loaded.choices[key] = choice
            return choice

    def for_spans(self, model: LoadedModel, schema: Schema, spans: Spans, plain: Compiled) -> Compiled:
        """The grammar holding ``spans.fields`` to spans of ``spans.text`` (kept per schema and input,
        ``span_grammar.cached_span_grammar``); the schema's own grammar, with a warning, when it cannot
        be built."""
        from guardrail.backends.span_grammar import cached_span_grammar

        refused = ""
        if plain.engine != "llguidance":
            refused = (f"holding values to spans of the input needs the llguidance engine, and {plain.engine} "
                       "constrains this schema")

        def compile_lark(lark: str) -> Compiled:
            return Compiled("llguidance", model.engine("llguidance").compile_lark(lark))  # type: ignore[attr-defined]

        return cached_span_grammar(model.span_grammars, model.lock, schema, self.string_cap, spans, plain,
                                   target=lambda: self._target(model.engine("llguidance"), schema),
                                   compile_lark=compile_lark, refused=refused, stacklevel=6)

    def for_reasoning(self, model: LoadedModel, schema: Schema, plain: Compiled, opened: bool,
                      extractive: bool) -> Compiled:
        """The grammar of a thinking block then the schema, kept per schema; the schema's own
        grammar, with a warning, when llguidance does not constrain it."""
        if plain.engine != "llguidance":
            key = (schema.hash, f"reasoning-refused:{plain.engine}", self.string_cap)
            if key not in model.grammars:
                model.grammars[key] = True
                logger.warning("guardrail: no thinking for schema %r: the reasoning grammar needs the llguidance "
                               "engine, and %s constrains this schema", schema.name, plain.engine,
                               extra={"guardrail": {"event": "reasoning_off", "schema": schema.name,
                                                    "engine": plain.engine}})
            return plain
        if extractive:
            key = (schema.hash, "reasoning-extractive", self.string_cap)
            if key not in model.grammars:
                model.grammars[key] = True
                logger.info("guardrail: with reasoning, the extractive fields of schema %r are checked after "
                            "decoding only", schema.name)
        # An engine variant of the schema's grammar: kept beside the plain one, per budget and opening.
        key = (schema.hash, f"llguidance+reasoning:{self.reasoning_tokens}:{int(opened)}", self.string_cap)
        with model.lock:
            found = model.grammars.get(key)
            if found is None:
                engine = model.engine("llguidance")
                target = dict(self._target(engine, schema))
                target["x-guidance"] = LLGUIDANCE_LAYOUT
                lark = reasoning_lark(json.dumps(target), self.reasoning_tokens, opened=opened)
                model.compiles += 1
                found = model.grammars[key] = engine.compile_lark(lark)  # type: ignore[attr-defined]
        return Compiled("llguidance", found)

    def _target(self, engine: Engine, schema: Schema) -> dict[str, Any]:
        """The schema as this engine decodes it (``guardrail.backends.decoding_schema``)."""
        return decoding_schema(schema.json_schema, string_cap=self.string_cap,
                               forbid_newlines=engine.forbid_newlines, cap_patterns=engine.cap_patterns)

    def _grammar(self, loaded: LoadedModel, schema: Schema, name: str) -> Any:
        key = (schema.hash, name, self.string_cap)
        if key not in loaded.grammars:
            engine = loaded.engine(name)
            target = self._target(engine, schema)
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

    def _compile_or_read(self, loaded: LoadedModel, engine: Engine, schema_json: str) -> Any:
        """Compile, or read what an earlier process compiled; an engine's refusal is returned."""
        disk, entry = None, ""
        if self.disk is not None and type(engine).serialize is not Engine.serialize:
            from guardrail.backends.grammar_cache import GrammarCache

            disk = GrammarCache(self.disk)
            facts = {"engine": engine.name, "version": _version(engine.name), "tokenizer": loaded.tokenizer_fingerprint()}
            entry = disk.key(facts["engine"], facts["version"], facts["tokenizer"], schema_json)
            payload = disk.load(entry, **facts)
            if payload is not None:
                try:
                    compiled = engine.deserialize(payload)
                except Exception as exc:  # noqa: BLE001 - an engine that cannot read it: compile instead
                    logger.warning("guardrail: ignoring a cached %s grammar it cannot read (%s)", engine.name, exc,
                                   extra={"guardrail": {"event": "grammar_cache", "engine": engine.name,
                                                        "error": str(exc)}})
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
                    logger.warning("guardrail: could not write the grammar cache %s: %s", disk.root, exc,
                                   extra={"guardrail": {"event": "grammar_cache", "engine": engine.name,
                                                        "error": str(exc)}})
        return compiled


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
