"""Information removal: take away what a gold field was read from, so the right answer is "not known"."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from guardrail import _noise_data as data
from guardrail.perturb._core import Edit, Span, _occurrences, _stochastic_round, apply_edits, check_preserved, gold_values


@dataclass(frozen=True)
class Removal:
    """What ``InfoRemoval.apply`` did: the new text and edits, the removed fields, the new gold."""

    text: str
    edits: list[Edit]
    removed: tuple[str, ...] = ()
    gold: Any = None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*")


def _sentences(text: str) -> list[Span]:
    """Sentence spans, each with the whitespace that follows it."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


@dataclass(frozen=True)
class InfoRemoval:
    """Delete what a gold field was read from, so its right answer becomes null or absent.

    A removable field is a top-level gold key whose values (strings or numbers, or lists of
    them) all occur verbatim. Its sentences are deleted when the text has other sentences that
    keep every remaining value; otherwise the value's own words go, with one connector before
    them ("in Paris"). The result is checked: removed values are gone (ignoring case), kept ones
    still occur. Severity is the share of removable fields removed (at least one when > 0, and
    one field is always kept when there are several). The new gold omits the removed keys.

    >>> import random
    >>> r = InfoRemoval(0.5).apply("Ana Lee, Acme Ltd.\\nPhone: 555-0100", random.Random(1),
    ...                            {"name": "Ana Lee", "phone": "555-0100"})
    >>> r.removed, r.text
    (('phone',), 'Ana Lee, Acme Ltd.\\n')
    """

    severity: float = 0.5
    NAME: ClassVar[str] = "info_removed"

    @property
    def name(self) -> str:
        """``"info_removed"``."""
        return self.NAME

    def __post_init__(self) -> None:
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"info_removed: severity must be in [0, 1], got {self.severity}")

    def apply(self, text: str, rng: random.Random, gold: Any, fields: Iterable[str] | None = None) -> Removal:
        """Remove fields of ``gold`` (of ``fields`` only, when given) from ``text``; nothing when
        no field can be removed cleanly."""
        roll = rng.random()
        if not isinstance(gold, dict):
            return Removal(text, [], (), gold)
        allowed = set(gold) if fields is None else set(fields)
        candidates = [k for k, v in gold.items() if k in allowed and self._removable(text, v)]
        rng.shuffle(candidates)
        present = [k for k, v in gold.items() if gold_values(v)]
        k = max(1, _stochastic_round(self.severity * len(candidates), roll)) if self.severity > 0 else 0
        k = min(k, max(len(present) - 1, 1))
        removed: list[str] = []
        edits: list[Edit] = []
        for name in candidates:
            if len(removed) >= k:
                break
            trial = self._plan(text, gold, [*removed, name])
            if trial is not None:
                removed.append(name)
                edits = trial
        new_gold = {key: value for key, value in gold.items() if key not in removed}
        return Removal(apply_edits(text, edits), edits, tuple(removed), new_gold)

    @staticmethod
    def _removable(text: str, value: Any) -> bool:
        values = gold_values(value)
        scalar = not isinstance(value, dict) and not (
            isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
        )
        return bool(values) and scalar and all(v in text for v in values)

    def _plan(self, text: str, gold: dict[str, Any], names: list[str]) -> list[Edit] | None:
        gone = [v for n in names for v in gold_values(gold[n])]
        kept = [v for n, val in gold.items() if n not in names for v in gold_values(val) if v in text]
        keep_mask = [False] * len(text)
        for value in kept:
            for s, e in _all_spans(text, value):
                keep_mask[s:e] = [True] * (e - s)
        targets = [span for v in gone for span in _occurrences(text, v)]
        spans = self._sentence_spans(text, targets, keep_mask) or self._word_spans(text, targets, keep_mask)
        if spans is None:
            return None
        edits = [Edit(s, e, text[s:e], "") for s, e in _merge(spans)]
        new = apply_edits(text, edits)
        if any(_occurrences(new, v, ignore_case=True) for v in gone) or check_preserved(new, kept):
            return None
        return edits

    @staticmethod
    def _sentence_spans(text: str, targets: list[Span], keep: list[bool]) -> list[Span] | None:
        sentences = _sentences(text)
        hit = [(s, e) for s, e in sentences if any(s <= t0 < e or s < t1 <= e for t0, t1 in targets)]
        if not hit or len(hit) == len(sentences) or any(any(keep[s:e]) for s, e in hit):
            return None
        return hit

    @staticmethod
    def _word_spans(text: str, targets: list[Span], keep: list[bool]) -> list[Span] | None:
        spans: list[Span] = []
        for start, end in targets:
            before = re.search(r"(\w+)\s+$", text[:start])
            if before and before.group(1).lower() in data.CONNECTORS and not any(keep[before.start(1) : start]):
                start = before.start(1)
            # Take one side's whitespace with the words, so no double space is left behind.
            trail = re.match(r"\s+", text[end:])
            lead = re.search(r"\s+$", text[:start])
            if trail and start > 0:
                end += trail.end()
            elif lead:
                start = lead.start()
            elif trail:
                end += trail.end()
            if any(keep[start:end]):
                return None
            spans.append((start, end))
        return spans


def _all_spans(text: str, value: str) -> list[Span]:
    return [m.span() for m in re.finditer(re.escape(value), text)]


def _merge(spans: Iterable[Span]) -> Iterator[Span]:
    current: Span | None = None
    for start, end in sorted(spans):
        if current and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current:
            yield current
        current = (start, end)
    if current:
        yield current
