"""The project's promises about itself: public surface, shipped files, README and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

import guardrail
from guardrail import errors
from guardrail.schema import Schema, shipped_schema_names

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands), "each Quickstart command is one line"
    setup_and_main, setup_and_test = commands
    assert "torch==2.13.0" in setup_and_main and "torch==2.13.0" in setup_and_test
    assert setup_and_test.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert setup_and_test in ci


def test_public_names_are_sorted_and_importable() -> None:
    assert guardrail.__all__ == sorted(guardrail.__all__)
    for name in guardrail.__all__:
        assert hasattr(guardrail, name), name


def test_error_tree_is_drawn_in_the_errors_docstring() -> None:
    doc = errors.__doc__ or ""
    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.GuardrailError):
            assert name in doc, f"{name} missing from the tree in guardrail/errors.py"
            assert issubclass(value, errors.GuardrailError)


def test_five_realistic_schemas_ship_and_are_valid() -> None:
    names = shipped_schema_names()
    for expected in ["calendar_event", "contact", "invoice", "product_review", "support_ticket"]:
        assert expected in names
        schema = Schema.load(expected)
        assert schema.json_schema["type"] == "object"
        assert schema.json_schema.get("required"), expected


def test_package_is_typed() -> None:
    assert (Path(guardrail.__file__).parent / "py.typed").is_file()
