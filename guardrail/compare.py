"""When two extracted values mean the same: the comparison voting, calibration and the metrics share.

Strings are NFKC-normalised, case-folded, trimmed of surrounding whitespace, quotes and trailing
punctuation, with inner whitespace collapsed; numbers (and numeric strings, when compared with a
number) agree within ``rel_tol`` / ``abs_tol``; lists compare as multisets; objects compare
field by field (``flatten``); ``null``, absent, ``""`` and ``[]`` all mean "no value".

>>> same_value(" Paris ", "paris"), same_value("12.50", 12.5), same_value([], None)
(True, True, True)
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

__all__ = ["count_matches", "flatten", "is_empty", "normalise_text", "same_value"]

_SPACE = re.compile(r"\s+")
_STRIP = " \t\n\"'`“”‘’.,;:!?"
_NUMERIC = re.compile(r"^[-+]?[$€£¥]?\s*\d[\d,']*(?:\.\d+)?$")


def normalise_text(value: str) -> str:
    """The form strings are compared in.

    >>> normalise_text("  Ｂlues  Mix. ")
    'blues mix'
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip(_STRIP)


def is_empty(value: Any) -> bool:
    """``None``, blank strings and empty containers all mean "no value".

    >>> [is_empty(v) for v in (None, " ", [], {}, 0)]
    [True, True, True, True, False]
    """
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, (list, dict, tuple)) and not value)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMERIC.match(value.strip()):
        return float(re.sub(r"[^\d.+-]", "", value))
    return None


def same_value(a: Any, b: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Whether two JSON values agree after normalisation (lists as multisets).

    >>> same_value(" Paris ", "paris"), same_value(12.5, "12.50"), same_value([1, 2], [2, 1])
    (True, True, True)
    """
    if is_empty(a) or is_empty(b):
        return is_empty(a) and is_empty(b)
    if _is_number(a) or _is_number(b):
        x, y = _number(a), _number(b)
        return x is not None and y is not None and math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(a, str) and isinstance(b, str):
        return normalise_text(a) == normalise_text(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and count_matches(a, b, rel_tol, abs_tol) == len(a)
    if isinstance(a, dict) and isinstance(b, dict):
        fa, fb = flatten(a), flatten(b)
        return fa.keys() == fb.keys() and all(same_value(fa[k], fb[k], rel_tol=rel_tol, abs_tol=abs_tol) for k in fa)
    return bool(a == b)


def count_matches(gold: Sequence[Any], output: Sequence[Any], rel_tol: float, abs_tol: float) -> int:
    """How many gold elements find a distinct equal output element (greedy multiset matching)."""
    free = list(output)
    hits = 0
    for g in gold:
        for i, o in enumerate(free):
            if same_value(g, o, rel_tol=rel_tol, abs_tol=abs_tol):
                del free[i]
                hits += 1
                break
    return hits


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as one level of dotted keys, empty values dropped; a non-object is key ``""``.

    >>> flatten({"a": {"b": 1, "c": None}, "d": [1]})
    {'a.b': 1, 'd': [1]}
    """
    if not isinstance(value, dict):
        return {} if is_empty(value) else {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict):
            out.update(flatten(item, path))
        elif not is_empty(item):
            out[path] = item
    return out
