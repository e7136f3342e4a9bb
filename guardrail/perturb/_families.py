"""The answer-preserving perturbation families."""

from __future__ import annotations

import itertools
import random
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from guardrail import _noise_data as data
from guardrail.perturb._core import Edit, Family, Protect, _free_words, _Mask, _stochastic_round


def _same_case(model: str, char: str) -> str:
    return char.upper() if model.isupper() else char


@dataclass(frozen=True)
class CharTypos(Family):
    """Keyboard typos on unprotected letters: neighbour key, transposition, deletion, insertion, doubling.

    >>> import random
    >>> CharTypos(1.0, kinds=("double",)).apply("hello world", random.Random(1))[0]
    'heello woorld'
    """

    NAME: ClassVar[str] = "typos"
    max_rate: ClassVar[float] = 0.15
    KINDS: ClassVar[tuple[str, ...]] = ("neighbour", "transpose", "delete", "insert", "double")

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        sites = [i for i, c in enumerate(text) if c.isalpha() and mask.free(i, i + 1)]
        out: list[Edit] = []
        for i in sites:
            kind, pick = rng.choice(self.kinds), rng.random()
            c = text[i]
            keys = data.QWERTY_NEIGHBOURS.get(c.lower(), "")
            key = _same_case(c, keys[int(pick * len(keys))]) if keys else ""
            if kind == "transpose":
                nxt = text[i + 1] if i + 1 < len(text) else ""
                if nxt.isalpha() and nxt != c and mask.free(i, i + 2):
                    out.append(Edit(i, i + 2, c + nxt, nxt + c))
            elif kind == "delete":
                out.append(Edit(i, i + 1, c, ""))
            elif kind == "double":
                out.append(Edit(i, i + 1, c, c + c))
            elif key:  # neighbour or insert; letters off the US layout have no neighbours
                out.append(Edit(i, i + 1, c, key if kind == "neighbour" else c + key))
        return len(sites), out


@dataclass(frozen=True)
class OcrConfusions(Family):
    """Glyphs an OCR engine mixes up (rn→m, l→1, O→0, cl→d ...), inside unprotected words.

    >>> import random
    >>> OcrConfusions(1.0).apply("modern clock", random.Random(1))[0]
    'modcm c10ck'
    """

    NAME: ClassVar[str] = "ocr"
    max_rate: ClassVar[float] = 0.35

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        out: list[Edit] = []
        for start, end in _free_words(text, mask):
            for i in range(start, end):
                for size in (2, 1):  # overlapping candidates are fine: selection skips collisions
                    source = text[i : i + size]
                    if i + size <= end and source in data.OCR_CONFUSIONS:
                        out.append(Edit(i, i + size, source, rng.choice(data.OCR_CONFUSIONS[source])))
        return len(out), out


@dataclass(frozen=True)
class CaseNoise(Family):
    """Case changes on unprotected words: UPPER, lower, Capitalised or rAnDoM.

    >>> import random
    >>> CaseNoise(1.0, kinds=("upper",)).apply("please send it", random.Random(0))[0]
    'PLEASE SEND IT'
    """

    NAME: ClassVar[str] = "case"
    max_rate: ClassVar[float] = 1.0
    KINDS: ClassVar[tuple[str, ...]] = ("upper", "lower", "capitalise", "random")

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        words = [w for w in _free_words(text, mask) if any(c.isalpha() for c in text[w[0] : w[1]])]
        out: list[Edit] = []
        for start, end in words:
            word = text[start:end]
            kind, bits = rng.choice(self.kinds), rng.getrandbits(len(word))
            if kind == "upper":
                new = word.upper()
            elif kind == "lower":
                new = word.lower()
            elif kind == "capitalise":
                new = word[:1].upper() + word[1:].lower()
            else:
                new = "".join(c.upper() if bits >> j & 1 else c.lower() for j, c in enumerate(word))
            # upper() may change the length ("ß" -> "SS"); such a word is left alone.
            if new != word and len(new) == len(word):
                out.append(Edit(start, end, word, new))
        return len(words), out


@dataclass(frozen=True)
class WhitespaceNoise(Family):
    """Spaces outside protected spans turned into doubled spaces, stray newlines or tabs.

    >>> import random
    >>> WhitespaceNoise(1.0, kinds=("tab",)).apply("a b c", random.Random(0))[0]
    'a\\tb c'
    """

    NAME: ClassVar[str] = "whitespace"
    max_rate: ClassVar[float] = 0.5
    KINDS: ClassVar[tuple[str, ...]] = ("double", "newline", "tab")
    _AFTER: ClassVar[dict[str, str]] = {"double": "  ", "newline": "\n", "tab": "\t"}

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        sites = [i for i, c in enumerate(text) if c == " " and mask.free(i, i + 1)]
        return len(sites), [Edit(i, i + 1, " ", self._AFTER[rng.choice(self.kinds)]) for i in sites]


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


@dataclass(frozen=True)
class PunctuationNoise(Family):
    """Punctuation added after unprotected words, or existing marks deleted or replaced.

    >>> import random
    >>> PunctuationNoise(1.0, kinds=("delete",)).apply("Hi, it's me.", random.Random(1))[0]
    "Hi it's me"
    """

    NAME: ClassVar[str] = "punctuation"
    max_rate: ClassVar[float] = 0.3
    KINDS: ClassVar[tuple[str, ...]] = ("insert", "delete", "replace")

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        marks = [i for i, c in enumerate(text) if _is_punctuation(c) and mask.free(i, i + 1)]
        word_ends = [end - 1 for _, end in _free_words(text, mask)]
        out: list[Edit] = []
        for i in sorted([*marks, *word_ends]):
            c, mark = text[i], rng.choice(data.PUNCTUATION)
            kinds = [k for k in self.kinds if (k == "insert") != _is_punctuation(c)]
            kind = rng.choice(kinds) if kinds else None
            if kind == "insert":
                out.append(Edit(i, i + 1, c, c + mark))
            elif kind == "delete":
                out.append(Edit(i, i + 1, c, ""))
            elif kind == "replace" and mark != c:
                out.append(Edit(i, i + 1, c, mark))
        return len(marks) + len(word_ends), out


@dataclass(frozen=True)
class UnicodeNoise(Family):
    """Look-alike letters from other scripts, zero-width characters and full-width forms.

    >>> import random
    >>> UnicodeNoise(1.0, kinds=("fullwidth",)).apply("ok then", random.Random(1))[0]
    'oｋ theｎ'
    """

    NAME: ClassVar[str] = "unicode"
    max_rate: ClassVar[float] = 0.2
    KINDS: ClassVar[tuple[str, ...]] = ("homoglyph", "zero_width", "fullwidth")

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        sites = [i for i, c in enumerate(text) if not c.isspace() and mask.free(i, i + 1)]
        out: list[Edit] = []
        for i in sites:
            c, kind, mark = text[i], rng.choice(self.kinds), rng.choice(data.ZERO_WIDTH)
            if kind == "homoglyph" and c in data.HOMOGLYPHS:
                out.append(Edit(i, i + 1, c, data.HOMOGLYPHS[c]))
            elif kind == "zero_width":
                out.append(Edit(i, i + 1, c, c + mark))
            elif kind == "fullwidth" and 0x21 <= ord(c) <= 0x7E:
                out.append(Edit(i, i + 1, c, chr(ord(c) + data.FULLWIDTH_OFFSET)))
        return len(sites), out


@dataclass(frozen=True)
class WordSwap(Family):
    """Two adjacent unprotected words, separated by spaces only, swap places.

    >>> import random
    >>> WordSwap(1.0).apply("one two three four", random.Random(0))[0]
    'one two four three'
    """

    NAME: ClassVar[str] = "word_swap"
    max_rate: ClassVar[float] = 0.3

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        words = _free_words(text, mask)
        out: list[Edit] = []
        for (s1, e1), (s2, e2) in itertools.pairwise(words):
            gap = text[e1:s2]
            if gap.strip(" ") == "" and gap and text[s1:e1] != text[s2:e2]:
                out.append(Edit(s1, e2, text[s1:e2], text[s2:e2] + gap + text[s1:e1]))
        return max(len(words) - 1, 0), out


@dataclass(frozen=True)
class WordDuplicate(Family):
    """Unprotected words written twice ("the the").

    >>> import random
    >>> WordDuplicate(1.0).apply("add it to the list", random.Random(3))[0]
    'add add it to to the list'
    """

    NAME: ClassVar[str] = "word_duplicate"
    max_rate: ClassVar[float] = 0.25

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        words = _free_words(text, mask)
        return len(words), [Edit(s, e, text[s:e], f"{text[s:e]} {text[s:e]}") for s, e in words]


@dataclass(frozen=True)
class StopwordDrop(Family):
    """Unprotected stop words ("the", "to", "please" ...) dropped with a neighbouring space.

    Negations are not stop words here: dropping "not" would change the answer.

    >>> import random
    >>> StopwordDrop(1.0).apply("add the song to my list", random.Random(0))[0]
    'add song my list'
    """

    NAME: ClassVar[str] = "stopword_drop"
    max_rate: ClassVar[float] = 1.0

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        out: list[Edit] = []
        for start, end in _free_words(text, mask):
            if text[start:end].lower() not in data.STOP_WORDS:
                continue
            after = len(text[end:]) - len(text[end:].lstrip())
            before = len(text[:start]) - len(text[:start].rstrip())
            span = (start, end + after) if after else (start - before, end)
            if mask.free(*span):
                out.append(Edit(*span, text[span[0] : span[1]], ""))
        return len(out), out


@dataclass(frozen=True)
class Distractors(Family):
    """Irrelevant sentences from a small built-in corpus, before and after the text.

    Severity sets how many: ``round(severity * max_sentences)`` (stochastically). They sit on a
    new line when the text has several lines, else after a space.

    >>> import random
    >>> text, edits = Distractors(0.5, kinds=("short",)).apply("Rate this book 4 stars", random.Random(0))
    >>> len(edits), "Rate this book 4 stars" in text
    (3, True)
    """

    NAME: ClassVar[str] = "distractor"
    max_rate: ClassVar[float] = 1.0
    max_sentences: ClassVar[int] = 6
    KINDS: ClassVar[tuple[str, ...]] = ("short", "long")

    def edits(self, text: str, rng: random.Random, protect: Iterable[Protect] = ()) -> list[Edit]:
        roll = rng.random()
        pool = [
            *(data.SHORT_DISTRACTORS if "short" in self.kinds else ()),
            *(data.LONG_DISTRACTORS if "long" in self.kinds else ()),
        ]
        order = rng.sample(pool, len(pool))
        sides = [rng.random() < 0.5 for _ in order]
        k = min(_stochastic_round(self.rate * self.max_sentences, roll), len(pool))
        sep = "\n" if "\n" in text.strip() else " "
        end = len(text)
        edits = [
            Edit(0, 0, "", s + sep) if first else Edit(end, end, "", sep + s)
            for s, first in zip(order[:k], sides[:k], strict=True)
        ]
        return sorted(edits, key=lambda e: (e.start, e.end))

    def _candidates(self, text: str, rng: random.Random, mask: _Mask) -> tuple[int, list[Edit]]:
        raise NotImplementedError  # pragma: no cover - edits() is overridden
