"""Bounded regular-expression matching for ``pattern`` and ``patternProperties``.

Python's ``re`` backtracks without limit: ``^(a|aa)+$`` against ``"aaaa…ab"`` takes longer than
the age of the universe, and ``re`` cannot be interrupted. A schema's patterns come from users and
the strings they are matched against come from a model, so guardrail matches them with the
``regex`` module (``re``-compatible syntax) under a timeout instead:

* each search may take at most ``PATTERN_TIMEOUT_S``;
* inside ``regex_budget()`` (one validation of one output) all searches together may take at
  most ``REGEX_BUDGET_S``; once that is spent, further searches fail at once.

A search that runs out of time raises ``PatternTimeout``; the keywords below turn it into a
validation error (the string is treated as not matching), so a hostile pattern yields a clear,
located issue instead of a hang. ``Schema.check`` accepts a regex only if both Python's ``re`` and
``regex`` compile it (so the dialect stays ``re``'s). Draft 2019-09's ``unevaluatedProperties``
still matches with ``re``. Without the ``regex`` module, ``re`` is used, unbounded.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from jsonschema.exceptions import ValidationError

try:  # the regex module is what makes a timeout possible
    import regex as _regex
except ImportError:  # pragma: no cover - exercised only where regex is missing
    _regex = None

#: Longest time one ``pattern`` search may take (seconds).
PATTERN_TIMEOUT_S = 0.2
#: Longest time all searches of one validation may take together (seconds).
REGEX_BUDGET_S = 1.0

#: Whether searches are bounded (the ``regex`` module is installed).
BOUNDED = _regex is not None


class PatternTimeout(Exception):
    """A regex search ran out of time; ``spent`` is true when the whole budget was already used."""

    def __init__(self, pattern: str, spent: bool = False) -> None:
        self.pattern = pattern
        self.spent = spent
        super().__init__(f"regex {pattern!r} timed out")


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.left = seconds


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("guardrail_regex_budget", default=None)


@contextlib.contextmanager
def regex_budget(seconds: float = REGEX_BUDGET_S) -> Iterator[None]:
    """Bound the total time of the searches made inside the block (one validation)."""
    token = _BUDGET.set(_Budget(seconds))
    try:
        yield
    finally:
        _BUDGET.reset(token)


#: What ``compile_pattern`` raises for a regex it cannot compile.
COMPILE_ERRORS: tuple[type[Exception], ...] = (re.error,) if _regex is None else (re.error, _regex.error)


@lru_cache(maxsize=2048)
def compile_pattern(pattern: str) -> Any:
    """The compiled regex that ``search`` uses (cached)."""
    return _regex.compile(pattern) if _regex is not None else re.compile(pattern)


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text`` (ECMA-262 ``pattern`` semantics: unanchored).

    Raises ``PatternTimeout`` when the search takes too long.
    """
    compiled = compile_pattern(pattern)
    if _regex is None:  # pragma: no cover
        return compiled.search(text) is not None
    budget = _BUDGET.get()
    limit = PATTERN_TIMEOUT_S
    if budget is not None:
        if budget.left <= 0:
            raise PatternTimeout(pattern, spent=True)
        limit = min(limit, budget.left)
    start = time.perf_counter()
    try:
        return compiled.search(text, timeout=limit) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None
    finally:
        if budget is not None:
            budget.left -= time.perf_counter() - start


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _timeout_message(what: str, text: str, exc: PatternTimeout) -> str:
    if exc.spent:
        return (f"{what} {_clip(text)} was not checked against the regex {exc.pattern!r}: the time for regex "
                f"matching on this output ({REGEX_BUDGET_S:g} s) is spent; treated as not matching")
    return (f"{what} {_clip(text)} could not be checked against the regex {exc.pattern!r} within "
            f"{PATTERN_TIMEOUT_S:g} s (the regex backtracks catastrophically); treated as not matching")


# -- jsonschema keywords, as in jsonschema but with bounded searches -------------------------------


def pattern(validator: Any, regex: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = search(regex, instance)
    except PatternTimeout as exc:
        yield ValidationError(_timeout_message("the string", instance, exc))
        return
    if not matched:
        yield ValidationError(f"{_clip(instance, 200)} does not match {regex!r}")


def pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for regex, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = search(regex, key)
            except PatternTimeout as exc:
                error = ValidationError(_timeout_message("the property name", key, exc))
                error.path.appendleft(key)
                yield error
                continue
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=regex)


def _unmatched(keys: Iterable[str], schema: Mapping[str, Any]) -> tuple[list[str], list[ValidationError]]:
    """Keys covered neither by ``properties`` nor by a ``patternProperties`` regex, and timeouts."""
    properties = schema.get("properties", {})
    regexes = list(schema.get("patternProperties", {}))
    extras: list[str] = []
    timeouts: list[ValidationError] = []
    for key in keys:
        if key in properties:
            continue
        try:
            if any(search(regex, key) for regex in regexes):
                continue
        except PatternTimeout as exc:
            error = ValidationError(_timeout_message("the property name", key, exc))
            error.path.appendleft(key)
            timeouts.append(error)
            continue
        extras.append(key)
    return extras, timeouts


def additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras, timeouts = _unmatched(instance, schema)
    yield from timeouts
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        if "patternProperties" in schema:
            regexes = ", ".join(repr(r) for r in sorted(schema["patternProperties"]))
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(f"{names} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _valid(errors: Iterable[ValidationError]) -> bool:
    return next(iter(errors), None) is None


def _evaluated_keys(validator: Any, instance: Mapping[str, Any], schema: Any, timeouts: list[ValidationError]) -> set[str]:
    """Draft 2020-12: the keys of ``instance`` that ``schema`` evaluates in place (for unevaluatedProperties)."""
    if not isinstance(schema, Mapping):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if isinstance(ref, str):
            resolved = validator._resolver.lookup(ref)
            inner = validator.evolve(schema=resolved.contents, _resolver=resolved.resolver)
            keys |= _evaluated_keys(inner, instance, resolved.contents, timeouts)
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if keyword in schema:
            subschema = schema[keyword]
            keys |= {k for k, v in instance.items() if _valid(validator.descend(v, subschema))}
    regexes = schema.get("patternProperties")
    if isinstance(regexes, Mapping):
        for key in instance:
            for regex in regexes:
                try:
                    if search(regex, key):
                        keys.add(key)
                        break
                except PatternTimeout as exc:
                    error = ValidationError(_timeout_message("the property name", key, exc))
                    error.path.appendleft(key)
                    timeouts.append(error)
    dependent = schema.get("dependentSchemas")
    if isinstance(dependent, Mapping):
        for name, subschema in dependent.items():
            if name in instance:
                keys |= _evaluated_keys(validator, instance, subschema, timeouts)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, ()):
            if _valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema, timeouts)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"], timeouts)
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"], timeouts)
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"], timeouts)
    return keys


def unevaluated_properties(validator: Any, unevaluated: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    timeouts: list[ValidationError] = []
    evaluated = _evaluated_keys(validator, instance, schema, timeouts)
    yield from timeouts
    failing = [
        key for key in instance
        if key not in evaluated and not _valid(validator.descend(instance[key], unevaluated, path=key, schema_path=key))
    ]
    if not failing:
        return
    names = ", ".join(repr(k) for k in sorted(failing))
    verb = "was" if len(failing) == 1 else "were"
    if unevaluated is False:
        yield ValidationError(f"Unevaluated properties are not allowed ({names} {verb} unexpected)")
    else:
        yield ValidationError(f"Unevaluated properties are not valid under the given schema ({names} {verb} "
                              "unevaluated and invalid)")


#: The keywords that match regexes, by the function that replaces jsonschema's own.
KEYWORDS = {
    "pattern": pattern,
    "patternProperties": pattern_properties,
    "additionalProperties": additional_properties,
}

#: Draft 2020-12 only: its unevaluatedProperties also matches patternProperties regexes.
KEYWORDS_2020_12 = {**KEYWORDS, "unevaluatedProperties": unevaluated_properties}
