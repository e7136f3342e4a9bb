"""Perturbations: the promises every answer-preserving family keeps, and information removal."""

from __future__ import annotations

import random
import re
import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.perturb import (
    FAMILIES,
    PRESERVING,
    CaseNoise,
    CharTypos,
    Compose,
    Distractors,
    Edit,
    InfoRemoval,
    OcrConfusions,
    StopwordDrop,
    UnicodeNoise,
    WhitespaceNoise,
    apply_edits,
    check_preserved,
    derive_seed,
    family,
    find_protected,
    gold_values,
    perturb,
)
from guardrail.suite import load_suite

# Gold values chosen to be awkward: stop words, OCR patterns, digits, punctuation, non-ASCII.
GOLD_VALUES = [
    "Ana Souza", "ann.lee@example.com", "INV-2024-0117", "12.50", "2024-03-01", "https://example.org/a?b=1",
    "Blues", "my", "the", "rn", "Kitsune Games", "+44 20 7946 0321", "Müller GmbH", "O'Connor", "música libre",
    "a", "Co.", "don't",
]  # fmt: skip
WORDS = [
    "please", "send", "the", "invoice", "to", "our", "office", "and", "add", "this", "song", "modern", "clock",
    "Olive", "a", "it's", "co-op", "naïve", "THE", "mystery", "Paris", "for", "in", "rn", "5", "3rd", "x",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", " ", ", ", ". ", "\n", "  ", "\t", "! ", ": "]

word = st.sampled_from(WORDS) | st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=7)


@st.composite
def text_with_gold(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A random text with one to three gold values embedded verbatim."""
    tokens = draw(st.lists(word, max_size=25))
    golds = draw(st.lists(st.sampled_from(GOLD_VALUES), min_size=1, max_size=3, unique=True))
    for gold in golds:
        tokens.insert(draw(st.integers(0, len(tokens))), gold)
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    text = "".join(t + s for t, s in zip(tokens, seps, strict=True)).rstrip()
    return text, golds


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
severity = st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("name", PRESERVING)
@FAST
@given(case=text_with_gold(), seed=st.integers(0, 2**32), low=severity, high=severity)
def test_every_preserving_family_keeps_its_promises(
    name: str, case: tuple[str, list[str]], seed: int, low: float, high: float
) -> None:
    text, golds = case
    low, high = min(low, high), max(low, high)
    new, edits = perturb(text, name, high, seed, protect=golds)

    # Same seed, same output.
    assert perturb(text, name, high, seed, protect=golds) == (new, edits)
    # Severity 0 is the identity.
    assert perturb(text, name, 0.0, seed, protect=golds) == (text, [])
    # Every protected value survives verbatim, and no edit touches a protected span.
    assert check_preserved(new, golds) == []
    for start, end in find_protected(text, extra=golds):
        assert all(e.end <= start or e.start >= end or (e.start == e.end and e.start in (start, end)) for e in edits), (
            start,
            end,
            edits,
        )
    # Edits are located in the original and reproduce the output.
    assert all(text[e.start : e.end] == e.before for e in edits)
    assert apply_edits(text, edits) == new
    # Nested selection: what a lower severity edits, a higher one edits too.
    _, fewer = perturb(text, name, low, seed, protect=golds)
    assert set(fewer) <= set(edits)


@pytest.mark.parametrize("name", PRESERVING)
@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=60), seed=st.integers(0, 2**16))
def test_families_cope_with_any_text(name: str, text: str, seed: int) -> None:
    new, edits = perturb(text, name, 1.0, seed)
    assert apply_edits(text, edits) == new
    assert perturb(text, name, 0.0, seed) == (text, [])


SAMPLE = (
    "Please send the invoice for the modern clock to our office in Paris. The order number is 4471 and "
    "the contact is ann.lee@example.com, as agreed on 2024-03-01. Thanks, and have a good week!"
)


@pytest.mark.parametrize("name", PRESERVING)
def test_edit_count_grows_with_severity(name: str) -> None:
    # A family that never edits would pass the properties above; this one needs it to act.
    counts = {s: statistics.fmean(len(perturb(SAMPLE, name, s, seed)[1]) for seed in range(12)) for s in (0.2, 0.5, 1.0)}
    assert counts[0.5] > 0 and counts[0.2] <= counts[0.5] < counts[1.0], counts


def test_families_and_preserving_are_consistent() -> None:
    assert set(PRESERVING) < set(FAMILIES)
    assert "info_removed" in FAMILIES and "info_removed" not in PRESERVING
    for name in PRESERVING:
        assert family(name, 0.3).name == name


def test_family_kinds_composition_and_errors() -> None:
    assert family("typos.transpose", 0.4) == CharTypos(0.4, kinds=("transpose",))
    assert isinstance(family("typos+case", 0.4), Compose)
    with pytest.raises(ValueError, match=r"unknown perturbation family 'nope'.*typos"):
        family("nope")
    with pytest.raises(ValueError, match="unknown kinds"):
        family("typos.nope")
    with pytest.raises(ValueError, match=r"severity must be in \[0, 1\]"):
        CharTypos(1.5)
    with pytest.raises(ValueError, match="cannot be composed"):
        family("typos+info_removed")


def test_each_kind_does_what_it_says() -> None:
    rng = lambda: random.Random(7)  # noqa: E731
    text = "hello world again"
    out, edits = CharTypos(1.0, kinds=("transpose",)).apply(text, rng())
    assert edits and all(sorted(e.before) == sorted(e.after) and e.before != e.after for e in edits)
    out, edits = CharTypos(1.0, kinds=("delete",)).apply(text, rng())
    assert all(e.after == "" for e in edits) and len(out) == len(text) - len(edits)
    out, edits = CharTypos(1.0, kinds=("neighbour",)).apply(text, rng())
    assert all(e.after in "qwertyuiopasdfghjklzxcvbnm" and len(e.after) == 1 for e in edits)
    out, _ = WhitespaceNoise(1.0, kinds=("newline",)).apply("a b c d e f g h", rng())
    assert "\n" in out
    out, _ = UnicodeNoise(1.0, kinds=("zero_width",)).apply(SAMPLE, rng())
    assert re.search("[\u200b\u200c\u200d\u2060\ufeff]", out)
    out, _ = UnicodeNoise(1.0, kinds=("homoglyph",)).apply(SAMPLE, rng())
    assert re.search("[\u0400-\u04ff\u0370-\u03ff]", out)
    out, _ = CaseNoise(1.0, kinds=("upper",)).apply("send it now", rng())
    assert out.isupper()
    out, _ = OcrConfusions(1.0).apply("modern modern modern clock clock", random.Random(1))
    assert out != "modern modern modern clock clock"
    out, _ = StopwordDrop(1.0).apply("add the song to the list", rng())
    assert out == "add song list"


def test_protected_spans_cover_the_usual_suspects() -> None:
    text = "Mail ann@x.org or see https://x.org/p?q=1. Due 3 March 2024, total $1,250.00, call +1 (415) 555-0142."
    protected = [text[s:e] for s, e in find_protected(text)]
    for expected in ["ann@x.org", "https://x.org/p?q=1", "3 March 2024", "$1,250.00", "+1 (415) 555-0142"]:
        assert any(expected in p for p in protected), (expected, protected)
    # A short gold value protects whole words only, when it occurs as one.
    assert find_protected("my mystery", gold={"owner": "my"}) == [(0, 2)]
    assert find_protected('code `a_b` and {"k": 1}') == [(5, 10), (15, 23)]


def test_protect_accepts_spans_and_instruction_keys_survive() -> None:
    text = "Return invoice_number and currency (EUR or USD) as JSON."
    for seed in range(20):
        new, _ = perturb(text, "typos", 1.0, seed, protect=["invoice_number", "currency", "EUR", "USD"])
        assert check_preserved(new, ["invoice_number", "currency", "EUR", "USD"]) == []
        new, edits = CharTypos(1.0).apply(text, random.Random(seed), [(0, 6)])
        assert new.startswith("Return") and all(e.start >= 6 for e in edits)


def test_gold_values_and_seeds() -> None:
    assert gold_values({"a": [1, 2.0], "b": {"c": "x"}, "d": None, "e": True, "f": " "}) == ["1", "2.0", "2", "x"]
    assert derive_seed(1, "case", "typos", 0.5) == derive_seed(1, "case", "typos", 0.5)
    assert derive_seed(1, "case", "typos", 0.5) != derive_seed(2, "case", "typos", 0.5)


def test_compose_keeps_edits_apart() -> None:
    noisy = CharTypos(1.0) + WhitespaceNoise(1.0) + Distractors(1.0)
    assert noisy.name == "typos+whitespace+distractor"
    for seed in range(10):
        new, edits = noisy.apply(SAMPLE, random.Random(seed), protect=["ann.lee@example.com"])
        assert apply_edits(SAMPLE, edits) == new
        assert "ann.lee@example.com" in new


def test_distractors_sit_on_their_own_lines_in_multiline_text() -> None:
    text = "Name: Ana\nEmail: ana@x.org"
    new, edits = Distractors(1.0).apply(text, random.Random(0))
    assert text in new and len(edits) == Distractors.max_sentences
    assert all(e.after.startswith("\n") or e.after.endswith("\n") for e in edits)
    new, edits = Distractors(1.0, kinds=("long",)).apply("short text", random.Random(0))
    assert all(len(e.after) > 80 for e in edits)


def test_apply_edits_rejects_overlaps() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        apply_edits("abcd", [Edit(0, 2, "ab", ""), Edit(1, 3, "bc", "")])
    with pytest.raises(ValueError, match="does not match"):
        apply_edits("abcd", [Edit(0, 1, "z", "")])


# -- information removal --------------------------------------------------------------------------


def test_info_removal_drops_the_sentence_holding_the_value() -> None:
    text = "Thanks for the call.\nPriya Raman, Halden Logistics\npriya@halden.com\nPhone: +44 20 7946 0321"
    gold = {"name": "Priya Raman", "email": "priya@halden.com", "phone": "+44 20 7946 0321", "company": "Halden Logistics"}
    removal = InfoRemoval(0.25).apply(text, random.Random(0), gold, fields=["phone", "company"])
    assert removal.removed in (("phone",), ("company",))
    field_name = removal.removed[0]
    assert gold[field_name] not in removal.text
    assert field_name not in removal.gold and len(removal.gold) == 3
    assert all(v in removal.text for k, v in gold.items() if k != field_name)
    assert apply_edits(text, removal.edits) == removal.text
    assert all(e.after == "" for e in removal.edits)


def test_info_removal_in_one_sentence_takes_the_words_and_their_connector() -> None:
    text = "book a table for 4 people in Paris at a sushi bar"
    gold = {"party_size_number": ["4"], "city": ["Paris"], "cuisine": ["sushi"]}
    removal = InfoRemoval(0.3).apply(text, random.Random(3), gold, fields=["city"])
    assert removal.removed == ("city",)
    assert removal.text == "book a table for 4 people at a sushi bar"


def test_info_removal_refuses_what_it_cannot_remove_cleanly() -> None:
    # "Blues" only occurs inside the kept value "Blues Mix", and vice versa.
    gold = {"genre": ["Blues"], "playlist": ["Blues Mix"]}
    assert InfoRemoval(1.0).apply("play Blues Mix", random.Random(0), gold).removed == ()
    # Nothing to do at severity 0, for non-object gold, or when a value is not verbatim.
    assert InfoRemoval(0.0).apply("Call Ana", random.Random(0), {"name": "Ana"}).text == "Call Ana"
    assert InfoRemoval(1.0).apply("x", random.Random(0), ["x"]).removed == ()
    assert InfoRemoval(1.0).apply("total 1,250.00", random.Random(0), {"total": 1250.0}).removed == ()
    with pytest.raises(ValueError, match="needs the gold"):
        perturb("text", "info_removed", 0.5, 0)


def test_info_removal_keeps_one_field_and_grows_with_severity() -> None:
    text = "Name: Ana Lee\nCompany: Acme\nPhone: 555-0100\nEmail: ana@acme.com"
    gold = {"name": "Ana Lee", "company": "Acme", "phone": "555-0100", "email": "ana@acme.com"}
    sizes = [len(InfoRemoval(s).apply(text, random.Random(1), gold).removed) for s in (0.25, 0.5, 1.0)]
    assert sizes == sorted(sizes) and sizes[0] >= 1 and sizes[-1] == 3


def test_info_removal_on_the_shipped_suites_keeps_its_invariants() -> None:
    for path in ("examples/suites/snips.yaml", "examples/suites/invoice_contact.yaml"):
        removed_any = 0
        for _, case in load_suite(path).cases():
            for seed in range(3):
                r = InfoRemoval(0.5).apply(case.input, random.Random(seed), case.gold)
                assert apply_edits(case.input, r.edits) == r.text
                for name in r.removed:
                    for value in gold_values(case.gold[name]):
                        assert value.casefold() not in r.text.casefold() or not re.search(
                            rf"(?<!\w){re.escape(value)}(?!\w)", r.text, re.IGNORECASE
                        ), (case.id, value, r.text)
                kept = [v for k, val in case.gold.items() if k not in r.removed for v in gold_values(val)]
                assert check_preserved(r.text, [v for v in kept if v in case.input]) == []
                assert set(r.gold) == set(case.gold) - set(r.removed)
                removed_any += bool(r.removed)
        assert removed_any > 0, path



def test_canonical_family_accepts_aliases_case_and_dashes() -> None:
    from guardrail.perturb import ALIASES, FAMILIES, canonical_family

    assert all(canonical_family(alias) == name and name in FAMILIES for alias, name in ALIASES.items())
    assert canonical_family("Word-Swap+OCR-Confusions") == "word_swap+ocr"
    with pytest.raises(ValueError, match="unknown perturbation family 'sunspots'; choose from typos"):
        canonical_family("typos+sunspots")
