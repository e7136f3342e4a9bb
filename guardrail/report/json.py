"""``report.json``: every number of a robustness run, plus what is needed to reproduce it.

``build_report`` turns outcome rows (one list per decoding mode, e.g. ``constrained`` and
``unconstrained``) into one JSON-ready dict. The Markdown and HTML renderers read only this
dict, so the three files always agree. Layout::

    format        "guardrail-report/1"
    suite, score  the suite's name and the run's score (0–100, primary mode)
    modes         the decoding modes run, primary first
    metrics       mode -> guardrail.metrics.summarize(rows): clean, overall, families,
                  by_family, info_removed, score, score_parts (metric names as in metrics.py);
                  each metric is {value, ci, half_width, cases}, and each pdr also carries
                  verdict: measurable_drop, no_measurable_drop (its interval covers 0) or
                  better_under_noise (guardrail.metrics.pdr_verdict)
    fields        mode -> per-field F1 by family (severities pooled), for the heatmap
    attempts      mode -> {"1": rows, "2": rows, ...}
    worst_cases   the perturbed rows that lost the most field F1 against their clean row
    calibration   mode -> guardrail.calibration.calibration_summary(rows), for modes whose rows
                  carry per-field confidence or vote agreement: the reliability diagram's bins,
                  the expected calibration error, and field accuracy by agreement
    config, config_hash, seeds, model, versions
    run           rows done and planned, complete or not, torn lines skipped: facts about
                  this execution, kept out of ``metrics`` so a resumed run reports the same numbers

Rows are sorted by their plan position before anything is computed, so the numbers do not
depend on the order in which rows were produced (a resumed run appends out of order).

>>> rows = [{"case_id": "a", "family": "clean", "severity": 0.0, "valid_first": True, "valid": True,
...          "attempts": 1, "output": {"x": "1"}, "gold": {"x": "1"}}]
>>> report = build_report({"constrained": rows}, suite="demo", n_boot=10)
>>> report["metrics"]["constrained"]["clean"]["field_f1"]["value"], report["score"]
(1.0, 100.0)
>>> report["metrics"]["constrained"]["clean"]["field_f1"]["half_width"], report["metrics"]["constrained"]["clean"]["cases"]
(0.0, 1)
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from guardrail.calibration import calibration_summary
from guardrail.metrics import CLEAN, family_key, field_counts, flatten, row_values, summarize

FORMAT = "guardrail-report/1"
#: Packages whose versions a report records.
VERSIONED = ("torch", "transformers", "outlines", "outlines_core", "llguidance", "xgrammar")


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that shape the numbers (``None``: not installed).

    Read from package metadata, so torch is never imported just to learn its version.

    >>> versions()["guardrail"] is not None
    True
    """
    from guardrail import __version__  # the distribution is named guardrail-llm: ask the package itself

    out: dict[str, str | None] = {"python": platform.python_version(), "guardrail": __version__}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["platform"] = sys.platform
    return out


def build_report(
    rows_by_mode: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    suite: str,
    config: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
    model: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    ci_seed: int = 0,
    worst: int = 8,
) -> dict[str, Any]:
    """The report dict (see the module docstring). The first mode is the primary one.

    Rows should already be in a deterministic order (``run_report`` sorts them by plan
    position); duplicates of a ``key`` keep the first.
    """
    modes = list(rows_by_mode)
    rows = {mode: _dedupe(rows_by_mode[mode]) for mode in modes}
    metrics = {mode: summarize(rows[mode], n_boot=n_boot, seed=ci_seed) for mode in modes}  # type: ignore[arg-type]
    primary = modes[0] if modes else None
    config = dict(config or {})
    return {
        "format": FORMAT,
        "suite": suite,
        "score": metrics[primary]["score"] if primary else None,
        "modes": modes,
        "metrics": metrics,
        "fields": {mode: field_f1_by_family(rows[mode]) for mode in modes},
        "attempts": {mode: attempts_histogram(rows[mode]) for mode in modes},
        "worst_cases": worst_cases(rows[primary], limit=worst) if primary else [],
        "calibration": {mode: found for mode in modes if (found := calibration_summary(rows[mode]))},
        "config": config,
        "config_hash": config_hash,
        "seeds": list(config.get("seeds", [])),
        "model": dict(model or {}),
        "versions": versions(),
        "run": dict(run or {}),
    }


def _dedupe(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        key = row.get("key")
        if key is not None:
            if key in seen:
                continue
            seen.add(str(key))
        out.append(row)
    return out


def field_f1_by_family(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Micro F1 of each field (dotted path, pooled across tasks by name) in each family.

    An invalid output counts as empty, so its gold fields are misses. ``support`` is the number
    of gold values of the field. Cells where the field never occurred are absent.

    >>> out = field_f1_by_family([{"case_id": "a", "family": "clean", "valid": True,
    ...                            "output": {"x": "1", "y": "2"}, "gold": {"x": "1", "y": "3"}}])
    >>> out["fields"]["x"]["clean"]["f1"], out["fields"]["y"]["clean"]["f1"]
    (1.0, 0.0)
    """
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))
    families: list[str] = []
    for row in rows:
        fam = family_key(row)
        if fam not in families:
            families.append(fam)
        output = flatten(row.get("output")) if row.get("valid") else {}
        gold = flatten(row.get("gold"))
        for name in sorted(output.keys() | gold.keys()):
            tp, fp, fn = field_counts({name: output.get(name)}, {name: gold.get(name)})
            cell = counts[name][fam]
            cell[0] += tp
            cell[1] += fp
            cell[2] += fn
            cell[3] += tp + fn
    order = sorted(families, key=lambda f: (f != CLEAN, f))
    fields = {
        name: {fam: {"f1": _f1(*c[:3]), "support": c[3]} for fam in order if (c := per.get(fam))}
        for name, per in sorted(counts.items())
    }
    return {"families": order, "fields": fields}


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def attempts_histogram(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows used 1, 2, 3 ... attempts (keys are strings, for JSON).

    >>> attempts_histogram([{"attempts": 1}, {"attempts": 3}, {"attempts": 1}])
    {'1': 2, '2': 0, '3': 1}
    """
    counts: dict[int, int] = defaultdict(int)
    for row in rows:
        counts[int(row.get("attempts") or 0)] += 1
    if not counts:
        return {}
    top = max(counts)
    return {str(n): counts.get(n, 0) for n in range(min(min(counts), 1), top + 1)}


def worst_cases(rows: Sequence[Mapping[str, Any]], *, limit: int = 8, per_case_limit: int = 2) -> list[dict[str, Any]]:
    """The perturbed rows that lost most field F1 against their case's clean row, worst first.

    Ties go to invalid outputs first, then to plan order, so the choice is deterministic. Each
    entry carries both prompts' inputs, the edits, both outputs, the gold and the issues.
    """
    clean = {(str(r.get("task", "")), str(r["case_id"])): r for r in rows if r["family"] == CLEAN}
    scored = []
    for position, row in enumerate(rows):
        if row["family"] == CLEAN:
            continue
        base = clean.get((str(row.get("task", "")), str(row["case_id"])))
        values = row_values(row, base)  # type: ignore[arg-type]
        f1 = values["field_f1"] or 0.0
        clean_f1 = values["clean_f1"]
        drop = (clean_f1 - f1) if clean_f1 is not None else (1.0 - f1)
        if drop <= 0 and row.get("valid"):
            continue
        scored.append((-drop, bool(row.get("valid")), position, row, base, f1, clean_f1))
    scored.sort(key=lambda s: s[:3])
    out: list[dict[str, Any]] = []
    shown: set[tuple[Any, ...]] = set()
    per_case: dict[tuple[Any, Any], int] = defaultdict(int)
    for _, _, _, row, base, f1, clean_f1 in scored:
        if len(out) >= limit:
            break
        # Two seeds can give the same perturbed text (and the same failure): show it once. And at
        # most ``per_case`` rows of one case, so one hard case does not fill the whole section.
        seen = (row.get("task"), row["case_id"], family_key(row), row.get("input"), row.get("instruction"), row.get("raw"))
        case = (row.get("task"), row["case_id"])
        if seen in shown or per_case[case] >= per_case_limit:
            continue
        shown.add(seen)
        per_case[case] += 1
        out.append({
            "key": row.get("key"),
            "task": row.get("task"),
            "case_id": row["case_id"],
            "family": family_key(row),
            "severity": row["severity"],
            "seed": row.get("seed"),
            "removed_fields": list(row.get("removed_fields") or []),
            "clean_input": base.get("input") if base else None,
            "input": row.get("input"),
            "clean_instruction": base.get("instruction") if base else None,
            "instruction": row.get("instruction"),
            "edits": list(row.get("edits") or []),
            "clean_output": base.get("output") if base else None,
            "clean_raw": base.get("raw") if base else None,
            "output": row.get("output"),
            "raw": row.get("raw"),
            "valid": bool(row.get("valid")),
            "attempts": row.get("attempts"),
            "gold": row.get("gold"),
            "issues": list(row.get("issues") or []),
            "error": row.get("error"),
            "field_f1": f1,
            "clean_field_f1": clean_f1,
        })
    return out


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as stable, indented JSON (sorted keys, so diffs between runs are small)."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n",
                    encoding="utf-8")
    return path
