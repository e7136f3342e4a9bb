"""Robustness metrics: pure functions over outcome rows, with case-level bootstrap intervals.

An *outcome row* (``OutcomeRow``) records one prompt of a robustness run: which case, which
perturbation family at which severity and seed, what was sent, what came back, and the gold.
``summarize(rows)`` turns rows into the report's numbers, per family × severity and overall.

Metrics, per row and then averaged over rows:

``valid_at_1``
    the first attempt was schema-valid.
``valid_at_k``
    some attempt was, within the guard's retries.
``mean_attempts``
    attempts used, retries included.
``exact_match``
    the output equals the gold after normalisation (below). An invalid output is wrong.
``field_f1``
    F1 over fields: a scalar field counts once, a list field once per element (multiset),
    nested objects are flattened to dotted keys. 2·TP / (2·TP + FP + FN); 1 when both sides are
    empty; 0 for an invalid output.
``consistency``
    the share of fields on which the perturbed output agrees with the same case's clean output
    (0 if the perturbed output is invalid; rows whose clean output is invalid are left out).
``pdr``
    performance drop rate as promptbench defines it, ``1 − perturbed / clean``, on
    ``field_f1``, each perturbed row paired with its case's clean row. 0 means no drop; a
    negative value only says the noise helped when its interval lies below 0 (``pdr_verdict``).
``abstention_accuracy``
    on ``info_removed`` rows only: the output is valid and every removed field is null or
    absent, that is, the model admits it does not know instead of inventing a value.

Normalisation: strings are NFKC-normalised, case-folded, trimmed of surrounding whitespace,
quotes and trailing punctuation, with inner whitespace collapsed; numbers (and numeric
strings, when compared with a number) agree within ``rel_tol`` / ``abs_tol``; lists compare as
multisets; ``null``, absent, ``""`` and ``[]`` all mean "no value".

Every rate comes with a 95% percentile bootstrap interval: cases (not rows) are resampled with
replacement, because rows of one case under several seeds are not independent. The resamples
come from ``random.Random(seed)``, so intervals are reproducible, and are shared by every cell
with the same number of cases (cases sorted by id), so cells are compared on paired resamples.

The run's **score** (0–100, higher is better) is::

    score = 100 × (0.25·F_clean + 0.50·F_noisy + 0.25·A) / (sum of the weights present)

where ``F_clean`` is ``field_f1`` on the clean prompts, ``F_noisy`` the mean of ``field_f1``
over the (family, severity) cells of the answer-preserving families (each cell weighs the
same, so a family run at more seeds does not count more), and ``A`` the abstention accuracy
on information-removed cases. A term the run did not measure drops out and the weights are
renormalised. Invalid outputs score 0 in every F1, so validity is inside the score. A model
perfect on clean text that falls apart under noise scores at most about 50; one that never
admits missing information loses up to 25.

>>> rows = [
...     {"case_id": "a", "family": "clean", "severity": 0.0, "valid_first": True, "valid": True,
...      "attempts": 1, "output": {"n": 1}, "gold": {"n": 1}},
...     {"case_id": "a", "family": "typos", "severity": 0.5, "valid_first": False, "valid": True,
...      "attempts": 2, "output": {"n": 2}, "gold": {"n": 1}},
... ]
>>> s = summarize(rows, n_boot=50)
>>> s["clean"]["field_f1"]["value"], s["families"]["typos"]["0.5"]["pdr"]["value"]
(1.0, 1.0)
"""

from __future__ import annotations

import functools
import json
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from guardrail.compare import count_matches, flatten, is_empty, same_value

CLEAN = "clean"

#: Weights of the score's three terms: clean F1, noisy F1 and abstention accuracy.
SCORE_WEIGHTS: dict[str, float] = {"clean_f1": 0.25, "noisy_f1": 0.5, "abstention": 0.25}


class OutcomeRow(TypedDict):
    """One prompt of a robustness run and what came of it (one JSON line in ``rows.jsonl``).

    Required: ``case_id``; ``family`` (``"clean"`` for the unperturbed prompt, a family name,
    or ``"a+b"`` for a composition); ``severity`` (0 for clean); ``valid_first`` (the first
    attempt was schema-valid); ``valid`` (the final result was); ``attempts``; ``output``
    (the parsed JSON of a valid result, else ``None``); ``gold`` (for ``info_removed`` rows,
    the gold with the removed fields omitted or null).

    Optional: ``task``; ``seed`` (the run seed); ``target`` (``"none"`` for clean rows, else
    ``"input"``, ``"instruction"`` or ``"both"``); ``prompt`` (exactly what was sent);
    ``input`` and ``instruction`` (after perturbation); ``edits`` (``{part, start, end, before,
    after}``, positions in the original part); ``removed_fields`` (non-empty exactly on
    information-removed rows); ``raw`` (the final model text); ``latency_s``; ``tokens``;
    ``error``; ``confidence`` (JSON Pointer -> the model's probability of that field's tokens,
    ``guardrail.confidence``) and ``agreement`` (JSON Pointer -> share of vote samples agreeing,
    ``guardrail.voting``), when known. The clean output a row is compared with for ``consistency``
    is not stored: it is the output of the ``clean`` row with the same ``task`` and ``case_id``.
    """

    case_id: str
    family: str
    severity: float
    valid_first: bool
    valid: bool
    attempts: int
    output: Any
    gold: Any
    task: NotRequired[str]
    seed: NotRequired[int]
    target: NotRequired[str]
    prompt: NotRequired[Any]
    input: NotRequired[str]
    instruction: NotRequired[str]
    edits: NotRequired[list[dict[str, Any]]]
    removed_fields: NotRequired[list[str]]
    raw: NotRequired[str | None]
    latency_s: NotRequired[float]
    tokens: NotRequired[int | None]
    error: NotRequired[str | None]
    confidence: NotRequired[dict[str, float]]
    agreement: NotRequired[dict[str, float]]


# -- comparing values: guardrail.compare (same_value and flatten stay importable from here) --------

def field_counts(output: Any, gold: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> tuple[int, int, int]:
    """True positives, false positives and false negatives over fields (lists per element).

    >>> field_counts({"a": "x", "b": ["p", "q"]}, {"a": "x", "b": ["q", "r"], "c": 1})
    (2, 1, 2)
    """
    out, ref = flatten(output), flatten(gold)
    tp = fp = fn = 0
    for key in out.keys() | ref.keys():
        o = _as_list(out.get(key))
        g = _as_list(ref.get(key))
        hits = count_matches(g, o, rel_tol, abs_tol)
        tp, fp, fn = tp + hits, fp + len(o) - hits, fn + len(g) - hits
    return tp, fp, fn


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [v for v in value if not is_empty(v)] if isinstance(value, list) else [value]


def field_f1(output: Any, gold: Any, *, valid: bool = True) -> float:
    """F1 over fields; 1 when both are empty, 0 when the output is invalid.

    >>> round(field_f1({"a": "x", "b": ["p", "q"]}, {"a": "x", "b": ["q", "r"], "c": 1}), 3)  # 2·2 / (2·2 + 1 + 2)
    0.571
    """
    if not valid:
        return 0.0
    tp, fp, fn = field_counts(output, gold)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def exact_match(output: Any, gold: Any, *, valid: bool = True) -> bool:
    """The output equals the gold after normalisation (and is valid).

    >>> exact_match({"name": "ana lee", "phone": None}, {"name": "Ana Lee"})
    True
    """
    if not valid:
        return False
    _, fp, fn = field_counts(output, gold)
    return fp == 0 and fn == 0


def agreement(output: Any, reference: Any) -> float:
    """The share of fields (in either) on which two outputs agree; 1 when both are empty.

    >>> agreement({"a": 1, "b": "x"}, {"a": 1, "b": "y"})
    0.5
    """
    out, ref = flatten(output), flatten(reference)
    keys = out.keys() | ref.keys()
    if not keys:
        return 1.0
    return sum(same_value(out.get(k), ref.get(k)) for k in keys) / len(keys)


def abstained(output: Any, removed: Iterable[str], *, valid: bool = True) -> bool:
    """The output is valid and holds no value for any of the removed fields.

    >>> abstained({"name": "Ana", "phone": None}, ["phone"]), abstained({"phone": "555"}, ["phone"])
    (True, False)
    """
    if not valid:
        return False
    flat = flatten(output)
    return not any(k == f or k.startswith(f + ".") for f in removed for k in flat)


# -- per-row values -----------------------------------------------------------------------------


def _clean_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return str(row.get("task", "")), str(row["case_id"])


def row_values(row: OutcomeRow, clean: OutcomeRow | None = None) -> dict[str, float | None]:
    """Every per-row metric (``None`` where it does not apply), the clean row given for pairing.

    >>> r = {"case_id": "a", "family": "typos", "severity": 0.5, "valid_first": True,
    ...      "valid": True, "attempts": 1, "output": {"x": 1}, "gold": {"x": 1}}
    >>> row_values(r)["field_f1"], row_values(r)["consistency"]
    (1.0, None)
    """
    valid = bool(row["valid"])
    removed = list(row.get("removed_fields") or [])
    f1 = field_f1(row["output"], row["gold"], valid=valid)
    values: dict[str, float | None] = {
        "valid_at_1": float(bool(row["valid_first"])),
        "valid_at_k": float(valid),
        "mean_attempts": float(row["attempts"]),
        "exact_match": float(exact_match(row["output"], row["gold"], valid=valid)),
        "field_f1": f1,
        "consistency": None,
        "clean_f1": None,
        "abstention_accuracy": float(abstained(row["output"], removed, valid=valid)) if removed else None,
    }
    if clean is not None and row is not clean and not removed:
        values["clean_f1"] = field_f1(clean["output"], clean["gold"], valid=bool(clean["valid"]))
        if clean["valid"]:
            values["consistency"] = agreement(row["output"], clean["output"]) if valid else 0.0
    return values


# -- aggregation --------------------------------------------------------------------------------

#: Metrics that are means of per-row values, in report order.
MEAN_METRICS = ("valid_at_1", "valid_at_k", "mean_attempts", "exact_match", "field_f1", "consistency", "abstention_accuracy")


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


#: A per-case pair of sums ``(numerator, denominator)``; a metric is ``finish(Σnum, Σden)``.
_Sums = tuple[float, float]
_Finish = Callable[[float, float], "float | None"]


def _mean(num: float, den: float) -> float | None:
    return num / den if den else None


def _drop_rate(perturbed: float, clean: float) -> float | None:
    return 1 - perturbed / clean if clean else None


@functools.lru_cache(maxsize=8)
def _draws(n_cases: int, n_boot: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """``n_boot`` resamples of ``n_cases`` case indexes, with replacement (cached: cells share them)."""
    rng = random.Random(seed)
    cases = range(n_cases)
    return tuple(tuple(rng.choices(cases, k=n_cases)) for _ in range(n_boot if n_cases else 0))


class _Resampler:
    """Sums of per-case values over each bootstrap resample, memoised: metrics share denominators."""

    def __init__(self, n_cases: int, n_boot: int, seed: int) -> None:
        self.draws = _draws(n_cases, n_boot, seed)
        self._memo: dict[tuple[float, ...], list[float]] = {}

    def sums(self, values: list[float]) -> list[float]:
        key = tuple(values)
        if key not in self._memo:
            # map(list.__getitem__) keeps the inner loop in C.
            self._memo[key] = [sum(map(values.__getitem__, draw)) for draw in self.draws]
        return self._memo[key]


def _estimate(
    sums: Sequence[_Sums], finish: _Finish, resampler: _Resampler, confidence: float, cases: int
) -> dict[str, Any]:
    """The point value over all cases, its percentile interval over the resampled ones, the
    interval's half-width, and how many cases the estimate rests on.

    Numerator and denominator of one replicate are summed over the same draw, so a case's
    numerator never meets another draw's denominator: ratios such as PDR are paired by case.
    """
    nums, dens = [n for n, _ in sums], [d for _, d in sums]
    value = finish(sum(nums), sum(dens))
    if value is None:
        return {"value": None, "ci": None, "half_width": None, "cases": cases}
    replicates = sorted(
        v for num, den in zip(resampler.sums(nums), resampler.sums(dens), strict=True) if (v := finish(num, den)) is not None
    )
    tail = (1 - confidence) / 2
    ci = [_quantile(replicates, tail), _quantile(replicates, 1 - tail)] if replicates else None
    return {"value": value, "ci": ci, "half_width": (ci[1] - ci[0]) / 2 if ci else None, "cases": cases}


#: What a PDR interval says (``pdr_verdict``): the interval lies above 0, covers it, or lies below.
MEASURABLE_DROP = "measurable_drop"
NO_MEASURABLE_DROP = "no_measurable_drop"
BETTER_UNDER_NOISE = "better_under_noise"

#: Interval ends this close to 0 count as 0: ``1 − x/x`` summed in another order can leave 1e-17.
_ZERO_TOL = 1e-9


def pdr_verdict(estimate: Mapping[str, Any]) -> str | None:
    """Classify a PDR estimate ``{"value", "ci", "cases"?}`` by its interval, not its sign.

    ``MEASURABLE_DROP``: the interval lies entirely above 0. ``NO_MEASURABLE_DROP``: it covers 0,
    whatever the sign of the point value (a negative PDR inside such an interval is noise in the
    estimate, not an improvement). ``BETTER_UNDER_NOISE``: the whole interval lies below 0, the
    noisy prompts really scored higher (rare; worth a look at what the noise changed).
    ``None`` when there is nothing to judge: no value, no interval, or fewer than two cases
    (one case resamples to itself, so its interval has no width whatever the truth).

    >>> pdr_verdict({"value": -0.286, "ci": [-1.0, 0.2], "cases": 7})
    'no_measurable_drop'
    >>> pdr_verdict({"value": 0.3, "ci": [0.1, 0.5]}), pdr_verdict({"value": -0.3, "ci": [-0.5, -0.1]})
    ('measurable_drop', 'better_under_noise')
    """
    ci = estimate.get("ci")
    if estimate.get("value") is None or not ci or int(estimate.get("cases", 2)) < 2:
        return None
    low, high = ci
    if low > _ZERO_TOL:
        return MEASURABLE_DROP
    if high < -_ZERO_TOL:
        return BETTER_UNDER_NOISE
    return NO_MEASURABLE_DROP


def bootstrap_ci(
    clusters: Sequence[Sequence[float]], *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float] | None:
    """A percentile bootstrap interval for the mean, resampling whole clusters (cases).

    >>> bootstrap_ci([[1.0], [0.0], [1.0], [1.0]], n_boot=200, seed=1)
    (0.25, 1.0)
    """
    sums = [(float(sum(c)), float(len(c))) for c in clusters]
    ci = _estimate(sums, _mean, _Resampler(len(sums), n_boot, seed), confidence, len(sums))["ci"]
    return (ci[0], ci[1]) if ci else None


_Valued = tuple[OutcomeRow, dict[str, "float | None"]]


def _summarise_cell(members: list[_Valued], n_boot: int, seed: int, confidence: float) -> dict[str, Any]:
    """All metrics of one cell: point value plus a case-level bootstrap interval for each."""
    by_case: dict[tuple[str, str], list[dict[str, float | None]]] = defaultdict(list)
    for row, values in members:
        by_case[_clean_key(row)].append(values)
    # Cases in a fixed order, and resamples shared by every cell with as many cases: a resample
    # then picks the same cases in each cell, so cells are compared on paired resamples.
    cases = [by_case[k] for k in sorted(by_case)]

    def estimate(metric: str) -> dict[str, Any]:
        present = [[v for values in case if (v := values[metric]) is not None] for case in cases]
        sums = [(sum(p), float(len(p))) for p in present]
        return _estimate(sums, _mean, resampler, confidence, sum(1 for p in present if p))

    def pdr() -> dict[str, Any]:
        # Paired: a case enters a replicate with its perturbed F1 (numerator) and the clean F1 of
        # the same case (denominator) together, so a case that is hard clean and hard noisy moves
        # both sides at once instead of widening the interval.
        pairs = [
            [(values["field_f1"] or 0.0, c) for values in case if (c := values["clean_f1"]) is not None] for case in cases
        ]
        sums = [(sum(p for p, _ in case), sum(c for _, c in case)) for case in pairs]
        found = _estimate(sums, _drop_rate, resampler, confidence, sum(1 for p in pairs if p))
        return {**found, "verdict": pdr_verdict(found)}

    resampler = _Resampler(len(cases), n_boot, seed)
    out: dict[str, Any] = {"n": len(members), "cases": len(cases)}
    for metric in MEAN_METRICS:
        out[metric] = estimate(metric)
    out["pdr"] = pdr()
    latencies = sorted(float(v) for r, _ in members if (v := r.get("latency_s")) is not None)
    tokens = [int(t) for r, _ in members if (t := r.get("tokens")) is not None]
    out["latency_s"] = {
        "mean": statistics.fmean(latencies) if latencies else None,
        "p50": _quantile(latencies, 0.5) if latencies else None,
        "p95": _quantile(latencies, 0.95) if latencies else None,
    }
    out["tokens"] = {"mean": statistics.fmean(tokens) if tokens else None, "total": sum(tokens) if tokens else None}
    return out


def family_key(row: Mapping[str, Any]) -> str:
    """The report name of a row's family: the family, plus ``@target`` when noise hit more than the input.

    >>> family_key({"family": "typos", "target": "instruction"})
    'typos@instruction'
    """
    target = row.get("target") or "input"
    family = str(row["family"])
    return family if target in ("input", "none") or family == CLEAN else f"{family}@{target}"


def severity_key(severity: float) -> str:
    """Severities as JSON object keys: ``0.5`` → ``"0.5"``, ``1.0`` → ``"1"``."""
    return f"{float(severity):g}"


def summarize(rows: Iterable[OutcomeRow], *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The report's numbers: ``clean``, ``overall`` (all answer-preserving noise pooled),
    ``families`` (family → severity → metrics), ``by_family`` (severities pooled),
    ``info_removed``, and ``score`` with its parts.

    Each metric is ``{"value": v, "ci": [lo, hi], "half_width": (hi - lo) / 2, "cases": k}``
    (``None`` where it does not apply; ``cases`` counts the cases with at least one row the
    metric applies to, which is what its interval rests on). ``pdr`` also carries ``verdict``
    (``pdr_verdict``). Cells also carry ``n`` (rows), ``cases``, ``latency_s`` (mean, p50, p95)
    and ``tokens`` (mean, total).

    PDR and consistency are paired by case: a resample draws cases, and each drawn case brings
    its perturbed rows together with its own clean row's F1 (PDR) or output (consistency).
    """
    rows = list(rows)
    clean_rows = {_clean_key(r): r for r in rows if r["family"] == CLEAN}
    valued = [(r, row_values(r, clean_rows.get(_clean_key(r)))) for r in rows]

    def cell(members: list[_Valued]) -> dict[str, Any]:
        return _summarise_cell(members, n_boot, seed, confidence)

    clean = [rv for rv in valued if rv[0]["family"] == CLEAN]
    removed = [rv for rv in valued if rv[0].get("removed_fields")]
    noisy = [rv for rv in valued if rv[0]["family"] != CLEAN and not rv[0].get("removed_fields")]
    grid: dict[str, dict[str, list[_Valued]]] = defaultdict(lambda: defaultdict(list))
    for rv in [*noisy, *removed]:
        grid[family_key(rv[0])][severity_key(rv[0]["severity"])].append(rv)

    families = {
        fam: {sev: cell(members) for sev, members in sorted(cells.items(), key=lambda kv: float(kv[0]))}
        for fam, cells in grid.items()
    }
    clean_cell = cell(clean) if clean else None
    removed_cell = cell(removed) if removed else None
    # F_noisy averages cells, not rows, so no family outweighs another by running more seeds.
    noisy_f1 = [
        families[fam][sev]["field_f1"]["value"]
        for fam, cells in grid.items()
        for sev, members in cells.items()
        if not members[0][0].get("removed_fields")
    ]
    parts = {
        "clean_f1": clean_cell["field_f1"]["value"] if clean_cell else None,
        "noisy_f1": statistics.fmean(noisy_f1) if noisy_f1 else None,
        "abstention": removed_cell["abstention_accuracy"]["value"] if removed_cell else None,
    }
    return {
        "n_rows": len(rows),
        "score": score(parts),
        "score_parts": parts,
        "clean": clean_cell,
        "overall": cell(noisy) if noisy else None,
        "info_removed": removed_cell,
        "families": families,
        "by_family": {fam: cell([rv for m in cells.values() for rv in m]) for fam, cells in grid.items()},
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": confidence, "unit": "case"},
    }


def score(parts: Mapping[str, float | None]) -> float | None:
    """The run's single number (see the module docstring), from its three parts.

    >>> round(score({"clean_f1": 0.9, "noisy_f1": 0.7, "abstention": None}), 2)  # (0.25·0.9 + 0.5·0.7) / 0.75
    76.67
    """
    present = {k: v for k, v in parts.items() if v is not None and k in SCORE_WEIGHTS}
    if not present:
        return None
    weight = sum(SCORE_WEIGHTS[k] for k in present)
    return 100 * sum(SCORE_WEIGHTS[k] * v for k, v in present.items()) / weight


def read_rows(path: str | Path) -> list[OutcomeRow]:
    """Outcome rows from a JSONL file written by ``robustness.evaluate``."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
