"""Metrics on hand-computed rows: validity, field F1, consistency, PDR, abstention, intervals, score."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from guardrail.metrics import (
    BETTER_UNDER_NOISE,
    MEAN_METRICS,
    MEASURABLE_DROP,
    NO_MEASURABLE_DROP,
    OutcomeRow,
    abstained,
    agreement,
    bootstrap_ci,
    exact_match,
    field_counts,
    field_f1,
    pdr_verdict,
    read_rows,
    same_value,
    score,
    summarize,
)


def row(
    case: str,
    family: str = "clean",
    severity: float = 0.0,
    *,
    output: Any,
    gold: Any,
    valid: bool = True,
    valid_first: bool | None = None,
    attempts: int = 1,
    **extra: Any,
) -> OutcomeRow:
    out: dict[str, Any] = {
        "case_id": case,
        "family": family,
        "severity": severity,
        "valid": valid,
        "valid_first": valid if valid_first is None else valid_first,
        "attempts": attempts,
        "output": output if valid else None,
        "gold": gold,
        **extra,
    }
    return out  # type: ignore[return-value]


# -- comparing values -----------------------------------------------------------------------------


def test_strings_numbers_and_empties_compare_after_normalisation() -> None:
    assert same_value("  Ｂlues  Mix.", "blues mix")  # full-width, case, spaces, trailing dot
    assert same_value(12.5, "12.50") and same_value("$1,250.00", 1250)
    assert same_value(0.1 + 0.2, 0.3)
    assert not same_value(12.5, 12.51) and not same_value("12.5", "12.50")  # two strings compare as text
    assert same_value(None, "") and same_value([], None) and not same_value(None, 0)
    assert same_value(["a", "b", "a"], ["a", "a", "B"]) and not same_value(["a", "a"], ["a", "b"])
    assert not same_value(True, 1)


def test_field_counts_treat_lists_as_multisets_and_flatten_objects() -> None:
    gold = {"artist": ["Ana", "Ana", "Bo"], "city": "Paris", "meta": {"id": 7, "note": None}}
    out = {"artist": ["ana", "Cy"], "city": "paris", "meta": {"id": 7.0}, "extra": "x"}
    # artist: 1 hit (ana), 1 false positive (Cy), 2 misses (Ana, Bo); city: hit; meta.id: hit; extra: FP.
    assert field_counts(out, gold) == (3, 2, 2)
    assert field_f1(out, gold) == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))


def test_field_f1_edge_cases() -> None:
    assert field_f1({}, {}) == 1.0
    assert field_f1({"phone": None}, {}) == 1.0  # null and absent agree
    assert field_f1({"a": 1}, {"a": 1}, valid=False) == 0.0  # invalid output is wrong
    assert field_f1({}, {"a": "x", "b": "y"}) == 0.0  # all missing
    assert field_f1({"a": "x"}, {"a": "x", "b": "y"}) == pytest.approx(2 / 3)
    items = [
        {"description": "Cups", "quantity": 3, "unit_price": 18.5},
        {"description": "Lids", "quantity": 3, "unit_price": 12},
    ]
    swapped = [dict(items[1], unit_price=12.0), dict(items[0])]
    assert field_f1({"items": swapped, "total": 91.5}, {"items": items, "total": 91.5}) == 1.0
    wrong = [dict(items[0], quantity=4), items[1]]
    assert field_counts({"items": wrong}, {"items": items}) == (1, 1, 1)


def test_exact_match_agreement_and_abstention() -> None:
    assert exact_match({"name": "ana lee", "phone": None}, {"name": "Ana Lee"})
    assert not exact_match({"name": "Ana"}, {"name": "Ana"}, valid=False)
    assert not exact_match({"name": "Ana", "x": 1}, {"name": "Ana"})
    assert agreement({"a": 1, "b": "x"}, {"a": 1, "b": "y"}) == 0.5
    assert agreement({}, {"a": None}) == 1.0
    assert abstained({"name": "Ana", "phone": None}, ["phone"])
    assert abstained({"name": "Ana"}, ["phone"])
    assert not abstained({"phone": "555"}, ["phone"])
    assert not abstained({"meta": {"phone": "1"}}, ["meta"])
    assert not abstained({"name": "Ana"}, ["phone"], valid=False)


# -- a small run, computed by hand ---------------------------------------------------------------

GOLD_A = {"name": "Ana", "city": "Paris"}
GOLD_B = {"name": "Bo", "city": "Rome"}


def small_run() -> list[OutcomeRow]:
    return [
        # Clean: a perfect, b half right (F1 0.5: 1 TP, 1 FP, 1 FN).
        row("a", output={"name": "Ana", "city": "Paris"}, gold=GOLD_A, latency_s=1.0, tokens=10),
        row("b", output={"name": "Bo", "city": "Milan"}, gold=GOLD_B, latency_s=3.0, tokens=30),
        # typos at 0.5, two seeds each.
        row("a", "typos", 0.5, output={"name": "Ana", "city": "Paris"}, gold=GOLD_A, seed=0),
        row("a", "typos", 0.5, output={"name": "Ana"}, gold=GOLD_A, valid_first=False, attempts=2, seed=1),
        row("b", "typos", 0.5, output=None, gold=GOLD_B, valid=False, attempts=3, seed=0),
        row("b", "typos", 0.5, output={"name": "Bo", "city": "Milan"}, gold=GOLD_B, seed=1),
        # Information removed: a abstains on city, b invents one.
        row("a", "info_removed", 0.5, output={"name": "Ana", "city": None}, gold={"name": "Ana"}, removed_fields=["city"]),
        row("b", "info_removed", 0.5, output={"name": "Bo", "city": "Rome"}, gold={"name": "Bo"}, removed_fields=["city"]),
    ]


def value(cell: dict[str, Any], metric: str) -> float | None:
    return cell[metric]["value"]  # type: ignore[no-any-return]


def test_summary_of_a_small_run_matches_hand_computation() -> None:
    s = summarize(small_run(), n_boot=200)
    clean, typos, info = s["clean"], s["families"]["typos"]["0.5"], s["info_removed"]
    assert (clean["n"], clean["cases"]) == (2, 2)
    assert value(clean, "field_f1") == pytest.approx(0.75)
    assert value(clean, "exact_match") == 0.5
    assert value(clean, "consistency") is None and value(clean, "pdr") is None

    assert value(typos, "valid_at_1") == 0.5  # a/seed1 failed first, b/seed0 never valid
    assert value(typos, "valid_at_k") == 0.75
    assert value(typos, "mean_attempts") == pytest.approx((1 + 2 + 3 + 1) / 4)
    f1s = [1.0, 2 / 3, 0.0, 0.5]
    assert value(typos, "field_f1") == pytest.approx(sum(f1s) / 4)
    assert value(typos, "exact_match") == 0.25
    # consistency against the clean output: 1, 1/2 (city now absent), 0 (invalid), 1 (same wrong answer)
    assert value(typos, "consistency") == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # PDR pairs each row with its case's clean F1: 1 - Σ perturbed / Σ clean.
    assert value(typos, "pdr") == pytest.approx(1 - sum(f1s) / (1.0 + 1.0 + 0.5 + 0.5))
    assert value(typos, "abstention_accuracy") is None

    assert value(info, "abstention_accuracy") == 0.5
    assert value(info, "field_f1") == pytest.approx((1.0 + 2 / 3) / 2)
    assert value(info, "consistency") is None and value(info, "pdr") is None
    assert s["families"]["info_removed"]["0.5"]["abstention_accuracy"]["value"] == 0.5
    assert s["overall"]["n"] == 4  # only the answer-preserving rows

    assert clean["latency_s"] == {"mean": 2.0, "p50": 2.0, "p95": pytest.approx(2.9)}
    assert clean["tokens"] == {"mean": 20.0, "total": 40}
    assert typos["tokens"] == {"mean": None, "total": None}

    parts = s["score_parts"]
    assert parts == {"clean_f1": 0.75, "noisy_f1": pytest.approx(sum(f1s) / 4), "abstention": 0.5}
    assert s["score"] == pytest.approx(100 * (0.25 * 0.75 + 0.5 * sum(f1s) / 4 + 0.25 * 0.5))
    json.dumps(s)  # the summary is plain JSON


def test_noisy_f1_averages_cells_not_rows() -> None:
    rows = [row("a", output={"x": 1}, gold={"x": 1})]
    rows += [row("a", "case", 1.0, output={"x": 1}, gold={"x": 1}, seed=i) for i in range(5)]
    rows += [row("a", "typos", 1.0, output={"x": 2}, gold={"x": 1})]
    assert summarize(rows, n_boot=0)["score_parts"]["noisy_f1"] == 0.5


def test_consistency_skips_rows_whose_clean_output_was_invalid() -> None:
    rows = [row("a", output=None, gold={"x": 1}, valid=False), row("a", "typos", 0.5, output={"x": 1}, gold={"x": 1})]
    s = summarize(rows, n_boot=50)
    assert s["families"]["typos"]["0.5"]["consistency"] == {"value": None, "ci": None, "half_width": None, "cases": 0}
    pdr = s["families"]["typos"]["0.5"]["pdr"]
    assert pdr["value"] is None and pdr["verdict"] is None  # clean F1 is 0: the drop is undefined


def test_instruction_noise_gets_its_own_cells() -> None:
    rows = [
        row("a", output={"x": 1}, gold={"x": 1}, target="none"),
        row("a", "typos", 0.5, output={"x": 1}, gold={"x": 1}, target="instruction"),
    ]
    assert list(summarize(rows, n_boot=0)["families"]) == ["typos@instruction"]


def test_score_renormalises_missing_terms() -> None:
    assert score({"clean_f1": 1.0, "noisy_f1": None, "abstention": None}) == 100.0
    assert score({"clean_f1": None, "noisy_f1": None, "abstention": None}) is None
    assert score({"clean_f1": 0.8, "noisy_f1": 0.4, "abstention": 1.0}) == pytest.approx(100 * (0.2 + 0.2 + 0.25))


# -- intervals ------------------------------------------------------------------------------------


def test_bootstrap_intervals_are_seeded_and_sensible() -> None:
    clusters = [[(i * 37 % 101) / 100, (i * 53 % 97) / 96] for i in range(40)]
    mean = sum(map(sum, clusters)) / 80
    first = bootstrap_ci(clusters, n_boot=300, seed=4)
    assert first == bootstrap_ci(clusters, n_boot=300, seed=4)
    assert first != bootstrap_ci(clusters, n_boot=300, seed=5)
    assert first is not None and 0.0 < first[0] < mean < first[1] < 1.0
    wide, narrow = bootstrap_ci(clusters, n_boot=300, confidence=0.99), bootstrap_ci(clusters, n_boot=300, confidence=0.5)
    assert wide is not None and narrow is not None and wide[0] < narrow[0] < narrow[1] < wide[1]
    assert bootstrap_ci([[1.0], [1.0]], n_boot=50) == (1.0, 1.0)
    assert bootstrap_ci([], n_boot=50) is None


def test_summary_intervals_are_reproducible_and_resample_cases() -> None:
    one = summarize(small_run(), n_boot=300, seed=1)
    assert one == summarize(small_run(), n_boot=300, seed=1)
    lo, hi = one["families"]["typos"]["0.5"]["field_f1"]["ci"]
    # Cases, not rows, are resampled: a resample holds a's two rows (mean F1 5/6), b's (1/4) or both.
    assert lo == pytest.approx(0.25) and hi == pytest.approx(5 / 6)
    for cell in (one["clean"], one["overall"], one["info_removed"]):
        for metric in ("valid_at_1", "valid_at_k", "exact_match", "field_f1"):
            estimate = cell[metric]
            assert estimate["ci"][0] - 1e-9 <= estimate["value"] <= estimate["ci"][1] + 1e-9, (metric, estimate)
    no_boot = summarize(small_run(), n_boot=0)
    assert no_boot["clean"]["field_f1"] == {"value": 0.75, "ci": None, "half_width": None, "cases": 2}
    assert no_boot["families"]["typos"]["0.5"]["pdr"]["verdict"] is None  # no interval, nothing to judge by


def test_every_interval_reports_its_half_width_and_cases() -> None:
    s = summarize(small_run(), n_boot=300, seed=1)
    typos = s["families"]["typos"]["0.5"]
    # The interval of test_summary_intervals_are_reproducible_and_resample_cases: [1/4, 5/6].
    assert typos["field_f1"]["half_width"] == pytest.approx((5 / 6 - 0.25) / 2)
    for cell in (s["clean"], s["overall"], s["info_removed"], typos):
        for metric in (*MEAN_METRICS, "pdr"):
            estimate = cell[metric]
            if estimate["ci"] is None:
                assert estimate["half_width"] is None, (metric, estimate)
            else:
                lo, hi = estimate["ci"]
                assert estimate["half_width"] == pytest.approx((hi - lo) / 2), (metric, estimate)
    assert typos["field_f1"]["cases"] == typos["pdr"]["cases"] == typos["consistency"]["cases"] == 2
    assert s["clean"]["consistency"]["cases"] == 0 and s["info_removed"]["abstention_accuracy"]["cases"] == 2
    json.dumps(s)


def test_estimate_cases_count_only_the_cases_a_metric_applies_to() -> None:
    # Case a's clean output is invalid, so its perturbed row has no consistency: one case behind
    # consistency, two behind field F1.
    rows = [
        row("a", output=None, gold={"x": 1}, valid=False),
        row("b", output={"x": 2}, gold={"x": 2}),
        row("a", "typos", 0.5, output={"x": 1}, gold={"x": 1}),
        row("b", "typos", 0.5, output={"x": 2}, gold={"x": 2}),
    ]
    cell = summarize(rows, n_boot=50)["families"]["typos"]["0.5"]
    assert cell["cases"] == cell["field_f1"]["cases"] == 2
    assert cell["consistency"]["cases"] == 1 and cell["consistency"]["value"] == 1.0


GOLD_TEN = {f"f{i}": f"v{i}" for i in range(10)}


def _answer(right: int) -> dict[str, str]:
    """The first ``right`` fields of GOLD_TEN and nothing else: F1 = 2·right / (10 + right)."""
    return {f"f{i}": f"v{i}" for i in range(right)}


def _percentile_ci(replicates: list[float]) -> tuple[float, float]:
    ordered = sorted(replicates)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]


def test_pdr_interval_is_paired_by_case() -> None:
    # Easy cases (all ten fields clean, nine under noise) and hard ones (one field, clean and
    # noisy): clean and perturbed F1 move together across cases, the drop itself barely varies.
    # Resampling cases pairs each perturbed F1 with its own clean F1, so the interval is narrow;
    # drawing the numerator's cases and the denominator's cases independently would not be.
    rows: list[OutcomeRow] = []
    per_case: list[tuple[float, float]] = []  # (perturbed F1, clean F1)
    for i in range(30):
        clean_right, noisy_right = (10, 9) if i % 2 else (1, 1)
        case = f"c{i:02d}"
        rows.append(row(case, output=_answer(clean_right), gold=GOLD_TEN))
        rows.append(row(case, "typos", 0.2, output=_answer(noisy_right), gold=GOLD_TEN))
        per_case.append((field_f1(_answer(noisy_right), GOLD_TEN), field_f1(_answer(clean_right), GOLD_TEN)))
    pdr = summarize(rows, n_boot=1000, seed=3)["families"]["typos"]["0.2"]["pdr"]

    noisy, clean = sum(p for p, _ in per_case), sum(c for _, c in per_case)
    assert pdr["value"] == pytest.approx(1 - noisy / clean)
    assert pdr["cases"] == 30 and pdr["verdict"] == MEASURABLE_DROP

    rng, n = random.Random(3), len(per_case)
    unpaired = []
    for _ in range(1000):
        num = sum(per_case[j][0] for j in rng.choices(range(n), k=n))
        den = sum(per_case[j][1] for j in rng.choices(range(n), k=n))
        unpaired.append(1 - num / den)
    low, high = _percentile_ci(unpaired)
    unpaired_half = (high - low) / 2
    # Unpaired, the interval of a ~5% drop spans zero and could not tell it from no drop at all.
    assert low < 0 < high and unpaired_half > 0.2
    assert pdr["ci"][0] > 0 and pdr["half_width"] < unpaired_half / 10, (pdr, unpaired_half)


def test_consistency_compares_each_perturbed_row_with_its_own_case() -> None:
    # Every case answers differently, and noise changes nothing: consistency is 1 in every
    # resample. Had a resample matched perturbed rows with another case's clean output, it would not be.
    rows: list[OutcomeRow] = []
    for i in range(12):
        answer = {"x": f"answer {i}", "y": i}
        rows.append(row(f"c{i}", output=answer, gold=answer))
        rows += [row(f"c{i}", "ocr", 0.3, output=answer, gold=answer, seed=s) for s in range(2)]
    consistency = summarize(rows, n_boot=500)["families"]["ocr"]["0.3"]["consistency"]
    assert consistency == {"value": 1.0, "ci": [1.0, 1.0], "half_width": 0.0, "cases": 12}


def test_pdr_verdict_reads_the_interval_not_the_sign() -> None:
    assert pdr_verdict({"value": 0.4, "ci": [0.1, 0.7], "cases": 30}) == MEASURABLE_DROP
    assert pdr_verdict({"value": -0.286, "ci": [-1.0, 0.2], "cases": 7}) == NO_MEASURABLE_DROP
    assert pdr_verdict({"value": 0.357, "ci": [0.0, 1.0], "cases": 7}) == NO_MEASURABLE_DROP  # touches 0
    assert pdr_verdict({"value": -0.357, "ci": [-1.0, 0.0], "cases": 7}) == NO_MEASURABLE_DROP
    assert pdr_verdict({"value": 0.0, "ci": [0.0, 0.0], "cases": 7}) == NO_MEASURABLE_DROP
    assert pdr_verdict({"value": 1e-17, "ci": [1e-17, 2e-17], "cases": 7}) == NO_MEASURABLE_DROP  # rounding, not a drop
    assert pdr_verdict({"value": -0.3, "ci": [-0.5, -0.1], "cases": 30}) == BETTER_UNDER_NOISE
    assert pdr_verdict({"value": 0.2, "ci": None, "cases": 30}) is None
    assert pdr_verdict({"value": None, "ci": None}) is None
    assert pdr_verdict({"value": 0.5, "ci": [0.5, 0.5], "cases": 1}) is None  # one case has no spread to judge


def test_summary_pdr_carries_a_verdict_for_each_outcome() -> None:
    gold = {"a": "x", "b": "y"}
    rows: list[OutcomeRow] = []
    for i in range(10):
        case = f"c{i}"
        rows.append(row(case, output={"a": "x"}, gold=gold))  # clean F1 2/3
        rows.append(row(case, "case", 0.1, output={"a": "x", "b": "y"}, gold=gold))  # always better: F1 1
        rows.append(row(case, "typos", 0.1, output={} if i < 3 else gold, gold=gold))  # 3 worse, 7 better
        rows.append(row(case, "ocr", 0.1, output={}, gold=gold))  # always worse: F1 0
    families = summarize(rows, n_boot=300)["families"]
    better, mixed, worse = (families[f]["0.1"]["pdr"] for f in ("case", "typos", "ocr"))
    assert better["value"] == pytest.approx(-0.5) and better["verdict"] == BETTER_UNDER_NOISE
    # Negative, but only because 7 of 10 cases happened to gain: the interval covers 0.
    assert mixed["value"] == pytest.approx(1 - 7 / (10 * 2 / 3)) and mixed["value"] < 0
    assert mixed["ci"][0] < 0 < mixed["ci"][1] and mixed["verdict"] == NO_MEASURABLE_DROP
    assert worse["value"] == 1.0 and worse["verdict"] == MEASURABLE_DROP


def test_rows_round_trip_through_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in small_run()) + "\n", encoding="utf-8")
    assert read_rows(path) == small_run()

