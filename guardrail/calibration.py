"""How far per-field confidence and agreement can be trusted: checked against gold answers.

Works on outcome rows (``guardrail.metrics.OutcomeRow``) that carry ``confidence`` and/or
``agreement`` maps (JSON Pointer -> number in [0, 1], see ``guardrail.confidence`` and
``guardrail.voting``). A field is *right* when the answer's value at the pointer agrees with the
gold's after normalisation (``guardrail.compare.same_value``: lists as multisets, ``null`` and
absent alike).

``reliability(rows)``
    the reliability diagram: the fields that have a confidence (those present in a valid
    answer) put into ``bins`` equal-width confidence bins, with each bin's mean confidence and
    share of right fields, and the **expected calibration error**
    ``ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|`` (0 is perfectly calibrated). Also the
    AUROC of confidence for telling right fields from wrong ones (0.5: no better than chance).
``agreement_vs_accuracy(rows)``
    does low agreement between samples predict wrong fields? Over the fields the answer gives a
    value for (the same fields confidence rates), the share of right fields among those all
    samples agreed on and among the rest, the accuracy at each agreement level, and the AUROC of
    agreement. Fields the answer leaves out are counted apart (``omitted``: how many the gold
    has a value for, and how many of those every sample agreed to leave out): agreement there
    is about leaving a field out, not about a value, and a field both leave empty is trivially
    right.

>>> rows = [{"valid": True, "output": {"a": "x", "b": "y"}, "gold": {"a": "x", "b": "z"},
...          "confidence": {"/a": 0.9, "/b": 0.3}, "agreement": {"/a": 1.0, "/b": 0.6}}]
>>> r = reliability(rows, bins=2)
>>> r["n"], r["accuracy"], round(r["ece"], 2), r["auroc"]
(2, 0.5, 0.2, 1.0)
>>> agreement_vs_accuracy(rows)["unanimous"]["accuracy"], agreement_vs_accuracy(rows)["split"]["accuracy"]
(1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from guardrail.compare import is_empty, same_value
from guardrail.leaves import resolve

#: Confidence bins of the reliability diagram.
DEFAULT_BINS = 10


def field_right(row: Mapping[str, Any], pointer: str) -> bool:
    """Whether the row's answer agrees with its gold at ``pointer`` (an invalid answer is wrong)."""
    if not row.get("valid"):
        return False
    return same_value(resolve(row.get("output"), pointer), resolve(row.get("gold"), pointer))


def scored_fields(rows: Iterable[Mapping[str, Any]], key: str = "confidence",
                  *, answered: bool = False) -> list[tuple[float, bool]]:
    """``(score, right)`` for every field of every valid row that has a ``key`` map.

    ``answered`` keeps only the fields the answer gives a value for.
    """
    out = []
    for row in rows:
        scores = row.get(key)
        if not row.get("valid") or not isinstance(scores, Mapping):
            continue
        for pointer, score in scores.items():
            if score is None:
                continue
            if answered and is_empty(resolve(row.get("output"), pointer)):
                continue
            out.append((float(score), field_right(row, pointer)))
    return out


def auroc(pairs: Sequence[tuple[float, bool]]) -> float | None:
    """P(a right field scores above a wrong one), ties counting half; None without both kinds.

    >>> auroc([(0.9, True), (0.2, False), (0.5, True), (0.5, False)])
    0.875
    """
    right = sorted(s for s, ok in pairs if ok)
    wrong = sorted(s for s, ok in pairs if not ok)
    if not right or not wrong:
        return None
    import bisect

    total = 0.0
    for score in right:
        below = bisect.bisect_left(wrong, score)
        ties = bisect.bisect_right(wrong, score) - below
        total += below + ties / 2
    return total / (len(right) * len(wrong))


def ece(pairs: Sequence[tuple[float, bool]], bins: int = DEFAULT_BINS) -> float | None:
    """Expected calibration error over ``bins`` equal-width bins (None without fields).

    >>> ece([(0.9, True), (0.9, False)], bins=10)
    0.4
    """
    cells = _bins(pairs, bins)
    n = len(pairs)
    if not n:
        return None
    return round(sum(c["n"] / n * abs(c["accuracy"] - c["confidence"]) for c in cells if c["n"]), 10)


def _bins(pairs: Sequence[tuple[float, bool]], bins: int) -> list[dict[str, Any]]:
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for score, ok in pairs:
        index = min(int(max(score, 0.0) * bins), bins - 1)  # 1.0 falls in the last bin
        groups[index].append((score, ok))
    out = []
    for i, group in enumerate(groups):
        cell: dict[str, Any] = {"lo": i / bins, "hi": (i + 1) / bins, "n": len(group), "confidence": None,
                                "accuracy": None}
        if group:
            cell["confidence"] = sum(s for s, _ in group) / len(group)
            cell["accuracy"] = sum(ok for _, ok in group) / len(group)
        out.append(cell)
    return out


def reliability(rows: Iterable[Mapping[str, Any]], bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The reliability diagram and ECE of per-field confidence (see the module docstring)."""
    pairs = scored_fields(rows, "confidence")
    n = len(pairs)
    return {
        "n": n,
        "bins": _bins(pairs, bins),
        "ece": ece(pairs, bins),
        "mean_confidence": sum(s for s, _ in pairs) / n if n else None,
        "accuracy": sum(ok for _, ok in pairs) / n if n else None,
        "auroc": auroc(pairs),
    }


def agreement_vs_accuracy(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of fields by sample agreement (see the module docstring)."""
    rows = list(rows)
    pairs = scored_fields(rows, "agreement", answered=True)
    omitted = [(score, field_right(row, pointer)) for row in rows if row.get("valid")
               and isinstance(row.get("agreement"), Mapping) for pointer, score in row["agreement"].items()
               if is_empty(resolve(row.get("output"), pointer)) and not is_empty(resolve(row.get("gold"), pointer))]
    unanimous = [ok for s, ok in pairs if s >= 1.0 - 1e-9]
    split = [ok for s, ok in pairs if s < 1.0 - 1e-9]
    levels: dict[str, list[bool]] = {}
    for score, ok in sorted(pairs):
        levels.setdefault(f"{score:.2f}", []).append(ok)
    return {
        "n": len(pairs),
        "unanimous": {"n": len(unanimous), "accuracy": sum(unanimous) / len(unanimous) if unanimous else None},
        "split": {"n": len(split), "accuracy": sum(split) / len(split) if split else None},
        "levels": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in levels.items()},
        "auroc": auroc(pairs),
        "omitted": {"n": len(omitted), "unanimous": sum(score >= 1.0 - 1e-9 for score, _ in omitted)},
    }


def calibration_summary(rows: Sequence[Mapping[str, Any]], bins: int = DEFAULT_BINS) -> dict[str, Any] | None:
    """Both checks for a report; None when no row has a confidence or an agreement map."""
    has_conf = any(isinstance(r.get("confidence"), Mapping) for r in rows)
    has_agree = any(isinstance(r.get("agreement"), Mapping) for r in rows)
    if not has_conf and not has_agree:
        return None
    return {
        "confidence": reliability(rows, bins) if has_conf else None,
        "agreement": agreement_vs_accuracy(rows) if has_agree else None,
    }
