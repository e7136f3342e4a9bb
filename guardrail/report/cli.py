"""The ``guardrail report`` command: parse options, run ``run_report`` under a progress bar.

``register(app)`` adds the command to guardrail's typer app (``guardrail/cli.py`` calls it).

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [c.name for c in app.registered_commands]
['report']

Defaults are sized for the embedded model on a 2-core CPU. With no SUITE, the shipped SNIPS
suite runs on ``DEMO_LIMIT`` cases (round-robin, so every intent is in) with four families at
two severities and one seed: 28 × (1 clean + 4 × 2 perturbed) = 252 prompts, decoded 16 at a
time with the re-asks riding along. 28 cases is what it takes for the PDR's 95% interval to be
about ±0.10 wide, so a drop of 0.10 can be told from none (7 cases gave ±0.35).
Every default is a module constant below, so it is retuned in one place;
``--limit 0`` runs the whole suite.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from guardrail._cli_common import Runtime, Strategy, Structured, fail, stderr_console, warn
from guardrail.errors import GuardrailError
from guardrail.report.markdown import VERDICT_TEXT, fmt_value, half_width, verdict
from guardrail.report.run import (
    DEFAULT_FAMILIES,
    DEFAULT_SEEDS,
    DEFAULT_SEVERITIES,
    EXIT_FAIL_UNDER,
    EXIT_INTERRUPTED,
    ReportRun,
    canonical_family,
)

if TYPE_CHECKING:
    from rich.progress import TaskID

    from guardrail.suite import Suite

#: Option defaults, as the command line spells them.
DEFAULT_PERTURB = ",".join(DEFAULT_FAMILIES)
DEFAULT_SEVERITY = ",".join(f"{s:g}" for s in DEFAULT_SEVERITIES)
DEFAULT_RETRIES = 2
DEFAULT_BATCH = 16
#: Cases run when no SUITE is given: 4 of each of the shipped SNIPS suite's 7 intents (8 each).
DEMO_LIMIT = 28
#: Tokens per attempt, re-asks included. SNIPS answers need under 60. A small model can loop
#: inside a JSON array until the budget runs out, and every row of a batch waits for the longest,
#: so the budget is also the cap: a truncated output is re-asked with the same budget instead of
#: the guard's default of twice as many (96 -> 192 -> 384 steps for the whole batch).
DEFAULT_MAX_NEW_TOKENS = 96


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers such as 0.1,0.3, got {text!r}",
                                 param_hint="'--severity'") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise typer.BadParameter(f"severities are numbers in [0, 1], got {text!r}", param_hint="'--severity'")
    return values


def _families(text: str) -> list[str]:
    try:
        families = [canonical_family(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--perturb'") from None
    if not families:
        raise typer.BadParameter("give at least one perturbation family, e.g. typos,ocr", param_hint="'--perturb'")
    return families


def _check_sampling(strategy: Strategy, temperature: float | None) -> None:
    if strategy is Strategy.greedy and temperature:
        raise typer.BadParameter("greedy decoding takes no temperature; add --strategy sample or vote to sample",
                                 param_hint="'--temperature'")
    if strategy is not Strategy.greedy and temperature == 0:
        raise typer.BadParameter(f"--strategy {strategy.value} samples, so the temperature must be above 0",
                                 param_hint="'--temperature'")


def _load_suite(path: Path | None) -> Suite:
    """The suite to run, read and checked before anything is drawn; a user error (exit 2) if it cannot be."""
    from guardrail.report.run import default_suite
    from guardrail.suite import load_suite

    try:
        return load_suite(default_suite() if path is None else path)
    except UnicodeDecodeError as exc:
        fail(f"{path}: the suite is not UTF-8 text (byte {exc.start}: {exc.reason})")
    except (GuardrailError, OSError) as exc:
        fail(str(exc))


def report(
    suite: Annotated[Path | None, typer.Argument(
        exists=True, dir_okay=False, readable=True,
        help="A suite YAML file (default: the shipped SNIPS suite).")] = None,
    model: Annotated[str, typer.Option(help="'embedded', a Hugging Face model id or a local path.")] = "embedded",
    perturb: Annotated[str, typer.Option(help="Comma-separated perturbation families (typos, ocr, case, "
                                              "distractor, whitespace, punctuation, unicode, word_swap, "
                                              "word_duplicate, stopword_drop, info_removed).")] = DEFAULT_PERTURB,
    severity: Annotated[str, typer.Option(help="Comma-separated severities in [0, 1].")] = DEFAULT_SEVERITY,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per family and severity (0 .. N-1).")] = DEFAULT_SEEDS,
    retries: Annotated[int, typer.Option(min=0, help="Re-asks after the first attempt.")] = DEFAULT_RETRIES,
    compare_unconstrained: Annotated[bool, typer.Option(
        "--compare-unconstrained", help="Also run every prompt with constrained decoding off.")] = False,
    out: Annotated[Path, typer.Option(
        file_okay=False, help="Output folder: results.jsonl, run.json and the reports.")] = Path("report"),
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per batched model call.")] = DEFAULT_BATCH,
    limit: Annotated[int | None, typer.Option(min=0, help=f"Only the first N cases, round-robin over tasks "
                                                       f"(default: all, or {DEMO_LIMIT} for the shipped suite; "
                                                       "0: all).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Token limit per attempt.")] = DEFAULT_MAX_NEW_TOKENS,
    chat: Annotated[bool | None, typer.Option(
        "--chat/--text", help="Send chat messages (few-shot examples as turns) or one rendered text "
                              "(default: chat for a local model).")] = None,
    fail_under: Annotated[float | None, typer.Option(
        help="Exit with code 3 when the score (0-100) is below this.")] = None,
    llm: Annotated[str | None, typer.Option(
        hidden=True, help="module:function to call instead of a local model (prompt -> text).")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible server to run on instead of a local model, e.g. http://127.0.0.1:8000/v1; "
             "--model then names the server's model (default: its only one). API key: $OPENAI_API_KEY.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Prompts in flight at once, e.g. requests to --base-url (default: --batch-size).")] = None,
    structured: Annotated[Structured, typer.Option(
        case_sensitive=False, help="How the server gets the schema with --base-url.")] = Structured.auto,
    strategy: Annotated[Strategy, typer.Option(
        case_sensitive=False,
        help="Decoding strategy: greedy, sample, or vote (the per-field majority of --samples samples, with "
             "per-field agreement; the report adds a calibration section).")] = Strategy.greedy,
    samples: Annotated[int, typer.Option(min=1, help="Samples per prompt with --strategy vote.")] = 5,
    temperature: Annotated[float | None, typer.Option(
        min=0.0, help="Sampling temperature for --strategy sample or vote (default 0.7; seed 0).")] = None,
    runtime: Annotated[Runtime, typer.Option(
        case_sensitive=False,
        help="How the local model runs: transformers (batched), or llamacpp (a GGUF file, one prompt at a "
             "time; needs an extra, see above).")] = Runtime.transformers,
) -> None:
    """Score how robust extraction stays under noisy prompts; write report.json, .md and .html.

    Rows are saved to OUT/results.jsonl as they finish: rerun the same command after a crash
    or Ctrl-C to resume. A changed configuration moves the old results aside and starts anew.
    Exit codes: 0 done, 3 score under --fail-under, 130 interrupted, 2 bad input.

    \b
    --runtime llamacpp needs the llamacpp extra:
        pip install 'guardrail-llm[llamacpp]'
    """
    from guardrail.report.run import run_report

    # Every input is checked before the progress bar appears, so an error is the only output.
    families, severities = _families(perturb), _floats(severity)
    if base_url and runtime is not Runtime.transformers:
        raise typer.BadParameter("--runtime chooses how a local model runs; a --base-url server runs its own",
                                 param_hint="'--runtime'")
    _check_sampling(strategy, temperature)
    function = _import_llm(llm) if llm else None
    loaded = _load_suite(suite)
    if limit is None:
        limit = DEMO_LIMIT if suite is None else 0
    bar = _Bar()
    try:
        result = run_report(loaded, model, families, severities, seeds, retries, compare_unconstrained, out,
                            batch_size, limit or None, bar, fail_under=fail_under, llm=function, chat=chat,
                            guard_options={"max_new_tokens": max_new_tokens, "max_new_tokens_cap": max_new_tokens},
                            backend_options={"base_url": base_url, "structured": structured.value} if base_url
                            else {"runtime": runtime.value} if runtime is not Runtime.transformers else None,
                            concurrency=concurrency, strategy=strategy.value, samples=samples,
                            temperature=temperature)
    except (GuardrailError, ValueError, OSError) as exc:
        bar.close(erase=True)  # an error leaves no half-drawn bar behind it
        fail(str(exc))
    finally:
        bar.close()
    _summarise(result, fail_under)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


class _Bar:
    """The progress bar: it appears with the first progress report, so after the run's own checks."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Labels hold task names from the suite file: never read as markup.
        columns = (TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._progress = Progress(*columns, console=stderr_console(), transient=False)
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int, label: str) -> None:
        if self._task is None:
            self._progress.start()
            # Resumed rows start the task as already complete, so they do not count towards the speed (ETA).
            self._task = self._progress.add_task(label, total=total, completed=done)
        else:
            self._progress.update(self._task, completed=done, description=label)

    def close(self, *, erase: bool = False) -> None:
        """Leave the bar's last state on screen, or ``erase`` it (before an error); idempotent."""
        if self._task is None:
            return
        self._task = None
        if erase:
            self._progress.live.transient = True
            self._progress.live.stop()  # not Progress.stop, which adds a blank line when stderr is no terminal
        else:
            self._progress.stop()


def _summarise(result: ReportRun, fail_under: float | None) -> None:
    console = stderr_console()
    for line in result.torn:
        warn("skipped an unreadable results line", f" ({line}); its row was run again")
    for path in result.moved_aside:
        warn("the configuration changed:", f" earlier results moved to {path}")
    if result.rows_reused:
        console.print(f"resumed: {result.rows_reused} rows reused, {result.rows_run} run now")
    score = "–" if result.score is None else f"{result.score:.1f}"
    for line in headline(result.report):
        console.print(Text(line))
    console.print(Text.assemble("score ", (score, "bold"), f" / 100 · {result.rows_done}/{result.rows_planned} "
                                f"prompts · report in {result.files.get('html', result.out_dir)}"))
    if result.exit_code == EXIT_INTERRUPTED:
        warn("interrupted:", f" {result.resume_hint}")
    elif result.exit_code == EXIT_FAIL_UNDER:
        console.print(Text(f"score {score} is below --fail-under {fail_under:g}", style="red"))


def headline(report: dict[str, Any]) -> list[str]:
    """The figures a reader looks at first, each with the half-width of its 95% interval.

    >>> cell = {"value": 0.6, "ci": [0.5, 0.7], "half_width": 0.1}
    >>> [line] = headline({"modes": ["constrained"], "metrics": {"constrained": {
    ...     "clean": {"field_f1": cell, "exact_match": cell, "valid_at_k": cell, "cases": 28},
    ...     "overall": {"field_f1": cell, "pdr": {"value": -0.01, "ci": [-0.05, 0.03], "half_width": 0.04}}}}})
    >>> print(*line.split(" · "), sep="\\n")
    field F1 0.600 ± 0.100 clean, 0.600 ± 0.100 under noise
    exact match 0.600 ± 0.100
    valid 0.600 ± 0.100
    PDR no measurable drop (-0.010 ± 0.040)
    28 cases
    """
    lines = []
    for mode in report.get("modes", []):
        summary = report.get("metrics", {}).get(mode, {})
        clean, noisy = summary.get("clean") or {}, summary.get("overall") or {}
        if not clean:
            continue

        def short(cell: Any) -> str:
            text = fmt_value(cell, ci=False)
            return f"{text} ± {half_width(cell):.3f}" if text != "–" and cell.get("ci") else text

        pdr = noisy.get("pdr")
        pdr_text = short(pdr)
        if pdr and pdr.get("value") is not None and verdict(pdr) != "measurable_drop":
            pdr_text = f"{VERDICT_TEXT.get(verdict(pdr) or '', '')} ({pdr_text})".strip()
        prefix = f"{mode}: " if len(report.get("modes", [])) > 1 else ""
        lines.append(f"{prefix}field F1 {short(clean.get('field_f1'))} clean, {short(noisy.get('field_f1'))} under noise"
                     f" · exact match {short(clean.get('exact_match'))} · valid {short(clean.get('valid_at_k'))}"
                     f" · PDR {pdr_text} · {clean.get('cases', '?')} cases")
    return lines


def _import_llm(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function (how tests and scripts plug in their own LLM)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"expected module:function, got {spec!r}", param_hint="'--llm'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot import {spec!r}: {exc}", param_hint="'--llm'") from None
    if not callable(found):
        raise typer.BadParameter(f"{spec!r} is not callable", param_hint="'--llm'")
    return found  # type: ignore[no-any-return]


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app`` (guardrail's CLI calls this once)."""
    app.command("report")(report)
