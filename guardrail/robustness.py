"""Plan a robustness run (cases × perturbations × severities × seeds), run it, score it.

``plan`` is pure: it renders every prompt up front, the clean one once per case, each
perturbed one from a seed derived from ``(seed, case, family, severity, target)`` with a stable
hash, so the same suite and settings give the same prompts on any machine. ``run_plan`` is the
one runner: it sends planned prompts through each task's guard (``run_many``) in batches, in
each decoding mode asked for, skips the work items already ``done``, turns each ``Result`` into
an outcome row and hands every batch's rows to a sink as soon as the batch returns.
``evaluate`` is plan, run and summarise (``guardrail.metrics``) in one call, with an optional
JSONL file as the sink; ``guardrail report`` drives the same runner with its resumable results
store as the sink (``guardrail.report.run``).

>>> from guardrail.result import Attempt, Result
>>> from guardrail.suite import load_suite
>>> class Echo:  # a stand-in guard: answers every prompt with an empty object
...     def run_many(self, prompts, concurrency=4):
...         return [Result({}, "{}", [Attempt(p, "{}", ended="valid")]) for p in prompts]
>>> suite = load_suite("examples/suites/snips.yaml")
>>> report = evaluate(lambda task: Echo(), suite, perturbations=["typos"], severities=[0.5], n_boot=10)
>>> report.summary["families"]["typos"]["0.5"]["valid_at_1"]["value"]
1.0
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from guardrail.metrics import CLEAN, OutcomeRow, summarize
from guardrail.perturb import PRESERVING, Edit, InfoRemoval, Perturbation, derive_seed, family, gold_values
from guardrail.result import Result
from guardrail.suite import Case, Suite, Task

Target = Literal["input", "instruction", "both"]
Prompt = str | list[dict[str, str]]

#: What ``evaluate`` runs unless told otherwise: every family, information removal included.
DEFAULT_PERTURBATIONS: tuple[str, ...] = (*PRESERVING, InfoRemoval.NAME)
DEFAULT_SEVERITIES: tuple[float, ...] = (0.25, 0.5, 1.0)


class BatchGuard(Protocol):
    """What the runner needs of a guard: ``Guard.run_many``'s contract (``options`` such as
    ``constrained=False`` are passed only for a decoding mode that sets them)."""

    def run_many(self, prompts: Sequence[Prompt], *, concurrency: int = ..., **options: Any) -> list[Result[Any]]: ...


#: One guard for every task, a mapping from task name to guard, or a factory called per task.
GuardSource = BatchGuard | Mapping[str, BatchGuard] | Callable[[Task], BatchGuard]


@dataclass(frozen=True)
class PlanItem:
    """One prompt to run: the case, how it was perturbed, the text after, and the gold to expect.

    ``edits`` pairs each edit with the part it was made in (``"input"`` or ``"instruction"``).
    For ``info_removed`` items, ``gold`` is the case's gold without the removed fields (or with
    them null where the schema requires the key) and ``removed`` names them.
    """

    task: Task
    case: Case
    family: str
    severity: float
    seed: int
    target: str
    input: str
    instruction: str
    gold: Any
    edits: tuple[tuple[str, Edit], ...] = ()
    removed: tuple[str, ...] = ()

    def prompt(self, *, chat: bool = False) -> Prompt:
        """The prompt to send: rendered text, or chat messages when ``chat``."""
        if chat:
            return self.task.messages(self.input, instruction=self.instruction)
        return self.task.render(self.input, instruction=self.instruction)


def plan(
    suite: Suite,
    perturbations: Iterable[str | Perturbation] = DEFAULT_PERTURBATIONS,
    severities: Iterable[float] = DEFAULT_SEVERITIES,
    seeds: Iterable[int] = (0,),
    target: Target = "input",
) -> list[PlanItem]:
    """Every prompt of a run, clean ones first within each case.

    ``perturbations`` are family names (``"typos"``, ``"unicode.zero_width"``,
    ``"typos+case"``), each run at every severity, or ready ``Perturbation`` objects, run at
    their own severity. ``info_removed`` only edits the input, so it is skipped when
    ``target="instruction"``, and for cases where no field can be removed cleanly or where the
    schema would not let the model answer "not known" (a required, non-nullable field).

    >>> from guardrail.suite import load_suite
    >>> items = plan(load_suite("examples/suites/invoice_contact.yaml"), ["typos"], [0.5], seeds=[0, 1])
    >>> len(items), items[0].family, items[1].family
    (72, 'clean', 'typos')
    """
    if target not in ("input", "instruction", "both"):
        raise ValueError(f"target must be 'input', 'instruction' or 'both', got {target!r}")
    perturbations, severities, seeds = list(perturbations), [float(s) for s in severities], list(seeds)
    items: list[PlanItem] = []
    for task, case in suite.cases():
        items.append(PlanItem(task, case, CLEAN, 0.0, 0, "none", case.input, task.instruction, case.gold))
        for spec in perturbations:
            levels = severities if isinstance(spec, str) else [getattr(spec, "severity", 1.0)]
            for severity in levels:
                for seed in seeds:
                    item = _item(task, case, spec, severity, seed, target)
                    if item is not None:
                        items.append(item)
    return items


def _item(task: Task, case: Case, spec: str | Perturbation, severity: float, seed: int, target: Target) -> PlanItem | None:
    noise = family(spec, severity) if isinstance(spec, str) else spec
    name = spec if isinstance(spec, str) else noise.name
    item_seed = derive_seed(seed, task.name, case.id, name, severity, target)
    if isinstance(noise, InfoRemoval):
        if target == "instruction":
            return None
        removal = noise.apply(case.input, random.Random(item_seed), case.gold, fields=_abstainable(task))
        if not removal.removed:
            return None
        gold = dict(removal.gold)
        required = task.schema.json_schema.get("required", [])
        gold.update({f: None for f in removal.removed if f in required})
        edits = tuple(("input", e) for e in removal.edits)
        return PlanItem(
            task, case, name, severity, seed, target, removal.text, task.instruction, gold, edits, removal.removed
        )
    text, instruction, changes = case.input, task.instruction, []
    if target in ("input", "both"):
        keep = [*case.protect, *gold_values(case.gold)]
        text, changed = noise.apply(text, random.Random(derive_seed(item_seed, "input")), keep)
        changes += [("input", e) for e in changed]
    if target in ("instruction", "both"):
        keep = [*task.protected_terms(), *_keys(case.gold)]
        instruction, changed = noise.apply(instruction, random.Random(derive_seed(item_seed, "instruction")), keep)
        changes += [("instruction", e) for e in changed]
    return PlanItem(task, case, name, severity, seed, target, text, instruction, case.gold, tuple(changes))


def _abstainable(task: Task) -> list[str]:
    """Top-level fields a valid output may leave out or set to null: where "not known" is answerable."""
    schema = task.schema.json_schema
    required = set(schema.get("required", []))
    return [name for name, sub in (schema.get("properties") or {}).items() if name not in required or _nullable(sub)]


def _nullable(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    types = schema.get("type")
    alternatives = [*schema.get("anyOf", []), *schema.get("oneOf", [])]
    return types == "null" or (isinstance(types, list) and "null" in types) or any(map(_nullable, alternatives))


def _keys(value: Any) -> list[str]:
    """Every object key in a JSON value: the gold's keys are JSON keys the instruction may name."""
    if isinstance(value, dict):
        return [str(k) for k in value] + [k for v in value.values() for k in _keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


@dataclass
class RobustnessReport:
    """The rows of a run and their summary (see ``guardrail.metrics.summarize``).

    ``to_dict()`` is JSON-ready: ``suite``, ``config``, ``summary`` (``score``, ``clean``,
    ``overall``, ``families`` ...) and, when asked, the ``rows``.
    """

    suite: str
    config: dict[str, Any]
    rows: list[OutcomeRow] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The run's single number, 0–100 (defined in ``guardrail.metrics``)."""
        return self.summary.get("score")

    def to_dict(self, *, rows: bool = False) -> dict[str, Any]:
        """The report as plain JSON data; ``rows=True`` includes every outcome row."""
        out: dict[str, Any] = {"suite": self.suite, "config": self.config, "summary": self.summary}
        if rows:
            out["rows"] = self.rows
        return out


def evaluate(
    guard: GuardSource,
    suite: Suite,
    *,
    perturbations: Iterable[str | Perturbation] = DEFAULT_PERTURBATIONS,
    severities: Iterable[float] = DEFAULT_SEVERITIES,
    seeds: Iterable[int] = (0,),
    target: Target = "input",
    batch_size: int = 16,
    chat: bool = False,
    rows_path: str | Path | None = None,
    on_row: Callable[[OutcomeRow], None] | None = None,
    n_boot: int = 1000,
    ci_seed: int = 0,
) -> RobustnessReport:
    """Run the plan through ``guard`` and summarise the outcome.

    ``guard`` is one guard (its ``run_many`` is called), a mapping from task name to guard, or a
    factory ``task -> guard``; a suite whose tasks have different schemas needs one of the
    latter two. Prompts go ``batch_size`` at a time (also passed as ``concurrency``); each row
    is handed to ``on_row`` and appended to ``rows_path`` (JSON lines, flushed) as soon as its
    batch returns, so a long run can be watched and survives a crash.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    perturbations, severities, seeds = list(perturbations), list(severities), list(seeds)
    items = plan(suite, perturbations, severities, seeds, target)
    guards = _guards(guard, suite)
    rows: list[OutcomeRow] = []
    with JsonLines(rows_path) if rows_path is not None else nullcontext() as sink:
        for batch in run_plan(items, lambda task: guards[task.name], chat=chat, batch_size=batch_size, sink=sink):
            rows += batch.rows
            if on_row is not None:
                for row in batch.rows:
                    on_row(row)
    config = {
        "perturbations": [p if isinstance(p, str) else repr(p) for p in perturbations],
        "severities": severities,
        "seeds": seeds,
        "target": target,
        "chat": chat,
        "batch_size": batch_size,
        "n_prompts": len(items),
        "n_cases": len(suite),
    }
    return RobustnessReport(suite.name, config, rows, summarize(rows, n_boot=n_boot, seed=ci_seed))


# -- the runner -----------------------------------------------------------------------------------

#: Decoding modes a run can compare, and the ``run_many`` options each sets.
MODES: dict[str, dict[str, Any]] = {"constrained": {}, "unconstrained": {"constrained": False}}


class RunRow(OutcomeRow, total=False):
    """An outcome row as ``run_plan`` makes it: also its work item's ``key`` (``item_key``), its
    decoding ``mode``, the last failed attempt's ``issues`` (as text; empty when the first attempt
    was valid) and every attempt's ``endings``."""

    key: str
    mode: str
    issues: list[str]
    endings: list[str]


class RowSink(Protocol):
    """Where ``run_plan`` puts each batch's rows: ``append`` them, then ``sync`` (make them durable)."""

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None: ...

    def sync(self) -> None: ...


@dataclass
class Batch:
    """Rows ``run_plan`` finished together: their mode, the task of the last one, and the rows (in plan
    order for a ``run_many`` batch, in the order they finished when prompts run all at once)."""

    mode: str
    task: Task
    rows: list[RunRow]


def item_key(item: PlanItem, mode: str = "constrained") -> str:
    """The stable name of one planned prompt in one mode: what a resumed run skips by.

    >>> from guardrail.suite import load_suite
    >>> item_key(plan(load_suite("examples/suites/invoice_contact.yaml"), ["typos"], [0.5])[1])
    'constrained/invoice/inv-01-email/typos/0.5/0/input'
    """
    return f"{mode}/{item.task.name}/{item.case.id}/{item.family}/{item.severity:g}/{item.seed}/{item.target}"


def run_plan(
    items: Sequence[PlanItem],
    guard_for: Callable[[Task], BatchGuard],
    *,
    modes: Sequence[str] = ("constrained",),
    chat: bool = False,
    batch_size: int = 16,
    concurrency: int | None = None,
    done: Collection[str] = (),
    sink: RowSink | None = None,
) -> Iterator[Batch]:
    """Run every planned item in every mode, except the work items whose key is in ``done``.

    Work goes mode by mode, in plan order; consecutive items of one task go to ``guard_for(task)``
    (called when the task's first batch runs, so a fully resumed run builds no guard) in batches
    of ``max(batch_size, concurrency)``, with ``concurrency`` (default ``batch_size``) prompts in
    flight. Each batch's rows are appended to ``sink`` and synced before the batch is yielded, so
    a crash loses at most the batch in flight.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown decoding modes {unknown}; choose from {sorted(MODES)}")
    pending = [(mode, item) for mode in modes for item in items if item_key(item, mode) not in done]
    # Checked above, run below: bad arguments fail at the call, not at the first batch.
    return _run(pending, guard_for, chat, max(batch_size, concurrency or 1), concurrency or batch_size, sink)


def _run(pending: Sequence[tuple[str, PlanItem]], guard_for: Callable[[Task], BatchGuard], chat: bool, size: int,
         concurrency: int, sink: RowSink | None) -> Iterator[Batch]:
    guards: dict[str, BatchGuard] = {}
    for _, item in pending:
        if item.task.name not in guards:
            guards[item.task.name] = guard_for(item.task)
    from guardrail.guard import Guard

    if guards and all(isinstance(g, Guard) for g in guards.values()):
        yield from _run_streamed(pending, guards, chat, size, concurrency, sink)  # type: ignore[arg-type]
        return
    for mode, task, batch in _batches(pending, size):
        prompts = [item.prompt(chat=chat) for item in batch]
        results = guards[task.name].run_many(prompts, concurrency=concurrency, **MODES[mode])
        if len(results) != len(batch):
            raise RuntimeError(f"run_many returned {len(results)} results for {len(batch)} prompts")
        rows = [outcome_row(item, prompt, result, mode)
                for item, prompt, result in zip(batch, prompts, results, strict=True)]
        if sink is not None:
            sink.append(rows)
            sink.sync()
        yield Batch(mode, task, rows)


def _run_streamed(pending: Sequence[tuple[str, PlanItem]], guards: Mapping[str, Any], chat: bool, size: int,
                  concurrency: int, sink: RowSink | None) -> Iterator[Batch]:
    """Every pending prompt of a mode in flight at once (``guardrail.guard.run_all``): a local model
    keeps its batch full across tasks and re-asks. Rows reach the sink as they finish, synced every
    ``size`` rows, so a crash loses at most that many."""
    from guardrail.guard import run_all

    for mode in dict.fromkeys(mode for mode, _ in pending):
        items = [item for m, item in pending if m == mode]
        prompts = [item.prompt(chat=chat) for item in items]
        jobs = [(guards[item.task.name], prompt, {"input": item.input}) for item, prompt in zip(items, prompts,
                                                                                                 strict=True)]
        rows: list[RunRow] = []
        task = items[0].task if items else None
        for index, result in run_all(jobs, concurrency=concurrency, **MODES[mode]):
            rows.append(outcome_row(items[index], prompts[index], result, mode))
            task = items[index].task
            if sink is not None:
                sink.append(rows[-1:])
            if len(rows) >= size:
                if sink is not None:
                    sink.sync()
                yield Batch(mode, task, rows)
                rows = []
        if rows and task is not None:
            if sink is not None:
                sink.sync()
            yield Batch(mode, task, rows)


def _batches(pending: Sequence[tuple[str, PlanItem]], size: int) -> Iterator[tuple[str, Task, list[PlanItem]]]:
    """Consecutive runs of the same mode and task, cut into batches of at most ``size``."""
    group: list[PlanItem] = []
    mode = ""
    for entry_mode, item in pending:
        if group and (entry_mode != mode or item.task is not group[0].task or len(group) >= size):
            yield mode, group[0].task, group
            group = []
        mode = entry_mode
        group.append(item)
    if group:
        yield mode, group[0].task, group


class JsonLines:
    """A ``RowSink`` that appends each row to a file as one JSON line, flushed at once.

    Used as a context manager (``evaluate`` does), the file is closed at the end.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        for row in rows:
            self._handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            self._handle.flush()  # so a crashed or watched run has every finished row on disk

    def sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def outcome_row(item: PlanItem, prompt: Prompt, result: Result[Any], mode: str = "constrained") -> RunRow:
    """The outcome row for one planned prompt, run in ``mode``, and the guard's ``Result``."""
    attempts = list(result.attempts)
    tokens = [t for a in attempts if (t := a.tokens) is not None]
    row = RunRow(
        case_id=item.case.id,
        family=item.family,
        severity=item.severity,
        valid_first=bool(attempts) and attempts[0].ok,
        valid=result.ok,
        attempts=len(attempts),
        output=result.data if result.ok else None,
        gold=item.gold,
        task=item.task.name,
        seed=item.seed,
        target=item.target,
        prompt=prompt,
        input=item.input,
        instruction=item.instruction,
        edits=[{"part": part, **e.to_dict()} for part, e in item.edits],
        removed_fields=list(item.removed),
        raw=result.raw,
        latency_s=sum(a.duration_s for a in attempts),
        tokens=sum(tokens) if tokens else None,
        error=None if result.error is None else str(result.error),
        key=item_key(item, mode),
        mode=mode,
        issues=_last_issues(result),
        endings=[a.ended for a in attempts],
    )
    # Per-field trust signals, when known (guardrail.confidence, guardrail.voting).
    confidence, agreement = getattr(result, "confidence", None), getattr(result, "agreement", None)
    if confidence is not None:
        row["confidence"] = dict(confidence)
    if agreement is not None:
        row["agreement"] = dict(agreement)
    return row


def _last_issues(result: Result[Any]) -> list[str]:
    """The last failed attempt's issues as text (the row keeps only the final error otherwise)."""
    attempts = list(result.attempts)
    if result.ok and len(attempts) <= 1:
        return []
    failed = next((a for a in reversed(attempts) if a.issues or a.error), None)
    if failed is None:
        return []
    return [str(i) for i in failed.issues] or ([failed.error] if failed.error else [])


def _guards(source: GuardSource, suite: Suite) -> dict[str, BatchGuard]:
    if hasattr(source, "run_many"):
        hashes = {t.schema.hash for t in suite.tasks}
        if len(hashes) > 1:
            raise ValueError(
                f"suite {suite.name!r} has {len(hashes)} different schemas; pass a mapping from task name to "
                "guard, or a factory such as `lambda task: Guard(task.schema, llm=...)`"
            )
        return {t.name: source for t in suite.tasks}  # type: ignore[misc]
    if isinstance(source, Mapping):
        missing = [t.name for t in suite.tasks if t.name not in source]
        if missing:
            raise ValueError(f"no guard for tasks {missing}")
        return {t.name: source[t.name] for t in suite.tasks}
    if callable(source):
        return {t.name: source(t) for t in suite.tasks}
    raise TypeError(f"expected a guard with run_many, a mapping or a factory, got {type(source).__name__}")
