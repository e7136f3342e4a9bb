"""``report.md``: the report as Markdown tables, for pull requests, wikis and terminals.

Everything that came from a suite or a model goes through ``md_escape`` first, so an output
such as ``<script>alert(1)</script>``, ``| a | b |`` or a stray backtick shows as text and can
neither break a table nor inject HTML into a renderer that allows it.

>>> md_escape("<b>|`x`|</b>")
'&lt;b&gt;\\\\|\\\\`x\\\\`\\\\|&lt;/b&gt;'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from guardrail.metrics import BETTER_UNDER_NOISE, NO_MEASURABLE_DROP, pdr_verdict
from guardrail.report.edits import segments

#: Punctuation that Markdown (CommonMark or GFM) reads as inline syntax anywhere in a line:
#: code, emphasis, links and images (``[``), table cells, strikethrough, headings. Escaped text
#: is never placed at the start of a line here, so list markers (``-``, ``1.``) need nothing.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")

#: The headline metrics, in table order: (key in the summary, column title, is a rate).
HEADLINE: tuple[tuple[str, str, bool], ...] = (
    ("valid_at_1", "valid@1", True),
    ("valid_at_k", "valid@k", True),
    ("mean_attempts", "attempts", False),
    ("exact_match", "exact match", True),
    ("field_f1", "field F1", True),
    ("consistency", "consistency", True),
    ("pdr", "PDR", True),
    ("abstention_accuracy", "abstention acc.", True),
)


def md_escape(text: Any) -> str:
    """Escape any value for Markdown text or a table cell: HTML metacharacters become entities,
    Markdown punctuation gets a backslash, and line breaks become ``⏎`` so a cell stays on one line.

    >>> md_escape("a | b")
    'a \\\\| b'
    >>> md_escape("line one\\nline two")
    'line one ⏎ line two'
    """
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", " ⏎ ")


#: How a PDR verdict reads (``guardrail.metrics.pdr_verdict``). A measurable drop needs no
#: words: a PDR whose interval lies above 0 is shown as its number.
VERDICT_TEXT: dict[str, str] = {NO_MEASURABLE_DROP: "no measurable drop", BETTER_UNDER_NOISE: "better under noise"}


def half_width(cell: Mapping[str, Any] | None) -> float | None:
    """Half the width of a metric's interval: the summary's ``half_width``, or from ``ci`` in
    reports written before it was stored; ``None`` without an interval.

    >>> half_width({"value": 0.6, "ci": [0.5, 0.75]})
    0.125
    """
    if not cell:
        return None
    if cell.get("half_width") is not None:
        return float(cell["half_width"])
    bounds = cell.get("ci")
    return (bounds[1] - bounds[0]) / 2 if bounds else None


def verdict(cell: Mapping[str, Any] | None) -> str | None:
    """A PDR cell's verdict as stored in the report, else computed from its interval."""
    if not cell:
        return None
    return cell["verdict"] if "verdict" in cell else pdr_verdict(cell)


def fmt_value(cell: Mapping[str, Any] | None, *, ci: bool = True, digits: int = 3) -> str:
    """``0.912 ± 0.035 [0.880, 0.950]`` from a metric dict ``{"value", "ci", "half_width"}``: the
    value, the half-width of its interval, then the interval itself (a percentile bootstrap
    interval need not be symmetric); ``–`` where not measured.

    >>> fmt_value({"value": 0.9123, "ci": [0.88, 0.95], "half_width": 0.035})
    '0.912 ± 0.035 [0.880, 0.950]'
    """
    if not cell or cell.get("value") is None:
        return "–"
    out = f"{cell['value']:.{digits}f}"
    bounds = cell.get("ci")
    if ci and bounds:
        out += f" ± {half_width(cell):.{digits}f} [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
    return out


def fmt_metric(key: str, cell: Mapping[str, Any] | None, *, cases: int | None = None) -> str:
    """``fmt_value``, a PDR whose interval covers 0 led by "no measurable drop" (its sign is noise,
    not an improvement), and ``(k cases)`` when the metric rests on fewer cases than its row.

    >>> fmt_metric("pdr", {"value": -0.286, "ci": [-1.0, 0.2], "half_width": 0.6, "cases": 7})
    'no measurable drop (-0.286 ± 0.600 [-1.000, 0.200])'
    >>> fmt_metric("consistency", {"value": 0.5, "ci": [0.25, 0.75], "cases": 6}, cases=7)
    '0.500 ± 0.250 [0.250, 0.750] (6 cases)'
    """
    out = fmt_value(cell)
    if out == "–" or cell is None:
        return out
    text = VERDICT_TEXT.get(verdict(cell) or "") if key == "pdr" else None
    if text:
        out = f"{text} ({out})"
    found = cell.get("cases")
    if cases is not None and found is not None and found != cases:
        out += f" ({found} cases)"
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


def _latency(cell: Mapping[str, Any] | None) -> str:
    lat = (cell or {}).get("latency_s") or {}
    if lat.get("p50") is None:
        return "–"
    return f"{lat['p50']:.2f} / {lat['p95']:.2f}"


def _tokens(cell: Mapping[str, Any] | None) -> str:
    tok = (cell or {}).get("tokens") or {}
    return "–" if tok.get("mean") is None else f"{tok['mean']:.0f}"


#: What every figure with an interval means (shared with the HTML report).
INTERVAL_NOTE = (
    "Each figure: value ± half-width of its 95% bootstrap interval, then the interval (percentile intervals need "
    "not be symmetric). n counts prompts; the intervals resample cases, so they rest on the cases column (a figure "
    "that rests on fewer says how many). PDR (1 − perturbed / clean field F1) and consistency pair each perturbed "
    "prompt with its own case's clean prompt; a PDR whose interval covers 0 reads \"no measurable drop\", whatever "
    "its sign."
)


def headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(mode, slice name, summary cell)`` for the headline table: clean, noisy, info removed per mode."""
    out = []
    for mode in report.get("modes", []):
        summary = report["metrics"][mode]
        for key, title in (("clean", "clean"), ("overall", "perturbed"), ("info_removed", "info removed")):
            if summary.get(key):
                out.append((mode, title, summary[key]))
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole ``report.md`` as one string.

    >>> from guardrail.report.json import build_report
    >>> rows = [{"case_id": "a", "family": "clean", "severity": 0.0, "valid_first": True, "valid": True,
    ...          "attempts": 1, "output": {"x": "1"}, "gold": {"x": "1"}}]
    >>> "| constrained | clean |" in render_markdown(build_report({"constrained": rows}, suite="demo", n_boot=10))
    True
    """
    lines: list[str] = [f"# Robustness report: {md_escape(report.get('suite', ''))}", ""]
    score = report.get("score")
    lines += [f"**Score: {score:.1f} / 100**" if score is not None else "**Score: –**", ""]
    lines += _run_notes(report)
    lines += ["## Headline", "", INTERVAL_NOTE, ""]
    header = ["mode", "prompts", "n", "cases", *(title for _, title, _ in HEADLINE), "latency p50 / p95 (s)", "tokens"]
    rows = [[md_escape(mode), title, str(cell.get("n", "")), str(cell.get("cases", "")),
             *(fmt_metric(key, cell.get(key), cases=cell.get("cases")) for key, _, _ in HEADLINE),
             _latency(cell), _tokens(cell)] for mode, title, cell in headline_rows(report)]
    lines += _table(header, rows)
    if len(report.get("modes", [])) > 1:
        lines += ["Scores by mode: " + ", ".join(
            f"{md_escape(m)} {_score(report['metrics'][m].get('score'))}" for m in report["modes"]), ""]
    lines += _families(report)
    lines += _fields(report)
    lines += _attempts(report)
    lines += _calibration(report)
    lines += _worst(report)
    lines += _setup(report)
    return "\n".join(lines).rstrip() + "\n"


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _run_notes(report: Mapping[str, Any]) -> list[str]:
    run = report.get("run") or {}
    out = []
    if run and not run.get("complete", True):
        out.append(f"> **Incomplete run:** {run.get('rows_done', '?')} of {run.get('rows_planned', '?')} prompts "
                   f"finished. {md_escape(run.get('resume_hint', ''))}")
    torn = run.get("torn_lines") or []
    if torn:
        out.append(f"> {len(torn)} unreadable line(s) of results.jsonl were skipped (and recomputed): "
                   + "; ".join(md_escape(t) for t in torn[:3]))
    return [*out, ""] if out else []


#: The metrics of the family × severity table, in column order: (key in the summary, title).
FAMILY_METRICS: tuple[tuple[str, str], ...] = (
    ("valid_at_1", "valid@1"),
    ("valid_at_k", "valid@k"),
    ("field_f1", "field F1"),
    ("consistency", "consistency"),
    ("pdr", "PDR"),
)


def _families(report: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for mode in report.get("modes", []):
        fams = report["metrics"][mode].get("families") or {}
        if not fams:
            continue
        out += [f"## By family and severity ({md_escape(mode)})", ""]
        header = ["family", "severity", "n", "cases", *(title for _, title in FAMILY_METRICS)]
        rows = []
        for fam, cells in fams.items():
            for sev, cell in cells.items():
                if cell is None:
                    continue
                rows.append([md_escape(fam), md_escape(sev), str(cell.get("n", "")), str(cell.get("cases", "")),
                             *(fmt_metric(k, cell.get(k), cases=cell.get("cases")) for k, _ in FAMILY_METRICS)])
        out += _table(header, rows)
    return out


def _fields(report: Mapping[str, Any]) -> list[str]:
    modes = report.get("modes", [])
    if not modes:
        return []
    data = (report.get("fields") or {}).get(modes[0]) or {}
    fams, fields = data.get("families") or [], data.get("fields") or {}
    if not fields:
        return []
    out = [f"## Field F1 by family ({md_escape(modes[0])}, severities pooled)", ""]
    rows = [[md_escape(name), *(_f(per.get(f, {}).get("f1")) for f in fams)] for name, per in fields.items()]
    return out + _table(["field", *(md_escape(f) for f in fams)], rows)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _attempts(report: Mapping[str, Any]) -> list[str]:
    hist = report.get("attempts") or {}
    if not hist:
        return []
    keys = sorted({k for h in hist.values() for k in h}, key=int)
    rows = [[md_escape(mode), *(str(h.get(k, 0)) for k in keys)] for mode, h in hist.items()]
    return ["## Attempts per prompt", "", *_table(["mode", *keys], rows)]


def calibration_notes(cal: Mapping[str, Any]) -> list[str]:
    """Sentences summing up one mode's calibration (shared with the HTML report)."""
    out = []
    conf = cal.get("confidence") or {}
    if conf.get("n"):
        out.append(f"Per-field confidence (the probability the model gave each field's tokens): {conf['n']} fields, "
                   f"mean confidence {_f3(conf.get('mean_confidence'))}, accuracy against the gold "
                   f"{_f3(conf.get('accuracy'))}, expected calibration error **{_f3(conf.get('ece'))}**, "
                   f"AUROC for telling right fields from wrong {_f3(conf.get('auroc'))}.")
    agree = cal.get("agreement") or {}
    if agree.get("n"):
        unanimous, split = agree.get("unanimous") or {}, agree.get("split") or {}
        omitted = agree.get("omitted") or {}
        out.append(f"Vote agreement (fields the answer gives a value for, n={agree['n']}): accuracy "
                   f"{_f3(unanimous.get('accuracy'))} where every sample agreed (n={unanimous.get('n', 0)}) and "
                   f"{_f3(split.get('accuracy'))} where they did not (n={split.get('n', 0)}); AUROC of agreement "
                   f"{_f3(agree.get('auroc'))}. Low agreement predicts wrong fields as far as the first figure "
                   f"exceeds the second. Fields the gold has but the answer left out: {omitted.get('n', 0)}, "
                   f"{omitted.get('unanimous', 0)} of them left out by every sample.")
    return out


def _f3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _calibration(report: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for mode, cal in (report.get("calibration") or {}).items():
        out += [f"## Confidence and agreement ({md_escape(mode)})", ""]
        out += [line for note in calibration_notes(cal) for line in (note, "")]
        bins = [b for b in ((cal.get("confidence") or {}).get("bins") or []) if b.get("n")]
        if bins:
            out += ["Reliability (a calibrated model's accuracy equals its confidence in every bin):", ""]
            out += _table(["confidence", "fields", "mean confidence", "accuracy"],
                          [[f"{b['lo']:.1f}–{b['hi']:.1f}", str(b["n"]), _f3(b["confidence"]), _f3(b["accuracy"])]
                           for b in bins])
        levels = (cal.get("agreement") or {}).get("levels") or {}
        if levels:
            out += _table(["agreement", "fields", "accuracy"],
                          [[md_escape(k), str(v["n"]), _f3(v["accuracy"])] for k, v in levels.items()])
    return out


def _marked(case: Mapping[str, Any], side: str, part: str = "input") -> str:
    clean, perturbed = case.get(f"clean_{part}"), case.get(part)
    if clean is None:  # no clean row to rebuild from: the recorded text, unmarked
        return md_escape(perturbed) if side == "perturbed" and perturbed is not None else "–"
    pieces = segments(clean, case.get("edits") or [], side=side, part=part,  # type: ignore[arg-type]
                      expected=perturbed if side == "perturbed" else None)
    # Changed pieces in bold; escaped first so a changed "*" cannot end the bold early.
    return "".join(_bold(p) if changed else md_escape(p) for p, changed in pieces)


def _bold(piece: str) -> str:
    """Bold with the surrounding spaces outside the markers: ``** x**`` would not render as bold."""
    core = piece.strip()
    if not core:
        return md_escape(piece)
    lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()) :]
    return f"{md_escape(lead)}**{md_escape(core)}**{md_escape(trail)}"


def _worst(report: Mapping[str, Any]) -> list[str]:
    cases = report.get("worst_cases") or []
    if not cases:
        return []
    out = ["## Worst cases", "", "Changed characters are in bold.", ""]
    for n, case in enumerate(cases, 1):
        title = (f"### {n}. {md_escape(case.get('task') or '')} / {md_escape(case['case_id'])}: "
                 f"{md_escape(case['family'])} @ {md_escape(case['severity'])} (seed {md_escape(case.get('seed'))})")
        edits = case.get("edits") or []
        rows = [
            ["input", _marked(case, "clean"), _marked(case, "perturbed")],
        ]
        if any(e.get("part") == "instruction" for e in edits):
            rows.append(["instruction", _marked(case, "clean", "instruction"), _marked(case, "perturbed", "instruction")])
        rows += [
            ["output", md_escape(case.get("clean_raw") if case.get("clean_raw") is not None else "–"),
             md_escape(case.get("raw") if case.get("raw") is not None else "–")],
            ["field F1", _f(case.get("clean_field_f1")), _f(case.get("field_f1"))],
        ]
        out += [title, "", *_table(["", "clean", "perturbed"], rows)]
        out += [f"Gold: {md_escape(case.get('gold'))}", ""]
        if case.get("removed_fields"):
            out += ["Removed fields: " + ", ".join(md_escape(f) for f in case["removed_fields"]), ""]
        issues = case.get("issues") or []
        if issues or case.get("error"):
            out += ["Issues:", ""]
            out += [f"- {md_escape(i)}" for i in issues] or [f"- {md_escape(case.get('error'))}"]
            out.append("")
    return out


def _setup(report: Mapping[str, Any]) -> list[str]:
    config = report.get("config") or {}
    versions = report.get("versions") or {}
    model = report.get("model") or {}
    rows = [[md_escape(k), md_escape(v)] for k, v in sorted(config.items()) if k != "suite_hash"]
    rows.append(["config hash", md_escape(report.get("config_hash") or "–")])
    rows += [[f"model {md_escape(k)}", md_escape(v)] for k, v in sorted(model.items())]
    rows += [[md_escape(k), md_escape(v or "not installed")] for k, v in sorted(versions.items())]
    return ["## Setup", "", *_table(["setting", "value"], rows)]
