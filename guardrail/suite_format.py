"""The suite file format (version 1) as pydantic models, and its errors said plainly, with lines.

``SuiteFile`` (with ``TaskEntry``, ``CaseEntry`` and ``ExampleEntry``) is the shape of a suite
file: unknown keys are refused, types are strict (``shots: true`` is not a number). Checks that
need the task's schema (gold outputs, extractive pointers) are ``guardrail.suite``'s.
``suite_json_schema()`` publishes the format for editors. ``shape_problem`` turns pydantic's
first error into a message naming the task and the case, and ``Lines`` finds the line of any
location in the YAML the document came from (PyYAML nodes carry their marks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from guardrail.schema import DRAFT_2020_12

__all__ = ["SHORTHAND", "CaseEntry", "ExampleEntry", "Lines", "Loc", "SuiteFile", "TaskEntry", "shape_problem",
           "suite_json_schema"]

#: A string with something in it besides whitespace.
Text = Annotated[str, StringConstraints(pattern=r"\S")]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ExampleEntry(_Entry):
    """A few-shot example in a suite file."""

    input: str = Field(description="The example's text.")
    output: Any = Field(description="The output it should give; must validate against the task's schema.")


class CaseEntry(_Entry):
    """A case in a suite file."""

    id: Text | int = Field(description="Unique in the suite.")
    input: Text = Field(description="The text to extract from.")
    gold: Any = Field(description="The right output; must validate against the task's schema.")
    protect: list[Text] | None = Field(None, description="Strings of the input no answer-preserving noise may edit.")
    note: str = Field("", description="For people reading the suite.")


class TaskEntry(_Entry):
    """A task in a suite file: a schema, the instruction that asks for it, examples and cases."""

    name: Text = Field(description="Unique in the suite.")
    description: str | None = Field(None, description="For people reading the suite.")
    schema_: Text | dict[str, Any] = Field(
        alias="schema", description="A shipped schema name, a path relative to the suite file (.json), or the "
                                    "JSON Schema itself, inline.")
    instruction: Text = Field(description="What the model is asked to do.")
    template: str | None = Field(None, description="The prompt template (overrides the suite's); needs {input}.")
    example_template: str | None = Field(None, description="How each few-shot example is written into a prompt.")
    examples: list[ExampleEntry] | None = Field(None, description="Few-shot examples, in the order they are shown.")
    cases: list[CaseEntry] = Field(min_length=1, description="The inputs to extract from, with their gold outputs.")
    extractive: bool | list[str] = Field(
        False, description="Whether answers are copied from the input: true for every string field, or JSON "
                           "Pointers to the string leaves that are.")
    shots: int | None = Field(
        None, ge=1, description="How many few-shot examples each prompt shows: the k nearest to its input; "
                                "default: all of them, in file order.")


def _about(field: str) -> str | None:
    return TaskEntry.model_fields[field].description


#: Task keys a single-task suite may put at the top level (the task then takes the suite's name).
SHORTHAND = ("schema", "instruction", "examples", "cases", "extractive", "shots")


class SuiteFile(_Entry):
    """A suite file (format 1): ``tasks``, or one task's keys at the top level."""

    model_config = ConfigDict(title="guardrail suite", json_schema_extra={
        "description": "A guardrail robustness suite (format 1); see guardrail/suite.py."})

    version: Literal[1] = Field(1, description="The format version; 1 is the only one so far.")
    name: Text = Field(description="The suite's name.")
    description: str = Field("", description="For people reading the suite.")
    template: str | None = Field(None, description="The prompt template of every task; needs {input}.")
    example_template: str | None = Field(None, description="How each few-shot example is written into a prompt.")
    tasks: list[TaskEntry] | None = Field(None, min_length=1, description="The tasks.")
    # A single task's keys at the top level (then there is no "tasks").
    schema_: Text | dict[str, Any] | None = Field(None, alias="schema", description=_about("schema_"))
    instruction: Text | None = Field(None, description=_about("instruction"))
    examples: list[ExampleEntry] | None = Field(None, description=_about("examples"))
    cases: list[CaseEntry] | None = Field(None, min_length=1, description=_about("cases"))
    extractive: bool | list[str] | None = Field(None, description=_about("extractive"))
    shots: int | None = Field(None, ge=1, description=_about("shots"))


def suite_json_schema() -> dict[str, Any]:
    """The suite file format as a JSON Schema, for editors (YAML language servers read it).

    Checks the file can carry beyond its shape (gold outputs against the task's schema, unique
    ids, protected strings present in the input...) are made by ``load_suite``.

    >>> schema = suite_json_schema()
    >>> schema["title"], sorted(schema["$defs"]), schema["additionalProperties"]
    ('guardrail suite', ['CaseEntry', 'ExampleEntry', 'TaskEntry'], False)
    """
    return {"$schema": DRAFT_2020_12, **SuiteFile.model_json_schema(by_alias=True)}


Loc = tuple[str | int, ...]


class Lines:
    """The line of each value in a YAML document, found by the path pydantic reports."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: Loc) -> int | None:
        """The 1-based line of the value at ``loc``; of the deepest existing parent when it is absent
        (a missing key is reported where its mapping starts); of the key for a mapping member."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for step in loc:
            found: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                        found, line = value, key.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                found = node.value[step]
                line = found.start_mark.line + 1
            if found is None:  # absent, or a step pydantic adds (a union member's name)
                break
            node = found
        return line


#: What each key must hold, for messages (the models above say the same to pydantic).
_EXPECTED = {
    "name": "a non-empty string", "description": "a string", "template": "a string",
    "example_template": "a string", "tasks": "a non-empty list", "schema": "a name, a path or a mapping",
    "instruction": "a non-empty string", "examples": "a list of mappings with 'input' and 'output'",
    "cases": "a non-empty list", "extractive": "true, false or a list of JSON Pointers",
    "shots": "a whole number of at least 1", "id": "a non-empty string", "input": "a non-empty string",
    "protect": "a list of non-empty strings", "note": "a string",
}  # fmt: skip
#: What a missing key is for, when saying so helps.
_MISSING = {
    "id": "every case needs one, unique in the suite",
    "gold": "the output the model should give",
    "schema": "a schema name, a path to a .json file, or the schema inline",
}
_ALLOWED: dict[str, type[_Entry]] = {
    "the suite": SuiteFile, "task": TaskEntry, "case": CaseEntry, "example": ExampleEntry,
}


def shape_problem(exc: ValidationError, document: Any) -> tuple[str, Loc]:
    """The first problem pydantic found in ``document``, said the way the rest of guardrail says it
    (naming the task and the case), and where it is."""
    errors = exc.errors(include_url=False)
    # An unknown key first: a misspelled key ("gold_output") is usually why another is missing.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc: Loc = tuple(first["loc"])
    kind, where, rest = _context(loc, document)
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        unknown = sorted(str(e["loc"][-1]) for e in errors
                         if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent)
        model = _ALLOWED[kind]
        allowed = sorted(f.alias or name for name, f in model.model_fields.items())
        return f"{where}: unknown keys {unknown}; allowed: {allowed}", loc
    if not rest:
        return f"{where} must be a mapping, got {_kind_of(first['input'])}", loc
    key = str(rest[0])
    if first["type"] == "missing" and (key in _MISSING or key not in _EXPECTED):
        purpose = f" ({_MISSING[key]})" if key in _MISSING else ""
        return f"{where}: {key!r} is missing{purpose}", loc
    expected = _EXPECTED.get(key)
    if expected is None:
        return f"{where}: {key!r}: {first['msg']}", loc
    got = f", got {_kind_of(first['input'])}" if first["type"].endswith("_type") else ""
    return f"{where}: {key!r} must be {expected}{got}", loc


def _context(loc: Loc, document: Any) -> tuple[str, str, Loc]:
    """What ``loc`` points into (``"the suite"``, ``"task"``, ``"case"`` or ``"example"``), how to
    name it in a message (``"task 'invoice', case 'inv-01'"``), and the rest of ``loc`` inside it."""
    if loc and loc[0] == "tasks" and len(loc) > 1 and isinstance(loc[1], int):
        raw = _at(document, loc[:2])
        name = raw.get("name") if isinstance(raw, Mapping) else None
        where = f"task {name!r}" if isinstance(name, str) and name.strip() else f"task #{loc[1] + 1}"
        base, rest = loc[:2], loc[2:]
    elif loc and loc[0] in SHORTHAND:
        name = document.get("name") if isinstance(document, Mapping) else None
        where, base, rest = f"task {name!r}", (), loc
    else:
        return "the suite", "the suite", loc
    if len(rest) > 1 and rest[0] in ("cases", "examples") and isinstance(rest[1], int):
        if rest[0] == "examples":
            return "example", f"{where}, example #{rest[1] + 1}", rest[2:]
        raw_case = _at(document, (*base, *rest[:2]))
        case_id = raw_case.get("id") if isinstance(raw_case, Mapping) else None
        named = isinstance(case_id, (str, int)) and not isinstance(case_id, bool) and str(case_id).strip()
        return "case", f"{where}, case {str(case_id)!r}" if named else f"{where}, case #{rest[1] + 1}", rest[2:]
    return "task", where, rest


def _at(document: Any, loc: Loc) -> Any:
    for step in loc:
        if isinstance(document, Mapping):
            document = document.get(step)
        elif isinstance(document, list) and isinstance(step, int) and 0 <= step < len(document):
            document = document[step]
        else:
            return None
    return document


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)
