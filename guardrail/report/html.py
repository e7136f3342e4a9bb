"""``report.html``: one self-contained page, charts inline as SVG, no scripts and no network.

The page holds the headline table; validity and field F1 against severity per family with
confidence bands, and the family × severity table under them; a field × family heatmap;
constrained against unconstrained decoding when the run has both; a histogram of attempts; and
the worst cases side by side, the edits marked. Every figure with an interval reads
``value ± half-width``, its interval underneath.

Every string from a suite or a model goes through ``html.escape`` (``_e``); the page also sets
a Content-Security-Policy that forbids scripts, so even a missed escape could not run code.

>>> from guardrail.report.json import build_report
>>> rows = [{"case_id": "a", "family": "clean", "severity": 0.0, "valid_first": True, "valid": True,
...          "attempts": 1, "output": {"x": "<b>"}, "gold": {"x": "<b>"}, "raw": '{"x": "<b>"}'}]
>>> page = render_html(build_report({"constrained": rows}, suite="demo", n_boot=10))
>>> page.startswith("<!DOCTYPE html>") and "<b>" not in page
True
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from guardrail.report import svg
from guardrail.report.edits import segments
from guardrail.report.markdown import (
    FAMILY_METRICS,
    HEADLINE,
    INTERVAL_NOTE,
    VERDICT_TEXT,
    calibration_notes,
    half_width,
    headline_rows,
    verdict,
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.score{font-size:40px;font-weight:700;color:#0072B2}.muted{color:#666}
.banner{background:#fff4e5;border:1px solid #f0b45b;padding:8px 12px;border-radius:6px;margin:12px 0}
table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td .ci{color:#777;font-size:11px;display:block}td .verdict{font-style:italic}
.charts{display:flex;flex-wrap:wrap;gap:16px}.charts svg{background:#fff;border:1px solid #e5e5e5;border-radius:6px}
.case{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.pair pre,.gold pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:6px;margin:2px 0;
font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
mark{background:#ffe08a;padding:0 1px}mark.del{background:#f8c4c4;text-decoration:line-through}
.bad{color:#b00020}.ok{color:#00703c}ul.issues{margin:4px 0;padding-left:20px}
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or an attribute (non-strings as compact JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return html.escape(text, quote=True)


def _num(cell: Mapping[str, Any] | None, key: str = "", cases: int | None = None) -> str:
    """A table cell: the value ± the half-width of its 95% interval and, under it, the interval
    (and the number of cases, when fewer than the row's). A PDR whose interval does not lie above 0
    shows its verdict in the value's place, its figures underneath."""
    if not cell or cell.get("value") is None:
        return '<td class="num">–</td>'
    ci, hw = cell.get("ci"), half_width(cell)
    figure = f"{cell['value']:.3f}" + (f" ± {hw:.3f}" if hw is not None else "")
    under = [f"[{ci[0]:.3f}, {ci[1]:.3f}]"] if ci else []
    found = cell.get("cases")
    if cases is not None and found is not None and found != cases:
        under.append(f"{found} cases")
    text = VERDICT_TEXT.get(verdict(cell) or "") if key == "pdr" else None
    if text:
        figure, under = f'<span class="verdict">{_e(text)}</span>', [figure, *under]
    band = f'<span class="ci">{_e(" ".join(under))}</span>' if under else ""
    return f'<td class="num">{figure}{band}</td>'


def render_html(report: Mapping[str, Any]) -> str:
    """The whole ``report.html`` as one string (see the module docstring)."""
    title = f"Robustness report: {report.get('suite', '')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No scripts, no fetches: the report is data, and must stay inert even if an escape were missed.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        _summary(report),
        _headline(report),
        _severity_charts(report),
        _families(report),
        _heatmap(report),
        _modes(report),
        _attempts(report),
        _calibration(report),
        _worst(report),
        _setup(report),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _summary(report: Mapping[str, Any]) -> str:
    score = report.get("score")
    model = report.get("model") or {}
    shown = f"{score:.1f}" if score is not None else "–"
    out = [f'<p><span class="score" id="score">{_e(shown)}</span> <span class="muted">/ 100</span></p>',
           f'<p class="muted">model {_e(model.get("model") or model.get("function") or model.get("backend") or "?")}'
           f' · modes {_e(", ".join(report.get("modes", [])))} · config {_e(report.get("config_hash") or "–")}</p>']
    run = report.get("run") or {}
    if run and not run.get("complete", True):
        out.append(f'<p class="banner">Incomplete run: {_e(run.get("rows_done", "?"))} of '
                   f'{_e(run.get("rows_planned", "?"))} prompts finished. {_e(run.get("resume_hint", ""))}</p>')
    torn = run.get("torn_lines") or []
    if torn:
        out.append(f'<p class="banner">{len(torn)} unreadable line(s) of results.jsonl were skipped and recomputed: '
                   f"{_e('; '.join(map(str, torn[:3])))}</p>")
    return "\n".join(out)


def _headline(report: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{_e(t)}</th>" for t in ("mode", "prompts", "n", "cases", *(t for _, t, _ in HEADLINE),
                                                  "latency p50 / p95 (s)", "tokens / prompt"))
    body = []
    for mode, title, cell in headline_rows(report):
        lat = (cell or {}).get("latency_s") or {}
        tok = (cell or {}).get("tokens") or {}
        lat_s = f"{lat['p50']:.2f} / {lat['p95']:.2f}" if lat.get("p50") is not None else "–"
        tok_s = f"{tok['mean']:.0f}" if tok.get("mean") is not None else "–"
        body.append(f"<tr><td>{_e(mode)}</td><td>{_e(title)}</td><td class=\"num\">{_e(cell.get('n', ''))}</td>"
                    f"<td class=\"num\">{_e(cell.get('cases', ''))}</td>"
                    + "".join(_num(cell.get(k), k, cell.get("cases")) for k, _, _ in HEADLINE)
                    + f'<td class="num">{_e(lat_s)}</td><td class="num">{_e(tok_s)}</td></tr>')
    return (f'<h2>Headline</h2><p class="muted">{_e(INTERVAL_NOTE)}</p>'
            f'<table class="gr-headline"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _families(report: Mapping[str, Any]) -> str:
    """Per mode, the family × severity table: the charts' numbers, with consistency and PDR."""
    out = []
    head = "".join(f"<th>{_e(t)}</th>" for t in ("family", "severity", "n", "cases", *(t for _, t in FAMILY_METRICS)))
    for mode in report.get("modes", []):
        body = [f"<tr><td>{_e(fam)}</td><td>{_e(sev)}</td><td class=\"num\">{_e(cell.get('n', ''))}</td>"
                f"<td class=\"num\">{_e(cell.get('cases', ''))}</td>"
                + "".join(_num(cell.get(k), k, cell.get("cases")) for k, _ in FAMILY_METRICS) + "</tr>"
                for fam, cells in (report["metrics"][mode].get("families") or {}).items()
                for sev, cell in cells.items() if cell]
        if body:
            out.append(f'<h3>{_e(mode)}</h3><table class="gr-families"><thead><tr>{head}</tr></thead>'
                       f'<tbody>{"".join(body)}</tbody></table>')
    return "<h2>By family and severity</h2>" + "".join(out) if out else ""


def _series(summary: Mapping[str, Any], metric: str) -> list[svg.Series]:
    """One line per family over severity, starting from the clean value at severity 0."""
    clean = (summary.get("clean") or {}).get(metric) or {}
    out = []
    for fam, cells in (summary.get("families") or {}).items():
        points: list[tuple[float, float]] = []
        band: list[tuple[float, float]] = []
        if clean.get("value") is not None and not fam.startswith("info_removed"):
            points.append((0.0, clean["value"]))
            band.append(tuple(clean["ci"]) if clean.get("ci") else (clean["value"], clean["value"]))  # type: ignore[arg-type]
        for sev, cell in cells.items():
            value = (cell or {}).get(metric) or {}
            if value.get("value") is None:
                continue
            points.append((float(sev), value["value"]))
            band.append(tuple(value["ci"]) if value.get("ci") else (value["value"], value["value"]))  # type: ignore[arg-type]
        if points:
            out.append(svg.Series(fam, points, band))
    return out


def _severity_charts(report: Mapping[str, Any]) -> str:
    out = []
    for mode in report.get("modes", []):
        summary = report["metrics"][mode]
        if not summary.get("families"):
            continue
        charts = [
            svg.line_chart(_series(summary, "valid_at_1"), title=f"valid@1 vs severity ({mode})",
                           x_label="severity (0 = clean)", y_label="valid@1", width=540),
            svg.line_chart(_series(summary, "field_f1"), title=f"field F1 vs severity ({mode})",
                           x_label="severity (0 = clean)", y_label="field F1", width=540),
        ]
        out.append(f'<h3>{_e(mode)}</h3><div class="charts">{"".join(charts)}</div>')
    if not out:
        return ""
    return ('<h2>Validity and field F1 against severity</h2><p class="muted">Shaded: 95% bootstrap interval. '
            "Each family starts from the clean prompts at severity 0.</p>" + "".join(out))


def _heatmap(report: Mapping[str, Any]) -> str:
    modes = report.get("modes", [])
    if not modes:
        return ""
    data = (report.get("fields") or {}).get(modes[0]) or {}
    fams, fields = list(data.get("families") or []), data.get("fields") or {}
    if not fields:
        return ""
    values: list[list[float | None]] = [[per.get(f, {}).get("f1") for f in fams] for per in fields.values()]
    chart = svg.heatmap(list(fields), fams, values, title=f"field F1 by family ({modes[0]})", cell=40)
    return ('<h2>Fields × families</h2><p class="muted">Micro F1 of each field, severities pooled; fields with the '
            f'same name in several tasks are pooled. Grey: the field never occurred.</p><div class="charts">{chart}</div>')


_COMPARED = (("valid_at_1", "valid@1"), ("valid_at_k", "valid@k"), ("exact_match", "exact"), ("field_f1", "field F1"))


def _modes(report: Mapping[str, Any]) -> str:
    modes = report.get("modes", [])
    if len(modes) < 2:
        return ""
    charts = []
    for slice_key, slice_title in (("clean", "clean prompts"), ("overall", "perturbed prompts")):
        groups: dict[str, list[float | None]] = {}
        errors: dict[str, list[tuple[float, float] | None]] = {}
        for mode in modes:
            cell = report["metrics"][mode].get(slice_key) or {}
            groups[mode] = [(cell.get(k) or {}).get("value") for k, _ in _COMPARED]
            errors[mode] = [tuple(ci) if (ci := (cell.get(k) or {}).get("ci")) else None for k, _ in _COMPARED]  # type: ignore[misc]
        if any(v is not None for vs in groups.values() for v in vs):
            charts.append(svg.bar_chart([t for _, t in _COMPARED], groups, errors=errors,
                                        title=f"{' vs '.join(modes)}: {slice_title}", width=540))
    scores = ", ".join(f"{_e(m)}: {_e(_fmt_score(report['metrics'][m].get('score')))}" for m in modes)
    return (f"<h2>Constrained vs unconstrained decoding</h2><p>Scores: {scores}</p>"
            f'<div class="charts">{"".join(charts)}</div>')


def _fmt_score(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _attempts(report: Mapping[str, Any]) -> str:
    hist = report.get("attempts") or {}
    charts = [svg.histogram(counts, title=f"attempts per prompt ({mode})", x_label="attempts")
              for mode, counts in hist.items() if counts]
    if not charts:
        return ""
    return f'<h2>Attempts</h2><div class="charts">{"".join(charts)}</div>'


def _calibration(report: Mapping[str, Any]) -> str:
    """Reliability diagram and agreement table per mode, when rows carry confidence or agreement."""
    out = []
    for mode, cal in (report.get("calibration") or {}).items():
        parts = [f"<h3>{_e(mode)}</h3>"]
        parts += [f"<p>{_e(note).replace('**', '')}</p>" for note in calibration_notes(cal)]
        charts = []
        conf = cal.get("confidence") or {}
        if conf.get("n"):
            ece = conf.get("ece")
            charts.append(svg.reliability_diagram(conf.get("bins") or [], title=f"reliability ({mode}), ECE "
                                                  + ("–" if ece is None else f"{ece:.3f}")))
        levels = (cal.get("agreement") or {}).get("levels") or {}
        if levels:
            charts.append(svg.bar_chart(list(levels), {"accuracy": [v["accuracy"] for v in levels.values()]},
                                        title=f"field accuracy by vote agreement ({mode})", y_label="accuracy",
                                        width=360))
        if charts:
            parts.append(f'<div class="charts">{"".join(charts)}</div>')
        out.append("".join(parts))
    if not out:
        return ""
    return ('<h2>Confidence and agreement</h2><p class="muted">Per-field confidence is the probability the model '
            "gave the tokens of each field's value; agreement is the share of vote samples with the same value. "
            "Both are checked against the gold: bars show each confidence bin's accuracy, dots its mean confidence, "
            "the dashed diagonal perfect calibration.</p>" + "".join(out))


def _marked(case: Mapping[str, Any], side: str, part: str) -> str:
    """The clean or perturbed text of ``part``, its changed pieces in ``<mark>``."""
    clean, perturbed = case.get(f"clean_{part}"), case.get(part)
    if clean is None:  # no clean row to rebuild from: show the text as recorded, unmarked
        clean_text = perturbed if side == "perturbed" else None
        return '<pre class="muted">–</pre>' if clean_text is None else f"<pre>{_e(clean_text)}</pre>"
    tag = "mark" if side == "perturbed" else 'mark class="del"'
    pieces = segments(clean, case.get("edits") or [], side=side, part=part,  # type: ignore[arg-type]
                      expected=perturbed if side == "perturbed" else None)
    body = "".join(f"<{tag}>{_e(p)}</mark>" if changed else _e(p) for p, changed in pieces)
    return f"<pre>{body}</pre>"


def _raw(value: str | None) -> str:
    return '<pre class="muted">(no output)</pre>' if value is None else f"<pre>{_e(value)}</pre>"


def _worst(report: Mapping[str, Any]) -> str:
    cases = report.get("worst_cases") or []
    if not cases:
        return ""
    out = ['<h2>Worst cases</h2><p class="muted">Perturbed prompts that lost the most field F1 against the same case\'s '
           'clean prompt. <mark>Inserted or changed</mark> text on the right, <mark class="del">replaced or removed'
           "</mark> text on the left.</p>"]
    for n, case in enumerate(cases, 1):
        edits = case.get("edits") or []
        verdict = '<span class="ok">valid</span>' if case.get("valid") else '<span class="bad">invalid</span>'
        head = (f"<h3>{n}. {_e(case.get('task') or '')} / {_e(case['case_id'])}: {_e(case['family'])} @ "
                f"{_e(case['severity'])} (seed {_e(case.get('seed'))}) · {verdict} after {_e(case.get('attempts'))} "
                f"attempt(s) · field F1 {_e(_f(case.get('clean_field_f1')))} → {_e(_f(case.get('field_f1')))}</h3>")
        rows = [f"<div><b>clean input</b>{_marked(case, 'clean', 'input')}</div>"
                f"<div><b>perturbed input</b>{_marked(case, 'perturbed', 'input')}</div>"]
        if any(e.get("part") == "instruction" for e in edits):
            rows.append(f"<div><b>clean instruction</b>{_marked(case, 'clean', 'instruction')}</div>"
                        f"<div><b>perturbed instruction</b>{_marked(case, 'perturbed', 'instruction')}</div>")
        rows.append(f"<div><b>clean output</b>{_raw(case.get('clean_raw'))}</div>"
                    f"<div><b>perturbed output</b>{_raw(case.get('raw'))}</div>")
        extra = [f'<div class="gold"><b>gold</b><pre>{_e(json.dumps(case.get("gold"), ensure_ascii=False))}</pre></div>']
        if case.get("removed_fields"):
            extra.append(f"<p>removed fields: {_e(', '.join(map(str, case['removed_fields'])))}</p>")
        issues = case.get("issues") or []
        if issues:
            extra.append('<b>issues</b><ul class="issues">' + "".join(f"<li>{_e(i)}</li>" for i in issues) + "</ul>")
        elif case.get("error"):
            extra.append(f'<b>error</b><pre>{_e(case["error"])}</pre>')
        out.append(f'<section class="case">{head}<div class="pair">{"".join(rows)}</div>{"".join(extra)}</section>')
    return "\n".join(out)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _setup(report: Mapping[str, Any]) -> str:
    config = report.get("config") or {}
    rows = [(k, v) for k, v in sorted(config.items())]
    rows.append(("config hash", report.get("config_hash") or "–"))
    rows += [(f"model {k}", v) for k, v in sorted((report.get("model") or {}).items())]
    rows += [(k, v or "not installed") for k, v in sorted((report.get("versions") or {}).items())]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h2>Setup</h2><table class="gr-setup">{body}</table>'
