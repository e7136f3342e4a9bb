"""Robustness reports: run a suite under noise, resumably, and write JSON, Markdown and HTML.

``run_report`` is the whole job (what ``guardrail report`` calls); ``build_report`` and the
renderers turn outcome rows into the three files on their own.

>>> from guardrail.report import build_report, render_html, render_markdown
>>> report = build_report({}, suite="empty")
>>> render_markdown(report).splitlines()[0]
'# Robustness report: empty'

Modules: ``run`` (the job and its resume logic), ``store`` (the results file), ``json``
(``report.json``), ``markdown`` (``report.md``), ``html`` (``report.html``), ``svg`` (the
charts), ``edits`` (highlighting), ``cli`` (the ``report`` command).
"""

from guardrail.report.html import render_html
from guardrail.report.json import build_report, write_json
from guardrail.report.markdown import md_escape, render_markdown
from guardrail.report.run import ReportRun, canonical_family, run_report, write_report

__all__ = [
    "ReportRun",
    "build_report",
    "canonical_family",
    "md_escape",
    "render_html",
    "render_markdown",
    "run_report",
    "write_json",
    "write_report",
]
