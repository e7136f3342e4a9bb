"""Robustness suites: tasks (a schema, an instruction, few-shot examples) and their cases.

A suite file is YAML (format 1)::

    version: 1                      # optional; 1 is the only format so far
    name: invoice_contact           # required
    description: ...                # optional
    template: |                     # optional, this is the default; {examples} may be left out
      {instruction}

      {examples}Text: {input}
      JSON:
    example_template: "Text: {input}\\nJSON: {output}\\n\\n"   # optional, the default shown
    tasks:
      - name: invoice               # unique in the suite
        schema: invoice             # a shipped schema name, a path relative to this file
                                    # (".json"), or the JSON Schema itself, inline
        instruction: Extract the invoice ...
        template: ...               # optional, overrides the suite's
        examples:                   # optional few-shot examples
          - input: ...
            output: {...}           # must validate against the schema
        extractive: false           # optional: true when every string answer is copied verbatim
                                    # from the input, or a list of JSON Pointers to the string
                                    # leaves that are (each must name a leaf of the schema that
                                    # holds a string or a list of strings), e.g. [/customer/name]
        shots: 2                    # optional: each prompt shows the k examples nearest to its
                                    # input (1 <= k <= the number of examples); by default every
                                    # example is shown, in file order
        cases:
          - id: inv-001             # unique in the suite
            input: |
              ...
            gold: {...}             # the right output; must validate against the schema
            protect: [ACME-7]       # optional: strings no answer-preserving noise may edit
            note: ...               # optional, for people reading the suite

A suite with a single task may put ``schema``, ``instruction``, ``examples``, ``extractive``,
``shots`` and ``cases`` at the top level instead of under ``tasks`` (the task then takes the
suite's name).

The format is defined by pydantic models (``guardrail.suite_format``: unknown keys are refused)
and ``suite_json_schema()`` publishes it as a JSON Schema for editors. The loader reads YAML
with core-schema scalars only: ``2024-03-01``, ``12:30`` and ``no`` stay strings (plain YAML 1.1
would turn them into a date, 750 and false). Every problem raises ``SuiteError`` naming the
file, the line, the task and the case.

``guardrail.snips`` builds the shipped ``examples/suites/snips.yaml`` from the SNIPS train split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from guardrail.errors import SchemaError, SuiteError
from guardrail.prompting import example_json
from guardrail.schema import Schema
from guardrail.schema_walk import join_pointer, split_pointer, walk
from guardrail.suite_format import (
    SHORTHAND,
    CaseEntry,
    Lines,
    Loc,
    SuiteFile,
    TaskEntry,
    shape_problem,
    suite_json_schema,
)

__all__ = ["DEFAULT_EXAMPLE_TEMPLATE", "DEFAULT_TEMPLATE", "Case", "Example", "Suite", "Task", "load_suite",
           "parse_suite", "suite_json_schema"]

_Model = TypeVar("_Model", bound=BaseModel)

DEFAULT_TEMPLATE = "{instruction}\n\n{examples}Text: {input}\nJSON:"
DEFAULT_EXAMPLE_TEMPLATE = "Text: {input}\nJSON: {output}\n\n"
_SLOT = re.compile(r"\{(instruction|examples|input|output)\}")


@dataclass(frozen=True)
class Example:
    """A few-shot example: an input and the output it should give.

    >>> Example("add Blues to my list", {"playlist": ["Blues"]}).output
    {'playlist': ['Blues']}
    """

    input: str
    output: Any


@dataclass(frozen=True)
class Case:
    """One input to extract from, its gold output, and strings noise must not touch.

    >>> Case("c1", "Call Ana on 555-0100", {"name": "Ana"}).protect
    ()
    """

    id: str
    input: str
    gold: Any
    protect: tuple[str, ...] = ()
    note: str = ""


@dataclass
class Task:
    """A schema, the instruction that asks for it, few-shot examples, and the cases.

    >>> t = Task("greet", Schema.load({"type": "object"}), "Return {}.", cases=[])
    >>> t.render("hello")
    'Return {}.\\n\\nText: hello\\nJSON:'
    """

    name: str
    schema: Schema
    instruction: str
    examples: list[Example] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    template: str = DEFAULT_TEMPLATE
    example_template: str = DEFAULT_EXAMPLE_TEMPLATE
    #: The schema as the file gave it (a name or path), or ``None`` when it was inline.
    schema_ref: str | None = None
    #: Whether answers are copied verbatim from the input: ``True`` for every string field, or the
    #: JSON Pointers of the string leaves that are; ``False`` when the suite does not say.
    extractive: bool | list[str] = False
    #: How many few-shot examples each prompt shows, the nearest to its input; ``None``: all of them.
    shots: int | None = None

    def examples_for(self, input_text: str) -> list[Example]:
        """The few-shot examples a prompt for ``input_text`` shows: all of them in file order, or with
        ``shots`` the ``shots`` nearest to the input, the nearest last (``guardrail.shots``)."""
        if self.shots is None:
            return list(self.examples)
        from guardrail.shots import nearest

        return nearest(self.examples, input_text, self.shots, text=lambda e: e.input)

    def render(self, input_text: str, *, instruction: str | None = None) -> str:
        """The prompt for one input: the template with its slots filled (no ``str.format``, so
        braces in the instruction or input are safe). ``instruction`` replaces the task's own."""
        shots = "".join(
            _fill(self.example_template, {"input": e.input, "output": example_json(e.output, self.schema.json_schema)})
            for e in self.examples_for(input_text)
        )
        slots = {
            "instruction": self.instruction if instruction is None else instruction,
            "examples": shots,
            "input": input_text,
        }
        return _fill(self.template, slots)

    def messages(self, input_text: str, *, instruction: str | None = None) -> list[dict[str, str]]:
        """The same prompt as chat messages: the instruction as system, examples as turns.

        >>> Task("t", Schema.load({"type": "object"}), "Return {}.").messages("hi")[-1]
        {'role': 'user', 'content': 'hi'}
        """
        out = [{"role": "system", "content": self.instruction if instruction is None else instruction}]
        for e in self.examples_for(input_text):
            out += [{"role": "user", "content": e.input},
                    {"role": "assistant", "content": example_json(e.output, self.schema.json_schema)}]
        return [*out, {"role": "user", "content": input_text}]

    def protected_terms(self) -> tuple[str, ...]:
        """Strings noise on the instruction must keep: the schema's property names and enum values.

        >>> Task("t", Schema.load({"properties": {"currency": {"enum": ["EUR", "USD"]}}}), "").protected_terms()
        ('EUR', 'USD', 'currency')
        """
        return tuple(sorted(_schema_terms(self.schema.json_schema)))

    def to_dict(self) -> dict[str, Any]:
        """The task as it would be written in a suite file."""
        out: dict[str, Any] = {
            "name": self.name,
            "schema": self.schema_ref or self.schema.json_schema,
            "instruction": self.instruction,
        }
        if self.template != DEFAULT_TEMPLATE:
            out["template"] = self.template
        if self.example_template != DEFAULT_EXAMPLE_TEMPLATE:
            out["example_template"] = self.example_template
        if self.examples:
            out["examples"] = [{"input": e.input, "output": e.output} for e in self.examples]
        if self.extractive:
            out["extractive"] = self.extractive if isinstance(self.extractive, bool) else list(self.extractive)
        if self.shots is not None:
            out["shots"] = self.shots
        out["cases"] = [_case_dict(c) for c in self.cases]
        return out


@dataclass
class Suite:
    """A named list of tasks; ``len(suite)`` counts the cases.

    >>> s = load_suite("examples/suites/invoice_contact.yaml")
    >>> [t.name for t in s.tasks], len(s) >= 20
    (['invoice', 'contact'], True)
    """

    name: str
    tasks: list[Task]
    description: str = ""
    #: Where the suite was read from, for messages and reports.
    source: str | None = None

    def __len__(self) -> int:
        return sum(len(t.cases) for t in self.tasks)

    def cases(self) -> Iterator[tuple[Task, Case]]:
        """Every case with its task, in file order."""
        for task in self.tasks:
            for case in task.cases:
                yield task, case

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"suite {self.name!r} has no task {name!r}; it has {[t.name for t in self.tasks]}")

    def to_dict(self) -> dict[str, Any]:
        """The suite in the file format (a dict ready for ``yaml.safe_dump`` or JSON)."""
        out: dict[str, Any] = {"version": 1, "name": self.name}
        if self.description:
            out["description"] = self.description
        out["tasks"] = [t.to_dict() for t in self.tasks]
        return out

    def dump(self, path: str | Path, *, header: str = "") -> None:
        """Write the suite as YAML (multi-line strings as ``|`` blocks), with an optional comment header."""
        text = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
        comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
        Path(path).write_text(comment + text, encoding="utf-8")


# -- YAML ---------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML with core-schema scalars: no dates, no sexagesimal numbers, no yes/no booleans."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.startswith((" ", "\n")) and " \n" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and "\n" not in value)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    # Short lists of scalars read best on one line: ``playlist: [Blues]``.
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=all(map(_is_scalar, value)))


def _represent_dict(dumper: yaml.SafeDumper, value: dict[Any, Any]) -> yaml.MappingNode:
    flow = bool(value) and all(map(_is_scalar, value.values())) and len(json.dumps(value, default=str)) < 80
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)

# -- reading suite files ------------------------------------------------------------------------


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every ``SuiteError`` names the file and the line.

    >>> load_suite("examples/suites/snips.yaml").name
    'snips'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read the suite: {exc.strerror or exc}", source=path) from exc
    loader = _Loader(text)  # a SafeLoader
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}", source=path) from exc
    finally:
        loader.dispose()
    return _Reader(str(path), path.parent, Lines(node)).suite(document)


def parse_suite(document: Any, *, source: str = "<suite>", base_dir: str | Path = ".") -> Suite:
    """Build a ``Suite`` from already-parsed data (what ``load_suite`` does after reading YAML).

    >>> parse_suite({"name": "s", "schema": {"type": "object"}, "instruction": "Return {}.",
    ...              "cases": [{"id": "a", "input": "x", "gold": {}}]}).tasks[0].name
    's'
    """
    return _Reader(source, Path(base_dir), None).suite(document)


class _Reader:
    """Checks one suite document: its shape (``guardrail.suite_format``), then what needs the schemas."""

    def __init__(self, source: str, base_dir: Path, lines: Lines | None) -> None:
        self.source, self.base_dir, self.lines = source, base_dir, lines

    def fail(self, message: str, loc: Loc | None = None) -> SuiteError:
        line = self.lines.line(loc) if self.lines is not None and loc is not None else None
        return SuiteError(message, source=self.source, line=line)

    def suite(self, document: Any) -> Suite:
        if not isinstance(document, Mapping):
            raise self.fail(f"a suite must be a mapping with 'name' and 'tasks', got {type(document).__name__}", ())
        stray = [k for k in SHORTHAND if k in document]
        if "tasks" in document and stray:
            raise self.fail(f"{stray} belong inside a task when the suite has 'tasks'", (stray[0],))
        if document.get("version", 1) != 1:
            raise self.fail(f"unknown suite version {document['version']!r}; this guardrail reads version 1",
                            ("version",))
        parsed = self.validate(SuiteFile, document, document)
        entries: list[tuple[TaskEntry, Loc]]
        if parsed.tasks is not None:
            entries = [(entry, ("tasks", i)) for i, entry in enumerate(parsed.tasks)]
        else:
            shorthand = {"name": parsed.name, **{k: document[k] for k in SHORTHAND if k in document}}
            entries = [(self.validate(TaskEntry, shorthand, document), ())]
        defaults = {"template": parsed.template, "example_template": parsed.example_template}
        tasks: list[Task] = []
        seen_cases: dict[str, str] = {}
        for entry, loc in entries:
            task = self.task(entry, loc, defaults)
            if any(t.name == task.name for t in tasks):
                raise self.fail(f"task {task.name!r} appears twice", (*loc, "name"))
            for index, case in enumerate(task.cases):
                if case.id in seen_cases:
                    raise self.fail(f"task {task.name!r}, case {case.id!r}: id already used in task "
                                    f"{seen_cases[case.id]!r}", (*loc, "cases", index, "id"))
                seen_cases[case.id] = task.name
            tasks.append(task)
        return Suite(name=parsed.name, tasks=tasks, description=parsed.description, source=self.source)

    def validate(self, model: type[_Model], data: Any, document: Any) -> _Model:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise self.shape_error(exc, document) from None

    def shape_error(self, exc: ValidationError, document: Any) -> SuiteError:
        message, loc = shape_problem(exc, document)
        return self.fail(message, loc)

    def task(self, entry: TaskEntry, loc: Loc, defaults: Mapping[str, str | None]) -> Task:
        where = f"task {entry.name!r}"
        schema, ref = self.schema(entry.schema_, entry.name, where, (*loc, "schema"))
        template = entry.template or defaults["template"] or DEFAULT_TEMPLATE
        example_template = entry.example_template or defaults["example_template"] or DEFAULT_EXAMPLE_TEMPLATE
        if "{input}" not in template:
            raise self.fail(f"{where}: the template must be a string with an {{input}} slot",
                            (*loc, "template") if entry.template else ("template",))
        examples = []
        for i, ex in enumerate(entry.examples or []):
            self.check_gold(schema, ex.output, f"{where}, example #{i + 1}: the output", (*loc, "examples", i, "output"))
            examples.append(Example(ex.input, ex.output))
        cases = [self.case(c, schema, where, (*loc, "cases", i)) for i, c in enumerate(entry.cases)]
        extractive: bool | list[str] = entry.extractive
        if extractive:
            self.check_extractive(extractive, schema, where, (*loc, "extractive"))
        if entry.shots is not None and entry.shots > len(examples):
            have = f"{len(examples)} example{'' if len(examples) == 1 else 's'}"
            raise self.fail(f"{where}: 'shots' is {entry.shots} but the task has only {have}", (*loc, "shots"))
        return Task(entry.name, schema, entry.instruction, examples, cases, template, example_template, ref,
                    extractive=extractive, shots=entry.shots)

    def case(self, entry: CaseEntry, schema: Schema, task_where: str, loc: Loc) -> Case:
        case_id = str(entry.id)
        where = f"{task_where}, case {case_id!r}"
        self.check_gold(schema, entry.gold, f"{where}: the gold output", (*loc, "gold"))
        protect = entry.protect or []
        missing = [p for p in protect if p not in entry.input]
        if missing:
            raise self.fail(f"{where}: protected strings {missing} do not occur in the input", (*loc, "protect"))
        return Case(case_id, entry.input, entry.gold, tuple(protect), entry.note)

    def schema(self, raw: str | dict[str, Any], task: str, where: str, loc: Loc) -> tuple[Schema, str | None]:
        try:
            if isinstance(raw, Mapping):
                return Schema.load(dict(raw), name=task), None
            beside = self.base_dir / (raw if raw.endswith(".json") else f"{raw}.json")
            if beside.is_file() or raw.endswith(".json") or "/" in raw:
                return Schema.load(beside), raw
            return Schema.load(raw), raw
        except SchemaError as exc:
            raise self.fail(f"{where}: {exc}", loc) from exc

    def check_gold(self, schema: Schema, value: Any, where: str, loc: Loc) -> None:
        errors = sorted(schema.validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            first = errors[0]
            pointer = join_pointer(first.absolute_path) or "/"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise self.fail(f"{where} does not match the schema at {pointer}: {first.message}{more}",
                            (*loc, *first.absolute_path))

    def check_extractive(self, option: bool | list[str], schema: Schema, where: str, loc: Loc) -> None:
        """The fields ``guardrail.extractive`` would hold for ``option``: the same rules as ``Guard``."""
        from guardrail.extractive import chosen_fields

        for index, pointer in enumerate(option if isinstance(option, list) else []):
            try:
                split_pointer(pointer)
            except ValueError as exc:
                raise self.fail(f"{where}: 'extractive': {exc}", (*loc, index)) from None
        try:
            chosen_fields(schema.json_schema, option)
        except ValueError as exc:
            pointer = getattr(exc, "pointer", "")
            spot = option.index(pointer) if isinstance(option, list) and pointer in option else None
            raise self.fail(f"{where}: 'extractive': {exc}", loc if spot is None else (*loc, spot)) from None


def _fill(template: str, slots: Mapping[str, str]) -> str:
    return _SLOT.sub(lambda m: slots.get(m.group(1), m.group(0)), template)


def _case_dict(case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {"id": case.id, "input": case.input, "gold": case.gold}
    if case.protect:
        out["protect"] = list(case.protect)
    if case.note:
        out["note"] = case.note
    return out


def _schema_terms(schema: Any) -> set[str]:
    """Property names and string enum/const values anywhere in a schema."""
    terms: set[str] = set()
    for node in (n.schema for n in walk(schema)):
        if isinstance(node.get("properties"), Mapping):
            terms |= set(map(str, node["properties"]))
        if isinstance(node.get("enum"), list):
            terms |= {v for v in node["enum"] if isinstance(v, str)}
        if isinstance(node.get("const"), str):
            terms.add(node["const"])
    return terms
