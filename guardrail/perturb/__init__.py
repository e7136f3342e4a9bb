"""Seeded, composable text perturbations that never touch protected spans.

A perturbation family is a small frozen dataclass with a ``severity`` in [0, 1]. Severity maps
to a *rate*: the share of the family's eligible sites (letters, spaces, words ...) it edits,
``rate = severity * max_rate``. ``apply(text, rng, protect)`` returns the new text and its
``Edit`` list, each edit located in the *original* text, so a report can show exactly what
changed.

Three promises hold for every answer-preserving family (``PRESERVING``), and the tests check
them on random texts:

* the same seed gives the same output, and severity 0 gives the text unchanged;
* protected spans (gold values found verbatim, numbers, emails, URLs, dates, code and JSON
  snippets, and whatever the caller lists) are never edited, so every gold value still occurs
  verbatim afterwards (``check_preserved``);
* selection is *nested*: a family lists its candidate edits and shuffles them before it looks at
  the severity, then takes the first ``k`` that do not overlap (``k = rate * eligible``,
  rounded stochastically with a draw also made first). The edits at a lower severity are
  therefore a subset of the edits at a higher one, with the same seed.

``info_removed`` is the odd one out and is kept apart from ``PRESERVING``: it deletes the
sentence (or, in a one-sentence text, the words) holding a gold value, so that field's right
answer becomes "not known". It needs the gold output, so it has its own ``InfoRemoval.apply``.

Layout: ``_core`` holds the shared machinery (``Edit``, protected spans, ``Family``'s nested
selection, ``Compose``), ``_families`` the answer-preserving families, ``_removal`` information
removal, and ``guardrail._noise_data`` the tables they draw from. Import from here;
``canonical_family`` turns the other spellings a user may type (``ALIASES``) into family names.

>>> text, edits = perturb("Send the invoice to ann@example.com today", "typos", 1.0, seed=3)
>>> "ann@example.com" in text
True
>>> perturb("unchanged at severity zero", "typos", 0.0, seed=3)
('unchanged at severity zero', [])
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from guardrail.perturb._core import (
    Compose,
    Edit,
    Family,
    Perturbation,
    Protect,
    Span,
    apply_edits,
    check_preserved,
    derive_seed,
    find_protected,
    gold_values,
)
from guardrail.perturb._families import (
    CaseNoise,
    CharTypos,
    Distractors,
    OcrConfusions,
    PunctuationNoise,
    StopwordDrop,
    UnicodeNoise,
    WhitespaceNoise,
    WordDuplicate,
    WordSwap,
)
from guardrail.perturb._removal import InfoRemoval, Removal

# -- registry and the plain entry point -------------------------------------------------------

_REGISTRY: dict[str, type[Family]] = {
    cls.NAME: cls
    for cls in (
        CharTypos,
        OcrConfusions,
        CaseNoise,
        WhitespaceNoise,
        PunctuationNoise,
        UnicodeNoise,
        WordSwap,
        WordDuplicate,
        StopwordDrop,
        Distractors,
    )
}

#: The answer-preserving families, by name.
PRESERVING: tuple[str, ...] = tuple(_REGISTRY)
#: Every family name ``perturb`` accepts. A family with kinds also takes ``"name.kind"``.
FAMILIES: tuple[str, ...] = (*PRESERVING, InfoRemoval.NAME)


def family(name: str, severity: float = 0.5) -> Perturbation | InfoRemoval:
    """The family called ``name`` at ``severity``; ``"typos.transpose"`` picks one kind, and
    ``"typos+case"`` composes families (each at ``severity``).

    >>> family("unicode.zero_width", 0.3)
    UnicodeNoise(severity=0.3, kinds=('zero_width',))
    >>> family("typos+case", 0.3).name
    'typos+case'
    """
    if "+" in name:
        parts = [family(part, severity) for part in name.split("+")]
        if any(isinstance(p, InfoRemoval) for p in parts):
            raise ValueError(f"{name!r}: info_removed changes the answer and cannot be composed with noise")
        return Compose(tuple(p for p in parts if isinstance(p, Perturbation)))
    base, _, kind = name.partition(".")
    if base == InfoRemoval.NAME and not kind:
        return InfoRemoval(severity)
    if base not in _REGISTRY:
        raise ValueError(f"unknown perturbation family {name!r}; choose from {', '.join(FAMILIES)}")
    return _REGISTRY[base](severity, kinds=(kind,) if kind else ())


def perturb(
    text: str, family: str, severity: float, seed: int, protect: Iterable[Protect] = (), *, gold: Any = None
) -> tuple[str, list[Edit]]:
    """Perturb ``text`` with one family; the plain entry point.

    ``protect`` lists strings or spans to keep; gold leaf values (``gold``) are kept too, and
    afterwards checked to still occur verbatim. ``info_removed`` needs ``gold`` and removes
    rather than keeps: use ``InfoRemoval.apply`` to learn which fields went.

    >>> perturb("add Blues to my playlist", "word_duplicate", 1.0, seed=3, gold={"playlist": ["Blues"]})
    ('add add Blues to my playlist', [Edit(start=0, end=3, before='add', after='add add')])
    """
    rng = random.Random(seed)
    chosen = _family(family, severity)
    if isinstance(chosen, InfoRemoval):
        if gold is None:
            raise ValueError("info_removed needs the gold output (gold=...) to know what to remove")
        removal = chosen.apply(text, rng, gold)
        return removal.text, removal.edits
    return chosen.apply(text, rng, [*protect, *gold_values(gold)])


_family = family  # ``perturb``'s parameter is called ``family``, as in the docs; this reaches the factory


# -- names ----------------------------------------------------------------------------------------

#: Other spellings accepted for family names (the CLI's names, plurals, long forms).
ALIASES: dict[str, str] = {
    "typo": "typos", "char_typos": "typos", "keyboard": "typos",
    "ocr_confusions": "ocr", "ocr_confusion": "ocr",
    "casing": "case", "case_noise": "case",
    "distractors": "distractor",
    "space": "whitespace", "spaces": "whitespace",
    "punct": "punctuation",
    "homoglyphs": "unicode", "homoglyph": "unicode",
    "swap": "word_swap", "duplicate": "word_duplicate", "stopwords": "stopword_drop",
    "info_removal": "info_removed", "removal": "info_removed",
}  # fmt: skip


def canonical_family(name: str) -> str:
    """The name ``family`` knows for ``name``, accepting ``ALIASES``, any case and ``-`` for ``_``.

    ``"a+b"`` compositions and ``"family.kind"`` selections keep their shape.

    >>> canonical_family("Distractors"), canonical_family("typos.transpose"), canonical_family("ocr+case")
    ('distractor', 'typos.transpose', 'ocr+case')
    """
    parts = []
    for part in name.split("+"):
        base, dot, kind = part.strip().lower().replace("-", "_").partition(".")
        base = ALIASES.get(base, base)
        if base not in FAMILIES:
            raise ValueError(f"unknown perturbation family {part.strip()!r}; choose from {', '.join(FAMILIES)}")
        parts.append(base + dot + kind)
    return "+".join(parts)


__all__ = [
    "ALIASES", "FAMILIES", "PRESERVING", "CaseNoise", "CharTypos", "Compose", "Distractors", "Edit", "Family",
    "InfoRemoval", "OcrConfusions", "Perturbation", "Protect", "PunctuationNoise", "Removal", "Span",
    "StopwordDrop", "UnicodeNoise", "WhitespaceNoise", "WordDuplicate", "WordSwap", "apply_edits",
    "canonical_family", "check_preserved", "derive_seed", "family", "find_protected", "gold_values", "perturb",
]  # fmt: skip
