"""The ``guardrail`` command: thin wrappers that parse arguments, call the library and render.

Exit codes: 0 done; 1 ``generate`` or ``validate`` found no valid output; 2 a user error (a bad
option, a missing file, an unknown schema), reported in one or two lines on stderr. Shell
completion: ``guardrail --install-completion``. ``python -m guardrail`` runs the same command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from guardrail import __version__
from guardrail._cli_common import Engine, ExitCodeGroup, Runtime, fail, stderr_console
from guardrail.errors import GuardError, GuardrailError, SchemaError

app = typer.Typer(
    cls=ExitCodeGroup,
    no_args_is_help=True,
    # Plain click help: rich markup would eat bracketed text such as the extras in install hints.
    rich_markup_mode=None,
    help="Trustworthy structured output from LLMs: generate, validate, and report robustness.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"guardrail {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Trustworthy structured output from LLMs: generate, validate, and report robustness."""


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
    console = stderr_console()
    console.print(Text.assemble(("no valid output:", "red"), " ", str(error)))
    for number, attempt in enumerate(error.attempts, 1):
        console.print(Text.assemble((f"attempt {number}", "bold"), f" ({attempt.ended}, {attempt.duration_s:.2f} s)"))
        if attempt.output is not None:
            console.print(f"  output: {attempt.output!r}")
        if attempt.error:
            console.print(f"  error: {attempt.error}")
        for issue in attempt.issues:
            console.print(f"  - {issue.path or '/'}: {issue.message}")


def _read_file(path: str) -> str:
    # Read here rather than through a typer.Path argument: typer 0.29 rejects its own allow_dash "-".
    def bad(problem: str) -> typer.BadParameter:
        return typer.BadParameter(f"file {path!r} {problem}", param_hint="'OUTPUT'")

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad("does not exist") from None
    except IsADirectoryError:
        raise bad("is a directory") from None
    except UnicodeDecodeError as error:
        raise bad(f"is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise bad(f"cannot be read: {error.strerror or error}") from None


def _bad_schema(error: SchemaError) -> typer.BadParameter:
    return typer.BadParameter(str(error), param_hint="'--schema'")


@app.command()
def generate(
    text: Annotated[str, typer.Argument(help="The text to extract from ('-' reads standard input).")],
    schema: Annotated[str, typer.Option("--schema", "-s", help="A shipped schema name or a path to a .json file.")],
    model: Annotated[str, typer.Option(help="'embedded', a Hugging Face model id or a local path.")] = "embedded",
    engine: Annotated[Engine | None, typer.Option(
        case_sensitive=False, help="The constrained-decoding engine (default: the fastest that takes the schema).")] = None,
    runtime: Annotated[Runtime, typer.Option(
        case_sensitive=False,
        help="How the local model runs: transformers, or llamacpp (a GGUF file; faster on a CPU; "
             "needs an extra, see above).")] = Runtime.transformers,
    retries: Annotated[int, typer.Option(min=0, help="Re-asks after the first attempt.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Token limit per attempt.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every attempt on stderr.")] = False,
    base_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible server instead of a local model (e.g. http://127.0.0.1:8000/v1); "
             "--model then names the server's model (default: its only one).")] = None,
    stream: Annotated[bool, typer.Option(
        "--stream",
        help="Show each field on stderr as soon as the model has written it ('/name = \"Ada\"'); a re-ask "
             "starts over under an 'attempt N' line. The validated JSON still goes to stdout at the end.")] = False,
) -> None:
    """Extract TEXT into JSON valid against --schema with a local model or a server; print the JSON.

    Exits 0 with the JSON on stdout, 1 with every attempt's issues on stderr, 2 on bad input.

    \b
    --runtime llamacpp needs the llamacpp extra:
        pip install 'guardrail-llm[llamacpp]'
    """
    from guardrail.guard import Guard

    if base_url and runtime is not Runtime.transformers:
        raise typer.BadParameter("--runtime chooses how a local model runs; a --base-url server runs its own",
                                 param_hint="'--runtime'")
    try:
        where: dict[str, Any] = (
            {"base_url": base_url, "model": None if model == "embedded" else model} if base_url
            else {"model": model, "engine": engine.value if engine else None, "runtime": runtime.value})
        guard: Guard[Any] = Guard(schema, retries=retries, max_new_tokens=max_new_tokens, temperature=temperature,
                                  **where)
        result = _stream_fields(guard, _read_text(text)) if stream else guard.run(_read_text(text))
    except GuardError as error:
        _print_issues(error)
        raise typer.Exit(1) from None
    except SchemaError as error:
        raise _bad_schema(error) from None
    except (GuardrailError, ValueError) as error:
        fail(str(error))
    if verbose:
        console = stderr_console()
        for number, attempt in enumerate(result.attempts, 1):
            console.print(f"attempt {number}: {attempt.ended}, {attempt.duration_s:.2f} s, "
                          f"{attempt.completion_tokens} tokens")
    typer.echo(json.dumps(result.data, ensure_ascii=False, indent=2))


def _stream_fields(guard: Any, text: str) -> Any:
    """Run ``guard.stream``, showing each leaf field on stderr as it completes; the ``Result``."""
    from guardrail.leaves import resolve

    console = stderr_console()
    result = None
    for event in guard.stream(text):
        if event.kind == "attempt_start" and event.number > 1:
            console.print(Text(f"attempt {event.number}: the previous answer was not valid; its fields are void",
                               style="yellow"))
        elif event.kind == "stream":
            for pointer in event.completed:
                value = resolve(event.value, pointer)
                if not isinstance(value, (dict, list)):
                    console.print(Text.assemble((pointer or "/", "bold"), " = ", json.dumps(value, ensure_ascii=False)))
        elif event.kind == "run_end":
            result = event.result
    return result


@app.command()
def validate(
    output: Annotated[str, typer.Argument(help="A file holding a model's output ('-' reads standard input).")],
    schema: Annotated[str, typer.Option("--schema", "-s", help="A shipped schema name or a path to a .json file.")],
) -> None:
    """Check a model's output against a schema; print the issues located by JSON Pointer.

    Exits 0 with the parsed JSON on stdout, 1 with the issues on stderr, 2 on bad input.
    """
    from guardrail.schema import Schema
    from guardrail.validation import validate as check

    try:
        loaded = Schema.load(schema)
    except SchemaError as error:
        raise _bad_schema(error) from None
    except GuardrailError as error:
        fail(str(error))
    text = sys.stdin.read() if output == "-" else _read_file(output)
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


@app.command("suite-schema")
def suite_schema() -> None:
    """Print the JSON Schema of robustness suite files (for editors: point yaml-language-server at it)."""
    from guardrail.suite import suite_json_schema

    typer.echo(json.dumps(suite_json_schema(), indent=2))
