"""The project's promises about itself: public surface, shipped files, README and CI agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import guardrail
from guardrail import errors
from guardrail.schema import Schema, shipped_schema_names

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: An install command for one of our extras, as the package prints it: pip install 'NAME[extra]'.
INSTALL_HINT = re.compile(r"pip install '([A-Za-z0-9._-]+)\[")


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


def test_the_distribution_name_is_not_the_unrelated_guardrail_on_pypi() -> None:
    assert PYPROJECT["project"]["name"] == "guardrail-llm"


def test_every_install_hint_names_the_distribution() -> None:
    name = PYPROJECT["project"]["name"]
    places = [*sorted((ROOT / "guardrail").rglob("*.py")), ROOT / "README.md", ROOT / "pyproject.toml"]
    wrong = []
    for path in places:
        text = path.read_text(encoding="utf-8")
        wrong += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in INSTALL_HINT.finditer(text) if m.group(1) != name]
    assert not wrong, wrong
    assert f"pip install '{name}[llamacpp]'" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_version_is_written_once_in_the_package() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    source = PYPROJECT["tool"]["hatch"]["version"]["path"]
    assert (ROOT / source).resolve() == Path(guardrail.__file__).resolve()
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", guardrail.__version__)


def test_license_file_matches_the_declared_license() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "guardrail developers" in text
    assert "LICENSE" in PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]


def test_metadata_has_classifiers_and_project_urls() -> None:
    project = PYPROJECT["project"]
    classifiers = project["classifiers"]
    assert len(classifiers) >= 8 and classifiers == sorted(classifiers)
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3 :: Only" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "the SPDX license field replaces these"
    assert project["urls"] and all(url.startswith("https://") for url in project["urls"].values())


def test_readme_says_how_to_get_the_cpu_build_of_torch() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
