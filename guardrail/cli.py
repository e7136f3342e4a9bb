"""The ``guardrail`` command: thin wrappers that parse arguments, call the library and render."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from guardrail.errors import GuardError, GuardrailError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Trustworthy structured output from LLMs: generate, validate, and report robustness.",
)
err = Console(stderr=True)


def _register_report() -> None:
    from guardrail.report.cli import register

    register(app)


def main() -> None:
    """Console-script entry point."""
    app()


_register_report()


def _read_text(text: str) -> str:
    if text == "-":
        return sys.stdin.read()
    return text


def _print_issues(error: GuardError) -> None:
    for number, attempt in enumerate(error.attempts, 1):
        err.print(f"[bold]attempt {number}[/bold] ({attempt.ended}, {attempt.duration_s:.2f} s)", highlight=False)
        if attempt.output is not None:
            err.print(f"  output: {attempt.output!r}", highlight=False, markup=False)
        if attempt.error:
            err.print(f"  error: {attempt.error}", highlight=False, markup=False)
        for issue in attempt.issues:
            err.print(f"  - {issue.path or '/'}: {issue.message}", highlight=False, markup=False)


@app.command()
def generate(
    text: Annotated[str, typer.Argument(help="The text to extract from ('-' reads standard input).")],
    schema: Annotated[str, typer.Option("--schema", "-s", help="A shipped schema name or a path to a .json file.")],
    model: Annotated[str, typer.Option(help="'embedded', a Hugging Face model id or a local path.")] = "embedded",
    engine: Annotated[str | None, typer.Option(help="llguidance, xgrammar or outlines_core (default: fastest).")] = None,
    runtime: Annotated[str, typer.Option(
        help="How the local model runs: transformers, or llamacpp (a GGUF file; faster on a CPU; "
             "pip install 'guardrail[llamacpp]').")] = "transformers",
    retries: Annotated[int, typer.Option(help="Re-asks after the first attempt.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per attempt.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every attempt on stderr.")] = False,
    base_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible server instead of a local model (e.g. http://127.0.0.1:8000/v1); "
             "--model then names the server's model (default: its only one).")] = None,
) -> None:
    """Extract TEXT into JSON valid against --schema with a local model or a server; print the JSON.

    Exits 0 with the JSON on stdout, or 1 with every attempt's issues on stderr.
    """
    from guardrail.guard import Guard

    try:
        where: dict[str, Any] = ({"base_url": base_url, "model": None if model == "embedded" else model}
                                 if base_url else {"model": model, "engine": engine, "runtime": runtime})
        guard: Guard[Any] = Guard(schema, retries=retries, max_new_tokens=max_new_tokens, temperature=temperature,
                                  **where)
        result = guard.run(_read_text(text))
    except GuardError as error:
        err.print(f"[red]no valid output:[/red] {error}", highlight=False)
        _print_issues(error)
        raise typer.Exit(1) from None
    except (GuardrailError, ValueError) as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    if verbose:
        for number, attempt in enumerate(result.attempts, 1):
            err.print(f"attempt {number}: {attempt.ended}, {attempt.duration_s:.2f} s, "
                      f"{attempt.completion_tokens} tokens", highlight=False)
    typer.echo(json.dumps(result.data, ensure_ascii=False, indent=2))


@app.command()
def validate(
    output: Annotated[Path, typer.Argument(help="A file holding a model's output ('-' reads standard input).")],
    schema: Annotated[str, typer.Option("--schema", "-s", help="A shipped schema name or a path to a .json file.")],
) -> None:
    """Check a model's output against a schema; print the issues located by JSON Pointer."""
    from guardrail.schema import Schema
    from guardrail.validation import validate as check

    try:
        loaded = Schema.load(schema)
    except GuardrailError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(2) from None
    text = sys.stdin.read() if str(output) == "-" else output.read_text(encoding="utf-8")
    verdict = check(loaded, text)
    if verdict.ok:
        typer.echo(json.dumps(verdict.parsed, ensure_ascii=False, indent=2))
        return
    for issue in verdict.issues:
        typer.echo(f"{issue.path or '/'}: {issue.message}", err=True)
    raise typer.Exit(1)


@app.command()
def schemas() -> None:
    """List the schemas shipped with guardrail."""
    from guardrail.schema import shipped_schema_names

    for name in shipped_schema_names():
        typer.echo(name)
