"""The command line's conventions: exit codes, short errors without tracebacks, literal text, choices, completion.

Every command runs in-process through typer's CliRunner (stderr is then not a terminal, as when
piped); ``python -m guardrail`` runs as a subprocess. No test loads a model: the ones that reach
generation swap in a plain function as the LLM.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import guardrail
from guardrail._cli_common import Engine, Runtime, Strategy, Structured
from guardrail.cli import app

ROOT = Path(__file__).resolve().parents[1]
# The module, not the ``guard`` decorator that ``guardrail`` re-exports under the same name.
guard_module = importlib.import_module("guardrail.guard")
CONTACT = {"name": "Ada", "email": "ada@example.com", "phone": None, "company": None}
SUITE = {
    "name": "people",
    "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False},
    "instruction": "Extract the name as JSON.",
    "cases": [{"id": "p1", "input": "Ana Souza lives in Lisbon", "gold": {"name": "Ana Souza"}}],
}


def invoke(*args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="guardrail", **kwargs)


def assert_user_error(result: Result, *expected: str) -> None:
    """Exit 2, one or two lines on stderr that start with ``error:`` and hold ``expected``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


@pytest.fixture()
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "people.yaml"
    path.write_text(json.dumps(SUITE), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture()
def echo_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``module:function`` of an LLM that answers the first two words of the prompt's text."""
    (tmp_path / "cli_echo_llm.py").write_text(
        "import json\n"
        "def llm(prompt):\n"
        "    text = prompt.split('Text: ', 1)[1].split('\\nJSON:', 1)[0]\n"
        "    return json.dumps({'name': ' '.join(text.split()[:2])})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_echo_llm:llm"


# -- version, python -m, help --------------------------------------------------------------------


def test_python_m_guardrail_prints_the_version() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "guardrail", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"guardrail {guardrail.__version__}\n"


def test_python_m_guardrail_without_arguments_shows_the_commands() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "guardrail"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # click's code for "no command given"
    for command in ("generate", "validate", "schemas", "report"):
        assert command in done.stderr


def test_fixed_choices_are_enums_listed_in_help() -> None:
    generate, report = invoke("generate", "--help"), invoke("report", "--help")
    assert generate.exit_code == report.exit_code == 0
    for enum, help_text in ((Engine, generate.stdout), (Runtime, generate.stdout), (Runtime, report.stdout),
                            (Strategy, report.stdout), (Structured, report.stdout)):
        assert "|".join(e.value for e in enum) in help_text, enum


def test_choices_match_what_the_library_accepts() -> None:
    from guardrail.backends import RUNTIMES
    from guardrail.backends.local import ENGINES
    from guardrail.backends.remote import STRUCTURED_MODES
    from guardrail.guard import STRATEGIES

    assert [e.value for e in Engine] == list(ENGINES)
    assert [e.value for e in Runtime] == list(RUNTIMES)
    assert [e.value for e in Strategy] == list(STRATEGIES)
    assert [e.value for e in Structured] == list(STRUCTURED_MODES)


@pytest.mark.parametrize("command", ["generate", "report"])
def test_help_prints_bracketed_install_hints_literally(command: str) -> None:
    shown = invoke(command, "--help")
    assert shown.exit_code == 0
    assert "pip install 'guardrail-llm[llamacpp]'" in shown.stdout


def test_shell_completion_is_installable_and_completes_commands_and_choices() -> None:
    assert "--install-completion" in invoke("--help").stdout

    def complete(words: str) -> list[str]:
        env = {"_GUARDRAIL_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        done = invoke(env=env)
        assert done.exit_code == 0, done.output
        return done.stdout.split()

    assert complete("guardrail rep") == ["report"]
    assert complete("guardrail report --strategy ") == ["greedy", "sample", "vote"]


# -- validate --------------------------------------------------------------------------------------


def test_validate_a_missing_file_is_a_short_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "out.json"
    assert_user_error(invoke("validate", str(missing), "--schema", "contact"), str(missing), "does not exist")


def test_validate_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_bytes(b"\xff\xfe{}")
    assert_user_error(invoke("validate", str(path), "--schema", "contact"), str(path), "not UTF-8")


@pytest.mark.parametrize("schema", ["[/x]", "[bold]x", "nosuch"])
def test_validate_an_unknown_schema_names_the_option_and_shows_the_name_as_typed(tmp_path: Path, schema: str) -> None:
    output = tmp_path / "out.json"
    output.write_text("{}")
    assert_user_error(invoke("validate", str(output), "--schema", schema), "'--schema'", f"'{schema}'")


def test_validate_a_schema_path_holding_markup_is_shown_literally(tmp_path: Path) -> None:
    folder = tmp_path / "["
    folder.mkdir()
    schema = folder / "bold]broken.json"
    schema.write_text("{not json")
    output = tmp_path / "out.json"
    output.write_text("{}")
    path = f"{tmp_path}/[/bold]broken.json"
    assert Path(path) == schema
    assert_user_error(invoke("validate", str(output), "--schema", path), path)


def test_validate_exits_1_on_invalid_output_and_0_on_valid(tmp_path: Path) -> None:
    invalid, valid = tmp_path / "[red]bad.json", tmp_path / "good.json"
    invalid.write_text('{"name": 3}')
    valid.write_text(json.dumps(CONTACT))
    bad = invoke("validate", str(invalid), "--schema", "contact")
    assert bad.exit_code == 1 and "/name" in bad.stderr and "Traceback" not in bad.output
    good = invoke("validate", str(valid), "--schema", "contact")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["name"] == "Ada"
    piped = invoke("validate", "-", "--schema", "contact", input=json.dumps(CONTACT))
    assert piped.exit_code == 0, piped.output


def test_errors_are_not_hard_wrapped_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    long_name = "x" * 150
    output = tmp_path / "out.json"
    output.write_text("{}")
    result = invoke("validate", str(output), "--schema", long_name)
    assert_user_error(result)
    assert long_name in result.stderr.splitlines()[0]


# -- generate --------------------------------------------------------------------------------------


class _FunctionGuard(guard_module.Guard[Any]):
    """``Guard`` with a plain function as the LLM, whatever model the command line names."""

    answer = ""

    def __init__(self, schema: Any, **options: Any) -> None:
        for key in ("model", "engine", "runtime", "base_url"):
            options.pop(key, None)
        super().__init__(schema, llm=lambda prompt: self.answer, **options)


def test_generate_prints_json_or_every_attempt_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "Guard", _FunctionGuard)
    monkeypatch.setattr(_FunctionGuard, "answer", json.dumps(CONTACT))
    good = invoke("generate", "Ada, ada@example.com", "--schema", "contact")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["email"] == "ada@example.com"

    monkeypatch.setattr(_FunctionGuard, "answer", "[/bold] not [red]json")
    bad = invoke("generate", "Ada", "--schema", "contact", "--retries", "1")
    assert bad.exit_code == 1, bad.output
    assert "Traceback" not in bad.output
    assert bad.stderr.count("output: '[/bold] not [red]json'") == 2


def test_generate_stream_shows_each_field_as_it_lands_and_prints_the_json() -> None:
    from fault_proxy import FaultProxy, chunk, sse

    def streamed(text: str) -> Any:
        pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
        return sse(*(chunk(p) for p in pieces), chunk(finish_reason="stop"))

    invalid = '{"name": "[b]Ada[/b]", "email": 7}'
    with FaultProxy(faults=[streamed(invalid), streamed(json.dumps(CONTACT))]) as proxy:
        result = invoke("generate", "Ada, ada@example.com", "--schema", "contact", "--stream",
                        "--base-url", proxy.url + "/v1", "--model", "canned")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == CONTACT, "stdout holds the validated JSON only"
    assert result.stderr.splitlines() == [
        '/name = "[b]Ada[/b]"', "/email = 7",
        "attempt 2: the previous answer was not valid; its fields are void",
        '/name = "Ada"', '/email = "ada@example.com"', "/phone = null", "/company = null"]


def test_generate_help_lists_stream() -> None:
    result = invoke("generate", "--help")
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0 and "--stream Show each field on stderr as soon as the model has written it" in text


def test_generate_bad_choices_and_values_name_their_option() -> None:
    assert_user_error(invoke("generate", "x", "--schema", "contact", "--engine", "nope"), "'--engine'", "nope")
    assert_user_error(invoke("generate", "x", "--schema", "[/x]"), "'--schema'", "'[/x]'")
    assert_user_error(invoke("generate", "x", "--schema", "contact", "--retries", "-1"), "'--retries'")
    assert_user_error(invoke("generate", "x", "--schema", "contact", "--base-url", "http://127.0.0.1:9/v1",
                             "--runtime", "llamacpp"), "'--runtime'")


# -- report ----------------------------------------------------------------------------------------


def assert_no_progress_bar(result: Result) -> None:
    assert "━" not in result.output and "0/?" not in result.output and "ETA" not in result.output


def test_report_a_missing_suite_is_one_error_and_no_progress_bar(tmp_path: Path) -> None:
    missing = tmp_path / "[red]suite.yaml"
    result = invoke("report", str(missing), "--out", str(tmp_path / "out"))
    assert_user_error(result, str(missing), "does not exist")
    assert_no_progress_bar(result)
    assert "[red]" in result.stderr and "[/red]" not in result.stderr


def test_report_an_unreadable_suite_is_one_error_and_no_progress_bar(tmp_path: Path) -> None:
    broken, binary = tmp_path / "broken.yaml", tmp_path / "binary.yaml"
    broken.write_text("name: [unclosed\n")
    binary.write_bytes(b"\xff\xfe\x00")
    for path, says in ((broken, "not valid YAML"), (binary, "not UTF-8")):
        result = invoke("report", str(path), "--out", str(tmp_path / "out"))
        assert_user_error(result, str(path), says)
        assert_no_progress_bar(result)
    assert not (tmp_path / "out").exists(), "nothing is written for a suite that cannot be read"


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--severity", "abc", "comma-separated numbers"),
    ("--severity", "2", "[0, 1]"),
    ("--perturb", "sunspots", "sunspots"),
    ("--strategy", "bogus", "greedy"),
    ("--structured", "xml", "json_schema"),
    ("--runtime", "onnx", "llamacpp"),
    ("--temperature", "0.5", "greedy"),
    ("--llm", "no_colon", "module:function"),
])
def test_report_bad_option_values_name_the_option(suite_file: Path, tmp_path: Path, option: str, value: str,
                                                   says: str) -> None:
    result = invoke("report", str(suite_file), option, value, "--out", str(tmp_path / "out"))
    assert_user_error(result, f"'{option}'", says)
    assert_no_progress_bar(result)


def test_report_out_that_is_a_file_names_the_option(suite_file: Path) -> None:
    assert_user_error(invoke("report", str(suite_file), "--out", str(suite_file)), "'--out'", str(suite_file))


def test_report_choices_keep_accepting_any_case(suite_file: Path, tmp_path: Path, echo_llm: str) -> None:
    result = invoke("report", str(suite_file), "--llm", echo_llm, "--perturb", "case", "--severity", "0.5",
                    "--strategy", "GREEDY", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output


def test_report_prints_paths_holding_markup_literally(suite_file: Path, tmp_path: Path, echo_llm: str) -> None:
    out = tmp_path / "[bold]out[/bold]"
    result = invoke("report", str(suite_file), "--llm", echo_llm, "--perturb", "case", "--severity", "0.5",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"report in {out / 'report.html'}" in result.stderr
    assert (out / "report.html").is_file()


def test_report_an_error_after_the_bar_appeared_erases_it(suite_file: Path, tmp_path: Path) -> None:
    # The model is loaded after the run is planned (so a fully resumed run never loads it): the bar has started.
    result = invoke("report", str(suite_file), "--model", str(tmp_path / "missing.gguf"), "--runtime", "llamacpp",
                    "--perturb", "case", "--severity", "0.5", "--out", str(tmp_path / "out"))
    assert_user_error(result)
    assert_no_progress_bar(result)


def test_the_progress_bar_draws_nothing_until_the_first_report_and_nothing_when_erased(
        capsys: pytest.CaptureFixture[str]) -> None:
    from guardrail.report.cli import _Bar

    unused = _Bar()
    unused.close()
    erased = _Bar()
    erased(2, 5, "constrained · [red]people")
    erased.close(erase=True)
    erased.close()
    assert capsys.readouterr().err == ""
    kept = _Bar()
    kept(2, 5, "constrained · [red]people")
    kept(5, 5, "constrained · [red]people")
    kept.close()
    assert "constrained · [red]people" in capsys.readouterr().err


def test_suite_schema_prints_the_suite_format_for_editors() -> None:
    import jsonschema

    done = CliRunner().invoke(app, ["suite-schema"])
    assert done.exit_code == 0
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "tasks" in json.dumps(schema)
