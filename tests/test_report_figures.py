"""How the report shows its figures: value ± half-width, cases, and PDR verdicts, in JSON, Markdown and HTML.

Rows are built by hand, so every figure is known: in each of ten cases the clean answer gets one
of two fields right (F1 2/3); under ``case`` noise it gets both (always better), under ``ocr``
none (always worse), and under ``typos`` seven cases gain and three lose, so PDR is negative
only by the luck of which cases gained and its interval covers 0. One case's clean answer is
invalid, so consistency rests on nine cases while the other figures rest on ten.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import json
import re
from typing import Any

import pytest

from guardrail.metrics import BETTER_UNDER_NOISE, MEASURABLE_DROP, NO_MEASURABLE_DROP
from guardrail.report import build_report, render_html, render_markdown
from guardrail.report.markdown import fmt_metric, fmt_value

GOLD = {"a": "x", "b": "y"}


def _row(case: str, family: str, output: Any, *, valid: bool = True) -> dict[str, Any]:
    return {"case_id": case, "family": family, "severity": 0.0 if family == "clean" else 0.1, "valid_first": valid,
            "valid": valid, "attempts": 1, "output": output if valid else None, "gold": GOLD}


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(10):
        case = f"c{i}"
        # Case c9's clean answer is invalid: consistency then rests on nine cases, not ten.
        rows.append(_row(case, "clean", {"a": "x"}, valid=i != 9))
        rows.append(_row(case, "case", GOLD))
        rows.append(_row(case, "typos", {} if i < 3 else GOLD))
        rows.append(_row(case, "ocr", {}))
    return rows


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return build_report({"constrained": _rows()}, suite="figures", n_boot=400)


def _table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after ``heading``, split into cells."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[start + 2 : end]]


def _figure(estimate: dict[str, Any]) -> str:
    return f"{estimate['value']:.3f} ± {estimate['half_width']:.3f} [{estimate['ci'][0]:.3f}, {estimate['ci'][1]:.3f}]"


def _families(report: dict[str, Any]) -> dict[str, Any]:
    return report["metrics"]["constrained"]["families"]  # type: ignore[no-any-return]


def test_json_report_carries_half_widths_cases_and_verdicts(report: dict[str, Any]) -> None:
    fams = _families(report)
    assert fams["case"]["0.1"]["pdr"]["verdict"] == BETTER_UNDER_NOISE
    assert fams["typos"]["0.1"]["pdr"]["verdict"] == NO_MEASURABLE_DROP and fams["typos"]["0.1"]["pdr"]["value"] < 0
    assert fams["ocr"]["0.1"]["pdr"]["verdict"] == MEASURABLE_DROP
    overall = report["metrics"]["constrained"]["overall"]
    for metric in ("valid_at_1", "valid_at_k", "exact_match", "field_f1", "consistency", "pdr"):
        lo, hi = overall[metric]["ci"]
        assert overall[metric]["half_width"] == pytest.approx((hi - lo) / 2), metric
    assert overall["cases"] == overall["field_f1"]["cases"] == 10 and overall["consistency"]["cases"] == 9
    assert json.loads(json.dumps(report))["metrics"] == report["metrics"]


def test_markdown_shows_value_plus_minus_half_width_and_cases(report: dict[str, Any]) -> None:
    md = render_markdown(report)
    headline = _table(md, "## Headline")
    titles = next(line for line in md.splitlines() if line.startswith("| mode |"))
    assert "| n | cases |" in titles
    clean, perturbed = headline
    assert clean[:4] == ["constrained", "clean", "10", "10"] and perturbed[:4] == ["constrained", "perturbed", "30", "10"]
    overall = report["metrics"]["constrained"]["overall"]
    assert _figure(overall["field_f1"]) in perturbed
    # Every measured headline figure of the perturbed row reads "value ± half-width [low, high]".
    figure = re.compile(r"(no measurable drop \()?-?\d+\.\d{3} ± \d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]")
    measured = [c for c in perturbed[4:12] if c != "–"]
    assert len(measured) == 7 and all(figure.match(c) for c in measured), measured
    assert any(c.endswith("(9 cases)") for c in measured), "consistency rests on fewer cases and should say so"


def test_markdown_pdr_cells_read_no_measurable_drop_where_the_interval_covers_zero(report: dict[str, Any]) -> None:
    rows = {row[0]: row for row in _table(render_markdown(report), "## By family and severity")}
    fams = _families(report)
    typos, case = fams["typos"]["0.1"]["pdr"], fams["case"]["0.1"]["pdr"]
    assert rows["typos"][-1] == f"no measurable drop ({_figure(typos)})" and typos["value"] < 0
    # Below 0 throughout (c9's clean answer was invalid, its noisy ones valid: more than -0.5).
    assert rows["case"][-1] == f"better under noise ({_figure(case)})" and case["ci"][1] == pytest.approx(-0.5)
    assert rows["ocr"][-1] == "1.000 ± 0.000 [1.000, 1.000]"  # a measurable drop is its number
    assert rows["typos"][3] == "10" and rows["typos"][7].endswith("(9 cases)")  # cases column; consistency on 9
    # No PDR anywhere is a bare negative number dressed as an improvement.
    assert not any(re.match(r"-\d", row[-1]) for row in rows.values())


def test_html_shows_half_widths_and_verdicts_in_headline_and_family_tables(report: dict[str, Any]) -> None:
    page = render_html(report)
    headline = page.split('<table class="gr-headline">', 1)[1].split("</table>", 1)[0]
    f1 = report["metrics"]["constrained"]["overall"]["field_f1"]
    assert f'{f1["value"]:.3f} ± {f1["half_width"]:.3f}<span class="ci">[{f1["ci"][0]:.3f}, {f1["ci"][1]:.3f}]' in headline
    assert headline.count(" ± ") == 7 + 5  # perturbed: 7 measured figures (PDR's under its verdict); clean: 5
    assert "<th>cases</th>" in headline and "9 cases" in headline
    families = page.split('<table class="gr-families">', 1)[1].split("</table>", 1)[0]
    cells = dict(re.findall(r"<tr><td>(\w+)</td>.*?(<td class=\"num\">(?:(?!<td).)*</td>)</tr>", families))
    typos = _families(report)["typos"]["0.1"]["pdr"]
    assert cells["typos"] == ('<td class="num"><span class="verdict">no measurable drop</span><span class="ci">'
                              f"{_figure(typos)}</span></td>")
    assert '<span class="verdict">better under noise</span>' in cells["case"]
    assert cells["ocr"] == '<td class="num">1.000 ± 0.000<span class="ci">[1.000, 1.000]</span></td>'


def test_reports_written_before_half_widths_and_verdicts_render_the_same(report: dict[str, Any]) -> None:
    # A report.json from before these keys existed: the renderers derive them from ci.
    old = copy.deepcopy(report)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            if "ci" in node:
                node.pop("half_width", None)
                node.pop("verdict", None)
                node.pop("cases", None)
            for value in node.values():
                strip(value)

    strip(old["metrics"])
    assert "verdict" not in old["metrics"]["constrained"]["families"]["typos"]["0.1"]["pdr"]
    md = render_markdown(old)
    rows = {row[0]: row for row in _table(md, "## By family and severity")}
    assert rows["typos"][-1].startswith("no measurable drop (-") and rows["case"][-1].startswith("better under noise (")
    assert "no measurable drop" in render_html(old)


def test_formatters_on_single_figures() -> None:
    assert fmt_value(None) == "–" and fmt_value({"value": None, "ci": None}) == "–"
    assert fmt_value({"value": 0.5, "ci": None}) == "0.500"  # no interval, nothing to add
    assert fmt_value({"value": 0.62, "ci": [0.57, 0.67], "half_width": 0.05}) == "0.620 ± 0.050 [0.570, 0.670]"
    assert fmt_metric("pdr", {"value": 0.3, "ci": [0.1, 0.5], "half_width": 0.2, "cases": 30, "verdict": MEASURABLE_DROP},
                      cases=30) == "0.300 ± 0.200 [0.100, 0.500]"
    # One case: no verdict (its interval cannot have width), so the number stands alone.
    assert fmt_metric("pdr", {"value": -0.5, "ci": [-0.5, -0.5], "cases": 1}) == "-0.500 ± 0.000 [-0.500, -0.500]"
    # Only PDR has verdicts: a consistency interval around 0 is just a figure.
    assert fmt_metric("consistency", {"value": 0.0, "ci": [0.0, 0.1], "cases": 4}, cases=4) == "0.000 ± 0.050 [0.000, 0.100]"


@pytest.mark.parametrize("module", ["guardrail.report.json", "guardrail.report.markdown", "guardrail.report.html",
                                    "guardrail.report.svg"])
def test_renderer_docstring_examples_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
