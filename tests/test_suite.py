"""Suite files: the shipped suites, the loader's error messages, rendering, and the SNIPS builder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.errors import SuiteError
from guardrail.perturb import gold_values
from guardrail.schema import Schema
from guardrail.snips import build_snips_suite, load_snips
from guardrail.suite import (
    Case,
    Example,
    Suite,
    Task,
    load_suite,
    parse_suite,
    suite_json_schema,
)

SUITES = Path(__file__).resolve().parents[1] / "examples" / "suites"


def test_the_shipped_snips_suite_loads_and_is_built_from_train_only() -> None:
    suite = load_suite(SUITES / "snips.yaml")
    assert suite.name == "snips" and len(suite) >= 50 and len(suite.tasks) == 7
    for task in suite.tasks:
        assert 8 <= len(task.cases) <= 10 and len(task.examples) == 40 and task.shots == 3 and task.extractive is True
        case_texts = {c.input for c in task.cases}
        assert not any(e.input in case_texts for e in task.examples)  # few-shot rows are not cases
        for case in task.cases:
            assert "-train-" in case.id and len(case.gold) >= 2
            assert all(v in case.input for v in gold_values(case.gold))
            assert set(case.gold) <= set(task.schema.json_schema["properties"])


def test_the_shipped_invoice_contact_suite_loads() -> None:
    suite = load_suite(SUITES / "invoice_contact.yaml")
    assert [t.name for t in suite.tasks] == ["invoice", "contact"] and len(suite) >= 20
    assert suite.task("invoice").schema.json_schema["title"] == "Invoice"
    assert suite.task("invoice").schema_ref == "invoice"
    nulls = [c for c in suite.task("contact").cases if c.gold["phone"] is None or c.gold["company"] is None]
    assert len(nulls) >= 3  # cases where the right answer is "not given"
    for _, case in suite.cases():
        assert case.note, case.id


def test_snips_file_matches_its_generator(shared_data: Path) -> None:
    built = build_snips_suite(shared_data / "snips" / "derived")
    assert built.to_dict() == load_suite(SUITES / "snips.yaml").to_dict(), (
        "examples/suites/snips.yaml is stale: python -m guardrail.snips ../shared/data/snips/derived "
        "examples/suites/snips.yaml"
    )


def test_snips_loader_reads_rows_and_never_touches_test(shared_data: Path) -> None:
    derived = shared_data / "snips" / "derived"
    rows = load_snips(derived)
    assert len(rows) == 2100 and rows[0].intent == "AddToPlaylist"
    assert all(v in rows[0].text for vs in rows[0].slots.values() for v in vs)
    test_ids = {r.id for r in load_snips(derived, "test")}
    suite = build_snips_suite(derived, intents=["GetWeather", "RateBook"], cases_per_intent=9, examples_per_intent=5,
                              shots=2)
    assert len(suite) == 18 and [len(t.examples) for t in suite.tasks] == [5, 5]
    assert [t.shots for t in suite.tasks] == [2, 2] and all(t.extractive is True for t in suite.tasks)
    assert not {c.id for _, c in suite.cases()} & test_ids
    with pytest.raises(SuiteError, match="unknown intent 'Nope'"):
        build_snips_suite(derived, intents=["Nope"])


def test_snips_loader_names_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / "snips_train.jsonl").write_text('{"id": "x", "intent": "A", "text": "t", "slots": {}}\n{oops\n')
    with pytest.raises(SuiteError, match=r"snips_train\.jsonl: line 2: not a SNIPS row"):
        load_snips(tmp_path)
    with pytest.raises(SuiteError, match=r"expected snips_test\.jsonl"):
        load_snips(tmp_path, "test")


# -- the loader's errors -------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tier": {"enum": ["gold", "free"]}},
    "required": ["name"],
    "additionalProperties": False,
}


def good() -> dict[str, Any]:
    return {
        "name": "people",
        "tasks": [
            {
                "name": "person",
                "schema": SCHEMA,
                "instruction": "Return the name.",
                "examples": [{"input": "I am Bo", "output": {"name": "Bo"}}],
                "cases": [
                    {"id": "p1", "input": "Ana here", "gold": {"name": "Ana"}},
                    {
                        "id": "p2",
                        "input": "Cy here, tier gold",
                        "gold": {"name": "Cy", "tier": "gold"},
                        "protect": ["tier gold"],
                    },
                ],
            }
        ],
    }


def write(tmp_path: Path, document: Any, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def broken(change: Any) -> dict[str, Any]:
    document = good()
    change(document)
    return document


def case(document: dict[str, Any], index: int) -> dict[str, Any]:
    return document["tasks"][0]["cases"][index]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: case(d, 1).update(gold={"name": 3}),
            r"task 'person', case 'p2': the gold output does not match the schema at /name: 3 is not of type 'string'",
        ),
        (lambda d: case(d, 1).pop("gold"), r"case 'p2': 'gold' is missing"),
        (lambda d: case(d, 1).update(id="p1"), r"case 'p1': id already used in task 'person'"),
        (lambda d: case(d, 0).update(gold_output={}), r"case 'p1': unknown keys \['gold_output'\]"),
        (lambda d: case(d, 0).update(input=""), r"case 'p1': 'input' must be a non-empty string"),
        (lambda d: case(d, 0).update(protect=["absent"]), r"case 'p1': protected strings \['absent'\] do not occur"),
        (lambda d: case(d, 0).pop("id"), r"task 'person', case #1: 'id' is missing"),
        (
            lambda d: d["tasks"][0].update(template="no slot"),
            r"task 'person': the template must be a string with an \{input\}",
        ),
        (
            lambda d: d["tasks"][0].update(schema="no_such_schema"),
            r"task 'person': .*no schema named 'no_such_schema'.*contact, invoice",
        ),
        (lambda d: d["tasks"][0].update(schema={"type": 12}), r"task 'person': invalid schema"),
        (lambda d: d["tasks"][0]["examples"][0].update(output={"name": 1}), r"example #1: the output does not match"),
        (lambda d: d["tasks"][0].update(cases=[]), r"task 'person': 'cases' must be a non-empty list"),
        (
            lambda d: d["tasks"].append(dict(d["tasks"][0], cases=[{"id": "z", "input": "x", "gold": {"name": "x"}}])),
            r"task 'person' appears twice",
        ),
        (lambda d: d.update(version=2), r"unknown suite version 2"),
        (lambda d: d.update(cases=[]), r"\['cases'\] belong inside a task"),
        (lambda d: d.pop("name"), r"the suite: 'name' must be a non-empty string"),
    ],
)
def test_bad_suites_say_which_file_and_case(tmp_path: Path, change: Any, message: str) -> None:
    path = write(tmp_path, broken(change))
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(path)
    assert str(info.value).startswith(str(path))


def test_an_unknown_key_names_the_task_the_case_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, broken(lambda d: case(d, 1).update(gold_output={"name": "Cy"})))
    lines = path.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "gold_output" in text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    # The misspelled key is reported, not the "gold" it leaves missing.
    assert str(info.value) == (
        f"{path}, line {line}: task 'person', case 'p2': unknown keys ['gold_output']; "
        "allowed: ['gold', 'id', 'input', 'note', 'protect']"
    )
    assert info.value.line == line and info.value.source == str(path)


def test_lines_point_at_the_offending_value(tmp_path: Path) -> None:
    path = write(tmp_path, textwrap.dedent("""\
        name: people
        tasks:
          - name: person
            schema: {type: object, properties: {tags: {type: array, items: {type: string}}}}
            instruction: Tags?
            cases:
              - id: c1
                input: a b
                gold:
                  tags:
                    - a
                    - 7
              - id: c2
                input: x
                gold: {}
        """))
    with pytest.raises(SuiteError, match=r", line 12: task 'person', case 'c1': the gold output does not match the "
                                         r"schema at /tags/1: 7 is not of type 'string'"):
        load_suite(path)
    path.write_text(path.read_text().replace("- 7", "- b").replace("        gold: {}\n", ""))
    with pytest.raises(SuiteError, match=r", line 13: task 'person', case 'c2': 'gold' is missing"):
        load_suite(path)  # a missing key: the line where its mapping starts


def test_extractive_and_shots_are_checked_kept_and_written_back(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
        "age": {"type": "integer"}, "who": {"$ref": "#/$defs/who"}},
        "$defs": {"who": {"type": "object", "properties": {"first": {"type": ["string", "null"]}}}}}
    document = {"name": "s", "schema": schema, "instruction": "Go.", "extractive": ["/name", "/tags", "/who/first"],
                "shots": 2, "examples": [{"input": "a", "output": {}}, {"input": "b", "output": {}}],
                "cases": [{"id": "c", "input": "x", "gold": {}}]}
    task = parse_suite(document).tasks[0]
    assert task.extractive == ["/name", "/tags", "/who/first"] and task.shots == 2
    again = load_suite(write(tmp_path, parse_suite(document).to_dict())).tasks[0]
    assert (again.extractive, again.shots) == (task.extractive, task.shots)
    plain = parse_suite({**document, "extractive": True, "shots": None}).tasks[0]
    assert plain.extractive is True and plain.shots is None and "shots" not in plain.to_dict()
    default = parse_suite({k: v for k, v in document.items() if k not in ("extractive", "shots")}).tasks[0]
    assert default.extractive is False and default.shots is None and "extractive" not in default.to_dict()

    for change, message in [
        ({"extractive": ["/age"]}, r"'extractive': '/age' holds no free text to copy from the input"),
        ({"extractive": ["/who"]}, r"'extractive': '/who' is not a field of the schema \(its fields: "
                                   r"/name, /tags, /age, /who/first\)"),
        ({"extractive": ["name"]}, r"'extractive': 'name' is not a JSON Pointer"),
        ({"extractive": "yes"}, r"'extractive' must be true, false or a list of JSON Pointers"),
        ({"shots": 3}, r"task 's': 'shots' is 3 but the task has only 2 examples"),
        ({"shots": 0}, r"'shots' must be a whole number of at least 1"),
        ({"shots": True}, r"'shots' must be a whole number of at least 1, got a boolean"),
    ]:
        with pytest.raises(SuiteError, match=message):
            parse_suite({**document, **change})


def test_the_published_json_schema_accepts_the_shipped_suites_and_refuses_unknown_keys() -> None:
    import jsonschema

    schema = suite_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in ("snips.yaml", "invoice_contact.yaml"):
        jsonschema.validate(yaml.safe_load((SUITES / name).read_text(encoding="utf-8")), schema)
    with pytest.raises(jsonschema.ValidationError, match="'gold_output' was unexpected"):
        jsonschema.validate(broken(lambda d: case(d, 0).update(gold_output={})), schema)
    assert json.loads(json.dumps(schema)) == schema


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read the suite"):
        load_suite(tmp_path / "missing.yaml")
    with pytest.raises(SuiteError, match=r"not valid YAML at line 3, column \d+"):
        load_suite(write(tmp_path, "name: x\ntasks: [\n  - {a: 1\n"))
    with pytest.raises(SuiteError, match="a suite must be a mapping"):
        load_suite(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_scalars_stay_what_they_look_like(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        textwrap.dedent("""\
        name: scalars
        schema: {type: object}
        instruction: Copy.
        cases:
          - id: c1
            input: "due 2024-03-01 at 12:30, answer no"
            gold: {date: 2024-03-01, time: 12:30, answer: no, n: 3, x: 1.5, ok: true, none: null}
        """),
    )
    gold = load_suite(path).tasks[0].cases[0].gold
    assert gold == {"date": "2024-03-01", "time": "12:30", "answer": "no", "n": 3, "x": 1.5, "ok": True, "none": None}


def test_single_task_shorthand_and_schema_files_beside_the_suite(tmp_path: Path) -> None:
    (tmp_path / "person.json").write_text(json.dumps(SCHEMA))
    path = write(
        tmp_path,
        {
            "name": "solo",
            "schema": "person.json",
            "instruction": "Name?",
            "cases": [{"id": "a", "input": "Ana", "gold": {"name": "Ana"}}],
        },
    )
    suite = load_suite(path)
    assert [t.name for t in suite.tasks] == ["solo"] and suite.tasks[0].schema_ref == "person.json"
    assert suite.tasks[0].schema.json_schema == SCHEMA
    # A bare name is looked up beside the suite first, then among the shipped schemas.
    path = write(
        tmp_path,
        {
            "name": "solo",
            "schema": "person",
            "instruction": "Name?",
            "cases": [{"id": "a", "input": "Ana", "gold": {"name": "Ana"}}],
        },
    )
    assert load_suite(path).tasks[0].schema.json_schema == SCHEMA


def test_parse_suite_takes_parsed_data_and_names_its_source() -> None:
    suite = parse_suite(good(), source="<memory>")
    assert suite.source == "<memory>" and [c.id for _, c in suite.cases()] == ["p1", "p2"]
    assert suite.task("person").cases[1].protect == ("tier gold",)
    with pytest.raises(KeyError, match="no task 'x'"):
        suite.task("x")
    with pytest.raises(SuiteError, match=r"^<memory>: task 'person', case 'p1': 'gold' is missing"):
        parse_suite(broken(lambda d: case(d, 0).pop("gold")), source="<memory>")


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, good()))
    out = tmp_path / "again.yaml"
    suite.dump(out, header="made by a test")
    assert out.read_text().startswith("# made by a test\n")
    again = load_suite(out)
    assert again.to_dict() == suite.to_dict()
    multi = Suite("m", [Task("t", Schema.load({"type": "object"}), "Go.", cases=[Case("c", "line 1\nline 2", {})])])
    multi.dump(out)
    assert "input: |" in out.read_text() and load_suite(out).tasks[0].cases[0].input == "line 1\nline 2"


# -- rendering ------------------------------------------------------------------------------------


def test_render_fills_slots_without_touching_braces_in_text() -> None:
    task = Task(
        "t",
        Schema.load(SCHEMA),
        'Reply as {"name": ...}.',
        [Example("I am Bo", {"name": "Bo"})],
        template="{instruction}\n---\n{examples}IN: {input}\nOUT:",
        example_template="IN: {input}\nOUT: {output}\n",
    )
    prompt = task.render("my {input} is {weird}")
    assert prompt == 'Reply as {"name": ...}.\n---\nIN: I am Bo\nOUT: {"name": "Bo"}\nIN: my {input} is {weird}\nOUT:'
    assert task.render("x", instruction="Other.").startswith("Other.\n---")
    assert task.messages("x") == [
        {"role": "system", "content": 'Reply as {"name": ...}.'},
        {"role": "user", "content": "I am Bo"},
        {"role": "assistant", "content": '{"name": "Bo"}'},
        {"role": "user", "content": "x"},
    ]


def test_protected_terms_are_schema_keys_and_enum_values() -> None:
    task = Task("t", Schema.load(SCHEMA), "x")
    assert task.protected_terms() == ("free", "gold", "name", "tier")
    invoice = load_suite(SUITES / "invoice_contact.yaml").task("invoice")
    terms = invoice.protected_terms()
    assert {"invoice_number", "unit_price", "USD", "JPY", "description"} <= set(terms)
    assert "Line items" not in terms  # descriptions are prose, not terms

