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
        cases:
          - id: inv-001             # unique in the suite
            input: |
              ...
            gold: {...}             # the right output; must validate against the schema
            protect: [ACME-7]       # optional: strings no answer-preserving noise may edit
            note: ...               # optional, for people reading the suite

A suite with a single task may put ``schema``, ``instruction``, ``examples`` and ``cases`` at
the top level instead of under ``tasks`` (the task then takes the suite's name).

The loader reads YAML with core-schema scalars only: ``2024-03-01``, ``12:30`` and ``no`` stay
strings (plain YAML 1.1 would turn them into a date, 750 and false). Every problem raises
``SuiteError`` naming the file, the task and the case.

``build_snips_suite`` makes the shipped ``examples/suites/snips.yaml`` from the SNIPS train
split (never the test split); regenerate it with::

    python -m guardrail.suite ../shared/data/snips/derived examples/suites/snips.yaml
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guardrail.errors import SchemaError, SuiteError
from guardrail.perturb import derive_seed
from guardrail.schema import Schema
from guardrail.schema_walk import join_pointer, walk

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

    def render(self, input_text: str, *, instruction: str | None = None) -> str:
        """The prompt for one input: the template with its slots filled (no ``str.format``, so
        braces in the instruction or input are safe). ``instruction`` replaces the task's own."""
        shots = "".join(
            _fill(self.example_template, {"input": e.input, "output": _compact(e.output)}) for e in self.examples
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
        for e in self.examples:
            out += [{"role": "user", "content": e.input}, {"role": "assistant", "content": _compact(e.output)}]
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


# -- reading suite files ------------------------------------------------------------------------


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

_SUITE_KEYS = {
    "version",
    "name",
    "description",
    "template",
    "example_template",
    "tasks",
    "schema",
    "instruction",
    "examples",
    "cases",
}
_TASK_KEYS = {"name", "description", "schema", "instruction", "template", "example_template", "examples", "cases"}
_CASE_KEYS = {"id", "input", "gold", "protect", "note"}


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file.

    >>> load_suite("examples/suites/snips.yaml").name
    'snips'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read the suite: {exc.strerror or exc}", source=path) from exc
    try:
        document = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}", source=path) from exc
    return parse_suite(document, source=str(path), base_dir=path.parent)


def parse_suite(document: Any, *, source: str = "<suite>", base_dir: str | Path = ".") -> Suite:
    """Build a ``Suite`` from already-parsed data (what ``load_suite`` does after reading YAML).

    >>> parse_suite({"name": "s", "schema": {"type": "object"}, "instruction": "Return {}.",
    ...              "cases": [{"id": "a", "input": "x", "gold": {}}]}).tasks[0].name
    's'
    """

    def fail(message: str) -> SuiteError:
        return SuiteError(message, source=source)

    if not isinstance(document, Mapping):
        raise fail(f"a suite must be a mapping with 'name' and 'tasks', got {type(document).__name__}")
    _check_keys(document, _SUITE_KEYS, "the suite", fail)
    if document.get("version", 1) != 1:
        raise fail(f"unknown suite version {document['version']!r}; this guardrail reads version 1")
    name = _text(document, "name", "the suite", fail)
    if "tasks" in document:
        stray = sorted({"schema", "instruction", "examples", "cases"} & set(document))
        if stray:
            raise fail(f"{stray} belong inside a task when the suite has 'tasks'")
        raw_tasks = document["tasks"]
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise fail("'tasks' must be a non-empty list")
    else:
        raw_tasks = [
            {k: document[k] for k in ("schema", "instruction", "examples", "cases") if k in document} | {"name": name}
        ]
    defaults = {k: document[k] for k in ("template", "example_template") if k in document}
    tasks: list[Task] = []
    seen_cases: dict[str, str] = {}
    for index, raw in enumerate(raw_tasks):
        task = _parse_task(raw, index, defaults, Path(base_dir), fail)
        if any(t.name == task.name for t in tasks):
            raise fail(f"task {task.name!r} appears twice")
        for case in task.cases:
            if case.id in seen_cases:
                raise fail(f"task {task.name!r}, case {case.id!r}: id already used in task {seen_cases[case.id]!r}")
            seen_cases[case.id] = task.name
        tasks.append(task)
    description = document.get("description", "")
    if not isinstance(description, str):
        raise fail("'description' must be a string")
    return Suite(name=name, tasks=tasks, description=description, source=source)


def _parse_task(raw: Any, index: int, defaults: Mapping[str, Any], base_dir: Path, fail: Any) -> Task:
    where = f"task #{index + 1}"
    if not isinstance(raw, Mapping):
        raise fail(f"{where} must be a mapping, got {type(raw).__name__}")
    name = _text(raw, "name", where, fail)
    where = f"task {name!r}"
    _check_keys(raw, _TASK_KEYS, where, fail)
    if "schema" not in raw:
        raise fail(f"{where}: 'schema' is missing (a schema name, a path to a .json file, or the schema inline)")
    schema, ref = _resolve_schema(raw["schema"], name, base_dir, where, fail)
    instruction = _text(raw, "instruction", where, fail)
    template = raw.get("template", defaults.get("template", DEFAULT_TEMPLATE))
    example_template = raw.get("example_template", defaults.get("example_template", DEFAULT_EXAMPLE_TEMPLATE))
    if not isinstance(template, str) or "{input}" not in template:
        raise fail(f"{where}: the template must be a string with an {{input}} slot")
    if not isinstance(example_template, str):
        raise fail(f"{where}: 'example_template' must be a string")
    examples = []
    for i, ex in enumerate(raw.get("examples") or []):
        if not isinstance(ex, Mapping) or set(ex) != {"input", "output"} or not isinstance(ex["input"], str):
            raise fail(f"{where}, example #{i + 1}: expected a mapping with a string 'input' and an 'output'")
        _check_gold(schema, ex["output"], f"{where}, example #{i + 1}: the output", fail)
        examples.append(Example(ex["input"], ex["output"]))
    raw_cases = raw.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise fail(f"{where}: 'cases' must be a non-empty list")
    cases = [_parse_case(c, i, schema, where, fail) for i, c in enumerate(raw_cases)]
    return Task(name, schema, instruction, examples, cases, template, example_template, ref)


def _parse_case(raw: Any, index: int, schema: Schema, task_where: str, fail: Any) -> Case:
    if not isinstance(raw, Mapping):
        raise fail(f"{task_where}, case #{index + 1}: must be a mapping, got {type(raw).__name__}")
    case_id = raw.get("id")
    if not isinstance(case_id, (str, int)) or isinstance(case_id, bool) or str(case_id) == "":
        raise fail(f"{task_where}, case #{index + 1}: 'id' is missing or not a string")
    where = f"{task_where}, case {str(case_id)!r}"
    _check_keys(raw, _CASE_KEYS, where, fail)
    text = _text(raw, "input", where, fail)
    if "gold" not in raw:
        raise fail(f"{where}: 'gold' is missing (the output the model should give)")
    _check_gold(schema, raw["gold"], f"{where}: the gold output", fail)
    protect = raw.get("protect") or []
    if not isinstance(protect, list) or not all(isinstance(p, str) and p for p in protect):
        raise fail(f"{where}: 'protect' must be a list of non-empty strings")
    missing = [p for p in protect if p not in text]
    if missing:
        raise fail(f"{where}: protected strings {missing} do not occur in the input")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise fail(f"{where}: 'note' must be a string")
    return Case(str(case_id), text, raw["gold"], tuple(protect), note)


def _resolve_schema(raw: Any, task: str, base_dir: Path, where: str, fail: Any) -> tuple[Schema, str | None]:
    try:
        if isinstance(raw, Mapping):
            return Schema.load(dict(raw), name=task), None
        if not isinstance(raw, str) or not raw:
            raise fail(f"{where}: 'schema' must be a name, a path or a mapping, got {type(raw).__name__}")
        beside = base_dir / (raw if raw.endswith(".json") else f"{raw}.json")
        if beside.is_file() or raw.endswith(".json") or "/" in raw:
            return Schema.load(beside), raw
        return Schema.load(raw), raw
    except SchemaError as exc:
        raise fail(f"{where}: {exc}") from exc


def _check_gold(schema: Schema, value: Any, where: str, fail: Any) -> None:
    errors = sorted(schema.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        pointer = join_pointer(first.absolute_path) or "/"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise fail(f"{where} does not match the schema at {pointer}: {first.message}{more}")


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str, fail: Any) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise fail(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _text(raw: Mapping[str, Any], key: str, where: str, fail: Any) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{where}: {key!r} must be a non-empty string")
    return value


def _fill(template: str, slots: Mapping[str, str]) -> str:
    return _SLOT.sub(lambda m: slots.get(m.group(1), m.group(0)), template)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


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


# -- SNIPS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnipsRow:
    """One SNIPS utterance: its intent, text, gold slot values and their character spans."""

    id: str
    intent: str
    text: str
    slots: dict[str, list[str]]
    spans: list[dict[str, Any]]


def load_snips(directory: str | Path, split: str = "train") -> list[SnipsRow]:
    """Rows of ``snips_<split>.jsonl`` under ``directory`` (the ``derived/`` folder).

    >>> rows = load_snips("../shared/data/snips/derived")  # doctest: +SKIP
    >>> rows[0].intent, rows[0].slots["playlist"]  # doctest: +SKIP
    ('AddToPlaylist', ['música libre'])
    """
    path = Path(directory) / f"snips_{split}.jsonl"
    if not path.is_file():
        raise SuiteError(f"no SNIPS file here (expected {path.name} in {path.parent})", source=path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                rows.append(
                    SnipsRow(
                        str(raw["id"]),
                        raw["intent"],
                        raw["text"],
                        {k: list(v) for k, v in raw["slots"].items()},
                        list(raw.get("spans", [])),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise SuiteError(f"line {number}: not a SNIPS row ({type(exc).__name__}: {exc})", source=path) from exc
    return rows


def snips_schemas(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The JSON Schema of each intent, from ``intent_schemas.json``."""
    path = Path(directory) / "intent_schemas.json"
    try:
        schemas = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteError(f"cannot read the SNIPS intent schemas: {exc}", source=path) from exc
    if not isinstance(schemas, dict):
        raise SuiteError("expected one JSON Schema per intent", source=path)
    return schemas


def _words(camel: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", camel).lower()


def build_snips_suite(
    directory: str | Path,
    *,
    intents: Sequence[str] | None = None,
    cases_per_intent: int = 8,
    shots: int = 3,
    min_slots: int = 2,
    seed: int = 0,
) -> Suite:
    """A suite with one task per SNIPS intent, drawn from the *train* split only.

    Cases are utterances with at least ``min_slots`` slots (so ``info_removed`` can take one
    away and leave others); few-shot examples are other train utterances, never cases. The
    draw is seeded per intent, so adding an intent leaves the others' cases unchanged.

    >>> suite = build_snips_suite("../shared/data/snips/derived")  # doctest: +SKIP
    >>> len(suite), len(suite.tasks)  # doctest: +SKIP
    (56, 7)
    """
    rows = load_snips(directory, "train")
    schemas = snips_schemas(directory)
    tasks = []
    for intent in intents or sorted(schemas):
        if intent not in schemas:
            raise SuiteError(f"unknown intent {intent!r}; known: {sorted(schemas)}", source=directory)
        mine = sorted((r for r in rows if r.intent == intent), key=lambda r: r.id)
        rng = random.Random(derive_seed(seed, "snips", intent))
        pool = [r for r in mine if len(r.slots) >= min_slots]
        if len(pool) < cases_per_intent:
            raise SuiteError(f"{intent}: only {len(pool)} train rows have {min_slots}+ slots", source=directory)
        chosen = rng.sample(pool, cases_per_intent)
        used = {r.id for r in chosen}
        shot_rows = rng.sample([r for r in mine if r.id not in used and r.slots], shots)
        keys = ", ".join(schemas[intent].get("properties", {}))
        instruction = (
            f"Extract the slots of this {_words(intent)} request as a JSON object. Use only these keys: {keys}. "
            "Leave out every slot the request does not mention. Each value is a list of strings copied "
            "exactly from the request."
        )
        tasks.append(
            Task(
                name=intent,
                schema=Schema.load(schemas[intent], name=intent),
                instruction=instruction,
                examples=[Example(r.text, r.slots) for r in shot_rows],
                cases=[Case(r.id, r.text, r.slots) for r in chosen],
            )
        )
    return Suite(
        name="snips",
        tasks=tasks,
        description=(
            "Slot filling on SNIPS (Coucke et al. 2018, arXiv:1805.10190; CC0), one task per intent. "
            "Cases and few-shot examples come from the train split only."
        ),
    )


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m guardrail.suite SNIPS_DERIVED_DIR OUT.yaml", file=sys.stderr)
        return 2
    suite = build_snips_suite(argv[0])
    suite.dump(
        argv[1],
        header=(
            "Generated by guardrail.suite.build_snips_suite from snips_train.jsonl; do not edit by hand.\n"
            "Regenerate: python -m guardrail.suite ../shared/data/snips/derived examples/suites/snips.yaml\n"
            "Data: SNIPS NLU benchmark (sonos/nlu-benchmark), CC0; cite Coucke et al. 2018, arXiv:1805.10190."
        ),
    )
    print(f"wrote {argv[1]}: {len(suite)} cases in {len(suite.tasks)} tasks")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
