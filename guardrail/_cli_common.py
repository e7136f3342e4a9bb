"""What the ``guardrail`` commands share: the fixed choices of options, error lines, the stderr console.

Conventions every command follows (``guardrail/cli.py``, ``guardrail/report/cli.py``):

* nothing a user typed (a path, a schema name, a model's output) is ever read as rich markup:
  the console is built with ``markup=False`` and colour comes from ``rich.text.Text`` styles;
* stderr is hard-wrapped only on a terminal, so a piped or logged message stays one line;
* a user error is ``error: <what, where>`` plus at most one hint line, exit code 2, no
  traceback (``ExitCodeGroup`` does this for typer's own usage errors too).

>>> Strategy("vote") is Strategy.vote, [r.value for r in Runtime]
(True, ['transformers', 'llamacpp'])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

#: Exit code of every user error (bad option, missing file, unknown schema...), as click uses.
EXIT_USAGE = 2
#: Exit code of a run stopped by Ctrl-C, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130


class Engine(StrEnum):
    """``--engine``: the constrained-decoding engine of a local model (``ENGINES`` in the local backend)."""

    llguidance = "llguidance"
    xgrammar = "xgrammar"
    outlines_core = "outlines_core"


class Runtime(StrEnum):
    """``--runtime``: how a local model runs (``guardrail.backends.RUNTIMES``)."""

    transformers = "transformers"
    llamacpp = "llamacpp"


class Strategy(StrEnum):
    """``--strategy``: the decoding strategy (``guardrail.guard.STRATEGIES``)."""

    greedy = "greedy"
    sample = "sample"
    vote = "vote"


class Structured(StrEnum):
    """``--structured``: how a server gets the schema (``guardrail.backends.remote.STRUCTURED_MODES``)."""

    auto = "auto"
    json_schema = "json_schema"
    json_object = "json_object"
    vllm = "vllm"
    guided_json = "guided_json"
    prompt = "prompt"


def stderr_console() -> Console:
    """A console on the current ``sys.stderr`` that never parses markup and wraps only on a terminal."""
    console = Console(stderr=True, markup=False, highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def print_error(message: str, hint: str | None = None) -> None:
    """``error: message`` on stderr (the prefix red on a terminal), then ``hint`` on a line of its own."""
    console = stderr_console()
    console.print(Text.assemble(("error:", "bold red"), " ", message))
    if hint:
        console.print(hint)


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Print a user error and exit with code 2."""
    print_error(message, hint)
    raise typer.Exit(EXIT_USAGE)


def warn(message: str, detail: str = "") -> None:
    """A yellow ``message`` and a plain ``detail`` on stderr."""
    stderr_console().print(Text.assemble((message, "yellow"), detail))


# typer >= 0.26 vendors its own copy of click, older releases use click itself: take the classes
# from the exception typer exports, so the same code catches whichever click raised.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


class ExitCodeGroup(TyperGroup):
    """A typer group whose usage errors are two plain lines on stderr instead of a boxed panel.

    Typer's own rendering draws a box hard-wrapped at 80 columns and starts with the usage
    line; here the error comes first (``error: Invalid value for '--severity': ...``), then
    ``Try '... --help' for help.``, with the exit code click chose (2 for usage errors).
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        forwarded = {"windows_expand_args": windows_expand_args, **extra}
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **forwarded)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **forwarded)
        except _CLICK_ERRORS as exc:
            _show_click_error(exc)
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        except typer.Abort:
            print_error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        # Not standalone, typer returns a command's return value (None here) or an Exit's code.
        sys.exit(code if isinstance(code, int) else 0)


def _show_click_error(exc: Exception) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # `guardrail` alone: the help, as before
        exc.show()  # type: ignore[attr-defined]
        return
    ctx = getattr(exc, "ctx", None)
    hint = f"Try '{ctx.command_path} --help' for help." if ctx is not None else None
    print_error(exc.format_message(), hint)  # type: ignore[attr-defined]
