"""The machinery every perturbation shares: edits, protected spans, nested selection, composition."""

from __future__ import annotations

import hashlib
import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

#: A character range ``(start, end)``, end exclusive.
Span = tuple[int, int]
#: What callers may list as protected: a string (every occurrence is kept) or a span.
Protect = str | Span


@dataclass(frozen=True, order=True)
class Edit:
    """One change: ``text[start:end]`` (``before``) became ``after``. Positions are in the original.

    >>> Edit(4, 5, "t", "r").to_dict()
    {'start': 4, 'end': 5, 'before': 't', 'after': 'r'}
    """

    start: int
    end: int
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {"start": self.start, "end": self.end, "before": self.before, "after": self.after}

    def overlaps(self, other: Edit) -> bool:
        """True when the two edits touch a common character (an insertion inside a span counts)."""
        return self.start < other.end and other.start < self.end


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """Apply non-overlapping edits given in original positions.

    Insertions at the same point keep the order they are listed in.

    >>> apply_edits("abc", [Edit(1, 2, "b", "X"), Edit(0, 0, "", ">")])
    '>aXc'
    """
    out: list[str] = []
    pos = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):  # sorted() is stable
        if edit.start < pos or text[edit.start : edit.end] != edit.before:
            raise ValueError(f"edit {edit} overlaps another or does not match the text")
        out += [text[pos : edit.start], edit.after]
        pos = edit.end
    out.append(text[pos:])
    return "".join(out)


def derive_seed(*parts: object) -> int:
    """A stable 64-bit seed from any values (unlike ``hash()``, the same in every process).

    >>> derive_seed(0, "case-1", "typos", 0.5) == derive_seed(0, "case-1", "typos", 0.5)
    True
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


# -- protected spans ---------------------------------------------------------------------------

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_AUTO_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",                                   # email
    r"(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]",              # URL
    rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?",       # March 3rd, 2024
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?",  # 3 March 2024
    r"\+?\(?\d[\d ()./-]{5,}\d",                                       # phone numbers, dates
    r"[$€£¥]?\d+(?:[.,:/-]\d+)*(?:st|nd|rd|th|%)?",                    # numbers, amounts
    r"`[^`\n]+`",                                                      # inline code
    r"\{[^{}\n]*\}",                                                   # a JSON snippet
))  # fmt: skip


def gold_values(gold: Any) -> list[str]:
    """The leaf values of a gold output, as strings (numbers in their usual spellings).

    >>> gold_values({"name": "Ana", "items": [{"qty": 2, "price": 3.0}], "phone": None})
    ['Ana', '2', '3.0', '3']
    """
    out: list[str] = []
    if isinstance(gold, dict):
        for value in gold.values():
            out += gold_values(value)
    elif isinstance(gold, (list, tuple)):
        for value in gold:
            out += gold_values(value)
    elif isinstance(gold, str):
        if gold.strip():
            out.append(gold)
    elif isinstance(gold, (int, float)) and not isinstance(gold, bool):
        out.append(str(gold))
        if isinstance(gold, float) and gold.is_integer():
            out.append(str(int(gold)))
    return out


def _occurrences(text: str, value: str, *, ignore_case: bool = False) -> list[Span]:
    """Where ``value`` occurs; whole-word occurrences if there are any, so "my" skips "mystery"."""
    if not value.strip():
        return []
    flags = re.IGNORECASE if ignore_case else 0
    spans = [m.span() for m in re.finditer(re.escape(value), text, flags)]

    def bounded(span: Span) -> bool:
        start, end = span
        left_ok = start == 0 or not (text[start - 1].isalnum() and value[0].isalnum())
        right_ok = end == len(text) or not (text[end].isalnum() and value[-1].isalnum())
        return left_ok and right_ok

    return [s for s in spans if bounded(s)] or spans


def find_protected(text: str, gold: Any = None, extra: Iterable[Protect] = ()) -> list[Span]:
    """Spans no answer-preserving family may edit, merged and sorted.

    Gold leaf values found verbatim, every string in ``extra`` (all occurrences), the spans in
    ``extra``, and anything that looks like a number, amount, date, phone number, email, URL,
    inline code or JSON snippet.

    >>> find_protected("Call Ana at 555-0100", gold={"name": "Ana"})
    [(5, 8), (12, 20)]
    """
    spans: list[Span] = []
    for value in [*gold_values(gold), *(e for e in extra if isinstance(e, str))]:
        spans += _occurrences(text, value)
    spans += [(int(e[0]), int(e[1])) for e in extra if not isinstance(e, str)]
    for pattern in _AUTO_PATTERNS:
        spans += [m.span() for m in pattern.finditer(text)]
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def check_preserved(text: str, values: Iterable[str]) -> list[str]:
    """The values that no longer occur verbatim in ``text`` (empty when all survived).

    >>> check_preserved("Ana Souza, ana@x.org", ["Ana Souza", "ana@x.org", "Bob"])
    ['Bob']
    """
    return [v for v in values if v not in text]


class _Mask:
    """Which characters are protected, for O(1) eligibility checks."""

    def __init__(self, text: str, protect: Iterable[Protect]) -> None:
        self.flags = [False] * len(text)
        for start, end in find_protected(text, extra=protect):
            self.flags[start:end] = [True] * (end - start)

    def free(self, start: int, end: int) -> bool:
        if end > start:
            return not any(self.flags[start:end])
        # An insertion is only harmful strictly inside a protected run.
        return not (0 < start < len(self.flags) and self.flags[start - 1] and self.flags[start])


_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _free_words(text: str, mask: _Mask) -> list[Span]:
    """Words (letters or digits, with inner apostrophes and hyphens) that no protected span touches."""
    return [m.span() for m in _WORD.finditer(text) if mask.free(*m.span())]


def _stochastic_round(x: float, roll: float) -> int:
    """``floor(x)`` plus one with probability ``frac(x)``: unbiased, and monotone in ``x`` for a fixed roll."""
    whole = math.floor(x)
    return whole + (1 if roll < x - whole else 0)


# -- the base classes -------------------------------------------------------------------------


class Perturbation(ABC):
    """Anything that turns a text into a noisier one, listing its edits. Compose with ``+``.

    >>> import random
    >>> from guardrail.perturb import CharTypos, Distractors
    >>> noisy = CharTypos(0.5) + Distractors(0.5)
    >>> text, edits = noisy.apply("Invoice INV-7 is due on 2024-05-01.", random.Random(1))
    >>> "2024-05-01" in text and "INV-7" in text
    True
    """

    NAME: ClassVar[str] = "perturbation"

    @property
    def name(self) -> str:
        """The family name, as in ``FAMILIES`` (``"a+b"`` for a composition)."""
        return self.NAME

    @abstractmethod
    def edits(self, text: str, rng: random.Random, protect: Iterable[Protect] = ()) -> list[Edit]:
        """The edits this perturbation makes, non-overlapping, in original positions."""

    def apply(self, text: str, rng: random.Random, protect: Iterable[Protect] = ()) -> tuple[str, list[Edit]]:
        """The perturbed text and its edits. ``protect`` lists strings or spans to leave alone.

        Afterwards every protected string that occurred in ``text`` is checked to still occur.
        """
        protect = list(protect)
        edits = self.edits(text, rng, protect)
        new = apply_edits(text, edits)
        missing = check_preserved(new, [p for p in protect if isinstance(p, str) and p in text])
        if missing:  # cannot happen unless a family ignores its mask: fail loudly, it is a bug
            raise RuntimeError(f"{self.name} edited protected values {missing!r} in {text!r}")
        return new, edits

    def __add__(self, other: Perturbation) -> Compose:
        return Compose((self, other))


@dataclass(frozen=True)
class Compose(Perturbation):
    """Several perturbations on the same original text; where two edits collide, the earlier part wins.

    >>> from guardrail.perturb import CaseNoise, WhitespaceNoise
    >>> Compose((CaseNoise(1.0), WhitespaceNoise(1.0))).name
    'case+whitespace'
    """

    parts: tuple[Perturbation, ...]

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts)

    def __add__(self, other: Perturbation) -> Compose:
        return Compose((*self.parts, other))

    def edits(self, text: str, rng: random.Random, protect: Iterable[Protect] = ()) -> list[Edit]:
        protect = list(protect)
        chosen: list[Edit] = []
        for part in self.parts:
            # Each part gets its own stream, so adding a part never changes what earlier parts do.
            part_rng = random.Random(rng.getrandbits(64))
            chosen += [e for e in part.edits(text, part_rng, protect) if not any(e.overlaps(c) for c in chosen)]
        return sorted(chosen, key=lambda e: (e.start, e.end))


@dataclass(frozen=True)
class Family(Perturbation):
    """Base of the answer-preserving families: severity, optional ``kinds``, nested selection.

    Subclasses list candidate edits in ``_candidates``, drawing everything random *before* the
    severity is consulted; ``edits`` then shuffles and keeps the first ``k`` that fit.
    """

    severity: float = 0.5
    kinds: tuple[str, ...] = ()

    #: The rate at severity 1: the share of eligible sites edited.
    max_rate: ClassVar[float] = 0.1
    #: The sub-kinds a family mixes; ``kinds`` picks some of them (all by default).
    KINDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"{self.name}: severity must be in [0, 1], got {self.severity}")
        unknown = set(self.kinds) - set(self.KINDS)
        if unknown:
            raise ValueError(f"{self.name}: unknown kinds {sorted(unknown)}; choose from {list(self.KINDS)}")
        if not self.kinds:
            object.__setattr__(self, "kinds", self.KINDS)

    @property
    def rate(self) -> float:
        """The share of eligible sites this severity edits."""
        return self.severity * self.max_rate

    def edits(self, text: str, rng: random.Random, protect: Iterable[Protect] = ()) -> list[Edit]:
        roll = rng.random()
        eligible, candidates = self._candidates(text, rng, _Mask(text, protect))
        rng.shuffle(candidates)
        return _take(candidates, _stochastic_round(self.rate * eligible, roll))

    @abstractmethod
    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        """How many sites are eligible, and one candidate edit per site (no-ops left out)."""


def _take(candidates: Sequence[Edit], k: int) -> list[Edit]:
    """The first ``k`` candidates that overlap none taken before: a prefix, hence nested in ``k``."""
    chosen: list[Edit] = []
    for edit in candidates:
        if len(chosen) >= k:
            break
        if not any(edit.overlaps(c) for c in chosen):
            chosen.append(edit)
    return sorted(chosen, key=lambda e: (e.start, e.end))
