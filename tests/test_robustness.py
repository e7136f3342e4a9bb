"""The robustness runner, driven by plain-function "models" behind a guard with run_many's contract."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from guardrail.metrics import OutcomeRow, read_rows
from guardrail.perturb import PRESERVING, CharTypos, check_preserved, gold_values
from guardrail.result import Attempt, Result
from guardrail.robustness import JsonLines, evaluate, item_key, plan, run_plan
from guardrail.suite import Suite, Task, load_suite

SUITES = Path(__file__).resolve().parents[1] / "examples" / "suites"
Model = Callable[[str], Any]  # prompt -> parsed JSON, or None for "not valid"


class FunctionGuard:
    """``Guard.run_many``'s contract over a plain function; retries up to ``retries`` times on None."""

    def __init__(self, model: Model, retries: int = 1) -> None:
        self.model = model
        self.retries = retries
        self.batches: list[tuple[int, int]] = []

    def run_many(self, prompts: Sequence[Any], *, concurrency: int = 4) -> list[Result[Any]]:
        self.batches.append((len(prompts), concurrency))
        return [self._run(p) for p in prompts]

    def _run(self, prompt: Any) -> Result[Any]:
        attempts: list[Attempt] = []
        for _ in range(self.retries + 1):
            value = self.model(prompt)
            ok = value is not None
            attempts.append(
                Attempt(
                    prompt,
                    json.dumps(value),
                    ended="valid" if ok else "invalid",
                    duration_s=0.5,
                    prompt_tokens=7,
                    completion_tokens=3,
                )
            )
            if ok:
                return Result(value, json.dumps(value), attempts)
        from guardrail.errors import GuardError

        return Result(None, "null", attempts, error=GuardError("no valid output", attempts))


def last_input(prompt: str) -> str:
    return prompt.rsplit("Text: ", 1)[-1].rsplit("\nJSON:", 1)[0]


def copier(suite: Suite) -> Model:
    """A "model" that answers with every gold value it can still find verbatim in the input."""
    golds = {c.id: c.gold for _, c in suite.cases()}

    def model(prompt: str) -> Any:
        text = last_input(prompt)
        case_id = next(cid for cid, _ in sorted(golds.items(), key=lambda kv: -_overlap(kv[1], text)))
        gold = golds[case_id]
        return {
            k: [x for x in v if x in text] if isinstance(v, list) else v
            for k, v in gold.items()
            if (isinstance(v, list) and any(x in text for x in v)) or (isinstance(v, str) and v in text)
        }

    return model


def _overlap(gold: Any, text: str) -> int:
    return sum(len(v) for v in gold_values(gold) if v in text)


@pytest.fixture(scope="module")
def snips() -> Suite:
    suite = load_suite(SUITES / "snips.yaml")
    suite.tasks = suite.tasks[:2]  # two intents keep the test fast
    return suite


# -- plan --------------------------------------------------------------------------------------------


def test_plan_has_one_clean_item_per_case_and_is_deterministic(snips: Suite) -> None:
    items = plan(snips, ["typos", "case"], [0.5, 1.0], seeds=[0, 1])
    assert sum(i.family == "clean" for i in items) == len(snips)
    assert len(items) == len(snips) * (1 + 2 * 2 * 2)
    again = plan(snips, ["typos", "case"], [0.5, 1.0], seeds=[0, 1])
    assert [i.prompt() for i in items] == [i.prompt() for i in again]
    by_seed = {i.seed: i.input for i in items if i.family == "typos" and i.severity == 1.0 and i.case is items[0].case}
    assert by_seed[0] != by_seed[1]


def test_plan_keeps_gold_values_and_records_edits(snips: Suite) -> None:
    for item in plan(snips, PRESERVING, [1.0]):
        assert check_preserved(item.input, gold_values(item.gold)) == []
        if item.family != "clean":
            assert item.instruction == item.task.instruction and item.target == "input"
            assert all(part == "input" and item.case.input[e.start : e.end] == e.before for part, e in item.edits)


def test_instruction_target_keeps_keys_and_leaves_the_input_alone(snips: Suite) -> None:
    items = [i for i in plan(snips, ["typos"], [1.0], target="instruction") if i.family == "typos"]
    assert items and all(i.input == i.case.input for i in items)
    assert any(i.instruction != i.task.instruction for i in items)
    for item in items:
        assert check_preserved(item.instruction, item.task.protected_terms()) == []
        assert all(part == "instruction" for part, _ in item.edits)
    both = [i for i in plan(snips, ["typos"], [1.0], target="both") if i.family == "typos"]
    assert {part for i in both for part, _ in i.edits} == {"input", "instruction"}
    with pytest.raises(ValueError, match="target must be"):
        plan(snips, ["typos"], [1.0], target="everything")  # type: ignore[arg-type]


def test_info_removal_only_where_the_schema_lets_the_model_say_not_known() -> None:
    suite = load_suite(SUITES / "invoice_contact.yaml")
    removed = [i for i in plan(suite, ["info_removed"], [0.5], seeds=[0, 1]) if i.family == "info_removed"]
    assert removed and all(i.task.name == "contact" for i in removed)  # every invoice field is required
    for item in removed:
        assert set(item.removed) <= {"phone", "company"}
        assert all(item.gold[f] is None for f in item.removed)  # required-but-nullable: null, not absent
        assert all(item.case.gold[f] not in item.input for f in item.removed)
    assert not [i for i in plan(suite, ["info_removed"], [0.5], target="instruction") if i.family != "clean"]


def test_plan_accepts_ready_perturbations() -> None:
    suite = load_suite(SUITES / "invoice_contact.yaml")
    items = plan(suite, [CharTypos(0.3, kinds=("double",))], [0.5, 1.0])
    noisy = [i for i in items if i.family != "clean"]
    assert len(noisy) == len(suite) and {i.severity for i in noisy} == {0.3}
    assert all(e.after == e.before * 2 for i in noisy for _, e in i.edits)


# -- evaluate ----------------------------------------------------------------------------------------


def test_a_model_that_reads_the_text_is_perfectly_robust(snips: Suite, tmp_path: Path) -> None:
    guard = FunctionGuard(copier(snips))
    seen: list[OutcomeRow] = []
    path = tmp_path / "rows.jsonl"
    report = evaluate(
        lambda task: guard,
        snips,
        perturbations=[*PRESERVING, "info_removed"],
        severities=[0.5],
        batch_size=8,
        rows_path=path,
        on_row=seen.append,
        n_boot=50,
    )
    summary = report.summary
    assert summary["clean"]["field_f1"]["value"] == 1.0
    for name in PRESERVING:  # every gold value survives noise, so the copier never misses
        cell = summary["families"][name]["0.5"]
        assert cell["field_f1"]["value"] == 1.0 and cell["pdr"]["value"] == 0.0, name
        assert cell["consistency"]["value"] == 1.0
    assert summary["info_removed"]["abstention_accuracy"]["value"] == 1.0
    assert report.score == 100.0
    # Rows were streamed: to the callback and to the file, in the same order.
    assert seen == report.rows and read_rows(path) == json.loads(json.dumps(report.rows))
    assert all(size <= 8 and concurrency == 8 for size, concurrency in guard.batches)
    assert json.loads(json.dumps(report.to_dict(rows=True)))["summary"]["score"] == 100.0


def test_rows_record_attempts_latency_tokens_and_failures() -> None:
    suite = load_suite(SUITES / "invoice_contact.yaml")
    calls: dict[str, int] = {}

    def flaky(prompt: str) -> Any:
        # Valid on the second try for noisy prompts; never valid for case inv-02; perfect when clean.
        text = last_input(prompt)
        case = next(c for _, c in suite.cases() if c.input.split() == text.split())  # whitespace noise only
        if case.id == "inv-02-german":
            return None
        calls[prompt] = calls.get(prompt, 0) + 1
        return case.gold if text == case.input or calls[prompt] > 1 else None

    report = evaluate(
        {"invoice": FunctionGuard(flaky), "contact": FunctionGuard(flaky)},
        suite,
        perturbations=["whitespace"],
        severities=[1.0],
        n_boot=20,
    )
    rows = {(r["case_id"], r["family"]): r for r in report.rows}
    clean, noisy = rows[("inv-01-email", "clean")], rows[("inv-01-email", "whitespace")]
    assert (clean["valid_first"], clean["valid"], clean["attempts"]) == (True, True, 1)
    assert (noisy["valid_first"], noisy["valid"], noisy["attempts"]) == (False, True, 2)
    assert noisy["latency_s"] == 1.0 and noisy["tokens"] == 20
    assert noisy["edits"] and all(e["part"] == "input" for e in noisy["edits"])
    failed = rows[("inv-02-german", "clean")]
    assert failed["valid"] is False and failed["output"] is None and "no valid output" in str(failed["error"])
    cell = report.summary["families"]["whitespace"]["1"]
    assert cell["valid_at_1"]["value"] < cell["valid_at_k"]["value"] == pytest.approx(23 / 24)
    assert cell["mean_attempts"]["value"] > 1


def test_info_removed_rows_score_abstention(snips: Suite) -> None:
    def inventor(prompt: str) -> Any:  # answers from the clean text it remembers: never abstains
        return copier(snips)(prompt.replace(last_input(prompt), _clean_of(snips, last_input(prompt))))

    report = evaluate(lambda t: FunctionGuard(inventor), snips, perturbations=["info_removed"], severities=[1.0], n_boot=20)
    assert report.summary["info_removed"]["abstention_accuracy"]["value"] == 0.0
    assert report.summary["clean"]["field_f1"]["value"] == 1.0
    assert report.score == pytest.approx(100 * 0.25 / 0.5)  # clean F1 weighs .25, abstention .25 (scored 0)


def _clean_of(suite: Suite, text: str) -> str:
    words = set(re.findall(r"\w+", text))
    return max((c.input for _, c in suite.cases()), key=lambda s: len(words & set(re.findall(r"\w+", s))))


def test_guard_sources_and_their_errors(snips: Suite) -> None:
    guard = FunctionGuard(copier(snips))
    with pytest.raises(ValueError, match="2 different schemas; pass a mapping"):
        evaluate(guard, snips, perturbations=["typos"], severities=[0.5])
    with pytest.raises(ValueError, match=r"no guard for tasks \['PlayMusic'\]|no guard for tasks"):
        evaluate({snips.tasks[0].name: guard}, snips, perturbations=["typos"], severities=[0.5])
    one_task = Suite("one", [snips.tasks[0]])
    assert evaluate(guard, one_task, perturbations=["typos"], severities=[0.5], n_boot=0).score == 100.0
    with pytest.raises(TypeError, match="expected a guard"):
        evaluate(42, snips)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(guard, one_task, batch_size=0)

    class Short(FunctionGuard):
        def run_many(self, prompts: Sequence[Any], *, concurrency: int = 4) -> list[Result[Any]]:
            return super().run_many(prompts, concurrency=concurrency)[:-1]

    with pytest.raises(RuntimeError, match="returned 7 results for 8 prompts"):
        evaluate(Short(copier(snips)), one_task, perturbations=["typos"], severities=[0.5], batch_size=8)


def test_chat_prompts_are_messages(snips: Suite) -> None:
    prompts: list[Any] = []

    def model(messages: Any) -> Any:
        prompts.append(messages)
        return {}

    evaluate(
        lambda t: FunctionGuard(model),
        Suite("one", [snips.tasks[0]]),
        perturbations=["case"],
        severities=[1.0],
        chat=True,
        n_boot=0,
    )
    task: Task = snips.tasks[0]
    assert prompts[0][0] == {"role": "system", "content": task.instruction}
    assert prompts[0][-1] == {"role": "user", "content": task.cases[0].input}


def test_the_real_guard_plugs_in() -> None:
    from guardrail import Guard

    suite = load_suite(SUITES / "invoice_contact.yaml")
    contact = Suite("contact", [suite.task("contact")])
    answer = json.dumps({"name": "Ana", "email": "ana@x.org", "phone": None, "company": None})
    report = evaluate(
        lambda task: Guard(task.schema, llm=lambda prompt: answer),
        contact,
        perturbations=["typos"],
        severities=[0.5],
        n_boot=0,
    )
    assert report.summary["clean"]["valid_at_1"]["value"] == 1.0
    assert all(r["output"] == json.loads(answer) for r in report.rows)


# -- the runner that evaluate and the report share ---------------------------------------------------


class ModeGuard(FunctionGuard):
    """Records the options each batch was run with (``constrained=False`` for the unconstrained mode)."""

    def __init__(self, model: Model) -> None:
        super().__init__(model, retries=0)
        self.options: list[dict[str, Any]] = []

    def run_many(self, prompts: Sequence[Any], *, concurrency: int = 4, **options: Any) -> list[Result[Any]]:
        self.options.append(options)
        return super().run_many(prompts, concurrency=concurrency)


class ListSink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def append(self, rows: Any) -> None:
        self.events.append([r["key"] for r in rows])

    def sync(self) -> None:
        self.events.append("sync")


def test_run_plan_skips_done_items_runs_each_mode_and_syncs_every_batch(snips: Suite) -> None:
    one_task = Suite("one", [snips.tasks[0]])
    items = plan(one_task, ["case"], [1.0])
    keys = [item_key(i, m) for m in ("constrained", "unconstrained") for i in items]
    guard = ModeGuard(copier(one_task))
    built: list[str] = []

    def guard_for(task: Task) -> ModeGuard:
        built.append(task.name)
        return guard

    sink = ListSink()
    done = set(keys[:3])
    batches = list(run_plan(items, guard_for, modes=["constrained", "unconstrained"], batch_size=5, done=done,
                            sink=sink))
    rows = [r for b in batches for r in b.rows]
    assert [r["key"] for r in rows] == keys[3:]  # plan order, done ones skipped
    assert [b.mode for b in batches] == ["constrained"] * 3 + ["unconstrained"] * 4
    assert guard.options[0] == {} and guard.options[-1] == {"constrained": False}
    assert sink.events == [e for b in batches for e in ([r["key"] for r in b.rows], "sync")]
    assert built == [one_task.tasks[0].name]  # one guard per task, built once
    assert all(r["mode"] == r["key"].split("/")[0] and r["endings"] == ["valid"] and r["issues"] == [] for r in rows)
    # Everything done: no guard is built at all (a fully resumed report never loads a model).
    assert list(run_plan(items, guard_for, done=set(keys))) == [] and built == [one_task.tasks[0].name]
    with pytest.raises(ValueError, match=r"unknown decoding modes \['greedy'\]"):
        run_plan(items, guard_for, modes=["greedy"])  # at the call, before any batch


def test_rows_carry_the_last_failed_attempts_issues(tmp_path: Path) -> None:
    suite = load_suite(SUITES / "invoice_contact.yaml")
    contact = Suite("contact", [suite.task("contact")])
    report = evaluate(FunctionGuard(lambda prompt: None, retries=1), contact, perturbations=["case"],
                      severities=[1.0], n_boot=0, rows_path=tmp_path / "rows.jsonl")
    row = report.rows[0]
    assert row.get("endings") == ["invalid", "invalid"] and row.get("key", "").startswith("constrained/contact/")
    with JsonLines(tmp_path / "more.jsonl") as sink:
        sink.append([{"a": 1}])
        sink.append([{"b": "é"}])
    assert (tmp_path / "more.jsonl").read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'

