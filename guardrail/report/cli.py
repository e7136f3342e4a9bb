"""The ``guardrail report`` command: parse options, run ``run_report`` under a progress bar.

``register(app)`` adds the command to guardrail's typer app (``guardrail/cli.py`` calls it).

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [c.name for c in app.registered_commands]
['report']

Defaults are sized for the embedded model on a 2-core CPU. With no SUITE, the shipped SNIPS
suite runs on ``DEMO_LIMIT`` cases (round-robin, so every intent is in) with four families at
two severities and one seed: 7 × (1 clean + 4 × 2 perturbed) = 63 prompts, one batch per intent
plus the re-asks. Every default is a module constant below, so it is retuned in one place;
``--limit 0`` runs the whole suite.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from guardrail.report.run import (
    DEFAULT_FAMILIES,
    DEFAULT_SEEDS,
    DEFAULT_SEVERITIES,
    EXIT_FAIL_UNDER,
    EXIT_INTERRUPTED,
    ReportRun,
    canonical_family,
)

#: Option defaults, as the command line spells them.
DEFAULT_PERTURB = ",".join(DEFAULT_FAMILIES)
DEFAULT_SEVERITY = ",".join(f"{s:g}" for s in DEFAULT_SEVERITIES)
DEFAULT_RETRIES = 2
DEFAULT_BATCH = 16
#: Cases run when no SUITE is given (the shipped SNIPS suite has 7 intents × 8 cases).
DEMO_LIMIT = 7
#: Tokens per attempt, re-asks included. SNIPS answers need under 60. A small model can loop
#: inside a JSON array until the budget runs out, and every row of a batch waits for the longest,
#: so the budget is also the cap: a truncated output is re-asked with the same budget instead of
#: the guard's default of twice as many (96 -> 192 -> 384 steps for the whole batch).
DEFAULT_MAX_NEW_TOKENS = 96

err = Console(stderr=True)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers such as 0.1,0.3, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise typer.BadParameter(f"severities are numbers in [0, 1], got {text!r}")
    return values


def _families(text: str) -> list[str]:
    try:
        return [canonical_family(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def report(
    suite: Annotated[Path | None, typer.Argument(help="A suite YAML file (default: the shipped SNIPS suite).")] = None,
    model: Annotated[str, typer.Option(help="'embedded', a Hugging Face model id or a local path.")] = "embedded",
    perturb: Annotated[str, typer.Option(help="Comma-separated perturbation families (typos, ocr, case, "
                                              "distractor, whitespace, punctuation, unicode, word_swap, "
                                              "word_duplicate, stopword_drop, info_removed).")] = DEFAULT_PERTURB,
    severity: Annotated[str, typer.Option(help="Comma-separated severities in [0, 1].")] = DEFAULT_SEVERITY,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per family and severity (0 .. N-1).")] = DEFAULT_SEEDS,
    retries: Annotated[int, typer.Option(min=0, help="Re-asks after the first attempt.")] = DEFAULT_RETRIES,
    compare_unconstrained: Annotated[bool, typer.Option(
        "--compare-unconstrained", help="Also run every prompt with constrained decoding off.")] = False,
    out: Annotated[Path, typer.Option(help="Output folder: results.jsonl, run.json and the reports.")] = Path("report"),
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
    structured: Annotated[str, typer.Option(
        help="How the server gets the schema with --base-url: auto, json_schema, json_object, vllm, "
             "guided_json or prompt.")] = "auto",
    strategy: Annotated[str, typer.Option(
        help="Decoding strategy: greedy, sample, or vote (the per-field majority of --samples samples, with "
             "per-field agreement; the report adds a calibration section).")] = "greedy",
    samples: Annotated[int, typer.Option(min=1, help="Samples per prompt with --strategy vote.")] = 5,
    temperature: Annotated[float | None, typer.Option(
        min=0.0, help="Sampling temperature for --strategy sample or vote (default 0.7; seed 0).")] = None,
    runtime: Annotated[str, typer.Option(
        help="How the local model runs: transformers (batched), or llamacpp (a GGUF file, one prompt at a "
             "time; pip install 'guardrail[llamacpp]').")] = "transformers",
) -> None:
    """Score how robust extraction stays under noisy prompts; write report.json, .md and .html.

    Rows are saved to OUT/results.jsonl as they finish: rerun the same command after a crash
    or Ctrl-C to resume. A changed configuration moves the old results aside and starts anew.
    Exit codes: 0 done, 3 score under --fail-under, 130 interrupted, 2 bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from guardrail.errors import GuardrailError
    from guardrail.report.run import run_report

    families, severities = _families(perturb), _floats(severity)
    if base_url and runtime != "transformers":
        raise typer.BadParameter("--runtime chooses how a local model runs; a --base-url server runs its own",
                                 param_hint="--runtime")
    function = _import_llm(llm) if llm else None
    if limit is None:
        limit = DEMO_LIMIT if suite is None else 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task_id = bar.add_task("report", total=None)
        started = {"done": False}

        def progress(done: int, total: int, label: str) -> None:
            if not started["done"]:
                # Resumed rows are set as already complete, so they do not count towards the speed (ETA).
                bar.update(task_id, total=total, completed=done, description=label)
                started["done"] = True
            else:
                bar.update(task_id, completed=done, description=label)

        try:
            result = run_report(suite, model, families, severities, seeds, retries, compare_unconstrained, out,
                                batch_size, limit or None, progress, fail_under=fail_under, llm=function, chat=chat,
                                guard_options={"max_new_tokens": max_new_tokens,
                                               "max_new_tokens_cap": max_new_tokens},
                                backend_options={"base_url": base_url, "structured": structured} if base_url
                                else {"runtime": runtime} if runtime != "transformers" else None,
                                concurrency=concurrency, strategy=strategy.strip().lower(), samples=samples,
                                temperature=temperature)
        except (GuardrailError, ValueError, OSError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, markup=False)
            raise typer.Exit(2) from None
    _summarise(result, fail_under)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _summarise(result: ReportRun, fail_under: float | None) -> None:
    for line in result.torn:
        err.print(f"[yellow]skipped an unreadable results line[/yellow] ({line}); its row was run again",
                  highlight=False)
    for path in result.moved_aside:
        err.print(f"[yellow]the configuration changed:[/yellow] earlier results moved to {path}", highlight=False)
    if result.rows_reused:
        err.print(f"resumed: {result.rows_reused} rows reused, {result.rows_run} run now", highlight=False)
    score = "–" if result.score is None else f"{result.score:.1f}"
    err.print(f"score [bold]{score}[/bold] / 100 · {result.rows_done}/{result.rows_planned} prompts · "
              f"report in {result.files.get('html', result.out_dir)}", highlight=False)
    if result.exit_code == EXIT_INTERRUPTED:
        err.print(f"[yellow]interrupted:[/yellow] {result.resume_hint}", highlight=False)
    elif result.exit_code == EXIT_FAIL_UNDER:
        err.print(f"[red]score {score} is below --fail-under {fail_under:g}[/red]", highlight=False)


def _import_llm(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function (how tests and scripts plug in their own LLM)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"--llm takes module:function, got {spec!r}")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot import {spec!r}: {exc}") from None
    if not callable(found):
        raise typer.BadParameter(f"{spec!r} is not callable")
    return found  # type: ignore[no-any-return]


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app`` (guardrail's CLI calls this once)."""
    app.command("report")(report)
