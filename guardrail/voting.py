"""Self-consistency voting: one answer from several valid samples, field by field.

``vote`` takes the valid samples of one prompt (their parsed JSON, text and per-field
confidence) and builds the answer per leaf field (``guardrail.leaves``: scalars, and arrays as
whole multisets) by majority:

1. at each leaf pointer, the samples' values are grouped into classes of agreeing values, with
   the normalised comparison of ``guardrail.compare.same_value`` (strings NFKC-normalised,
   case-folded and trimmed; numbers within a tolerance, ``"12.50"`` agreeing with ``12.5``;
   lists as multisets; ``null``, absent, ``""`` and ``[]`` all one "no value" class, so leaving
   a field out is a vote too);
2. the largest class wins; a tie goes to the class whose members' mean confidence is higher
   (a class with no known confidence ranks below one with some), then to the class seen first;
3. the winner's value is the form most of its members wrote (ties: the first sample's);
4. the answer is assembled from the winners and checked with ``is_valid`` (the guard validates
   it against the schema again); when it is not valid (a cross-field rule, a required key whose
   vote was "no value"...), the answer is instead the **most-agreeing whole sample**: the one
   whose fields agree with the most other samples (mean share over the fields; ties by mean
   confidence, then by order).

``agreement`` maps every leaf pointer (the schema's, plus any other the samples have) to the
share of valid samples whose value there agrees with the answer's; ``confidence`` maps each
field present in the answer to the mean confidence of the samples that agree with it.

>>> ballots = [Ballot({"city": "Oslo", "n": 1}), Ballot({"city": "oslo ", "n": 2}), Ballot({"city": "Bergen", "n": 2})]
>>> result = vote(ballots, ["/city", "/n"])
>>> result.data, result.agreement
({'city': 'Oslo', 'n': 2}, {'/city': 0.667, '/n': 0.667})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrail.compare import same_value
from guardrail.leaves import pointers, split, value_leaves

#: Agreement shares are rounded to this many digits (they are small fractions: 3/5, 2/3).
DIGITS = 3
#: How the answer is written when it is assembled, not copied from a sample (as the local
#: backend lays JSON out).
SEPARATORS = (", ", ": ")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A field the sample left out.
MISSING: Any = _Missing()


@dataclass
class Ballot:
    """One valid sample: its parsed JSON ``data``, its ``text``, and per-field ``confidence``."""

    data: Any
    text: str | None = None
    confidence: dict[str, float] | None = None


@dataclass
class Vote:
    """The outcome of ``vote``.

    ``data`` is the answer as JSON data and ``text`` its JSON text (a sample's own text when the
    answer equals that sample, else the answer written out). ``assembled`` is false when the
    per-field answer was not valid and the most-agreeing whole sample ``sample`` was returned;
    when assembled, ``sample`` is the sample whose text is reused, or None.
    """

    data: Any
    text: str
    agreement: dict[str, float]
    confidence: dict[str, float]
    assembled: bool
    sample: int | None = None
    winners: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class _Class:
    value: Any
    members: list[int] = field(default_factory=list)
    forms: list[Any] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)

    def mean_confidence(self) -> float:
        return sum(self.confidences) / len(self.confidences) if self.confidences else -1.0


def _agree(a: Any, b: Any) -> bool:
    return same_value(None if a is MISSING else a, None if b is MISSING else b)


def classes(values: Sequence[Any], confidences: Sequence[float | None] = ()) -> list[_Class]:
    """Group values into classes of agreeing values (each joins the first class it agrees with)."""
    out: list[_Class] = []
    for index, value in enumerate(values):
        home = next((c for c in out if _agree(c.value, value)), None)
        if home is None:
            home = _Class(value)
            out.append(home)
        home.members.append(index)
        home.forms.append(value)
        conf = confidences[index] if index < len(confidences) else None
        if conf is not None:
            home.confidences.append(conf)
    return out


def _winner(found: list[_Class]) -> _Class:
    return max(found, key=lambda c: (len(c.members), c.mean_confidence(), -c.members[0]))


def _usual_form(winner: _Class) -> Any:
    """The way most members wrote the winning value (first sample's on a tie)."""
    counts: dict[str, int] = {}
    first: dict[str, Any] = {}
    for form in winner.forms:
        key = "MISSING" if form is MISSING else json.dumps(form, sort_keys=True, ensure_ascii=False, default=str)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, form)
    best = max(counts, key=lambda k: counts[k])  # max keeps the first of equal counts
    return first[best]


def vote(ballots: Sequence[Ballot], leaves: Sequence[str] = (),
         is_valid: Callable[[Any], bool] | None = None) -> Vote:
    """The per-field majority answer of ``ballots`` (see the module docstring).

    ``leaves`` are the schema's leaf pointers (``guardrail.leaves.schema_leaves``); ``is_valid``
    checks the assembled answer (default: anything is valid).
    """
    if not ballots:
        raise ValueError("vote needs at least one valid sample")
    flats = [value_leaves(b.data, leaves) for b in ballots]
    order = pointers(leaves, flats)
    n = len(ballots)
    agreement: dict[str, float] = {}
    confidence: dict[str, float] = {}
    winners: dict[str, Any] = {}
    for pointer in order:
        values = [flat.get(pointer, MISSING) for flat in flats]
        confs = [(b.confidence or {}).get(pointer) for b in ballots]
        win = _winner(classes(values, confs))
        winners[pointer] = _usual_form(win)
        agreement[pointer] = round(len(win.members) / n, DIGITS)
        if win.confidences and winners[pointer] is not MISSING:
            confidence[pointer] = sum(win.confidences) / len(win.confidences)
    data = _assemble(winners)
    check = is_valid or (lambda _: True)
    if data is not MISSING and check(data):
        reused = next((i for i in _ranking(ballots, flats, order) if ballots[i].data == data
                       and ballots[i].text is not None), None)
        text = ballots[reused].text if reused is not None else _dumps(data)
        return Vote(data, text or _dumps(data), agreement, confidence, True, reused, winners)
    best = _ranking(ballots, flats, order)[0]
    chosen = flats[best]
    agreement = {}
    for pointer in order:
        mine = chosen.get(pointer, MISSING)
        agreement[pointer] = round(sum(_agree(mine, f.get(pointer, MISSING)) for f in flats) / n, DIGITS)
    text = ballots[best].text
    return Vote(ballots[best].data, text if text is not None else _dumps(ballots[best].data), agreement,
                dict(ballots[best].confidence or {}), False, best, winners)


def _ranking(ballots: Sequence[Ballot], flats: Sequence[dict[str, Any]], order: Sequence[str]) -> list[int]:
    """Sample indexes, most-agreeing first: mean share of samples agreeing, then mean confidence."""
    n = len(ballots)

    def key(i: int) -> tuple[float, float, int]:
        shares = [sum(_agree(flats[i].get(p, MISSING), f.get(p, MISSING)) for f in flats) / n for p in order]
        confs = list((ballots[i].confidence or {}).values())
        return (sum(shares) / len(shares) if shares else 1.0, sum(confs) / len(confs) if confs else -1.0, -i)

    return sorted(range(n), key=key, reverse=True)


def _assemble(winners: dict[str, Any]) -> Any:
    """Nested JSON data from ``pointer -> value`` (MISSING values left out); MISSING on a clash."""
    if "" in winners:
        return winners[""]
    root: dict[str, Any] = {}
    for pointer, value in winners.items():
        if value is MISSING:
            continue
        keys = split(pointer)
        node: Any = root
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                return MISSING
        if keys[-1] in node:
            return MISSING
        node[keys[-1]] = value
    return root


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=SEPARATORS)
