"""The report job behind ``guardrail report``: plan, run (resumably), score, write three files.

``run_report`` plans every prompt with ``guardrail.robustness.plan`` and runs them with the
library's runner, ``guardrail.robustness.run_plan``, whose sink is the results store: prompts a
previous run of the same configuration already finished are skipped, the rest go through one
``Guard`` per task in batches, and each batch's outcome rows are appended to
``OUT/results.jsonl`` as it returns. It finally writes ``report.json``, ``report.md`` and
``report.html`` from *all* the rows of the run.

Resume rules (the file handling lives in ``guardrail.report.store``):

* the run is keyed by a hash of its configuration (suite content, model, families, severities,
  seeds, retries, decoding modes, decoding strategy when not greedy, limit, guardrail version),
  stored in ``OUT/run.json``; each row is keyed by ``mode/task/case/family/severity/seed/target``;
* rerunning the same command skips finished rows; a *changed* configuration moves the old
  ``results.jsonl`` and ``run.json`` aside (``results.<oldhash>.jsonl``) and starts afresh, so
  rows of two configurations are never mixed and nothing is deleted;
* a torn last line (the process was killed mid-write) is cut off, reported, and its row rerun;
* Ctrl-C stops after the current batch is abandoned: finished rows stay, the report of what
  is there is written (marked incomplete), and the exit code is 130; rerun to resume.

Rows are sorted by plan position before scoring, so an interrupted-then-resumed run and an
uninterrupted one give the same metrics (given a deterministic model: greedy decoding).

>>> from guardrail.suite import parse_suite
>>> suite = parse_suite({"name": "demo", "schema": {"type": "object"}, "instruction": "Return {}.",
...                      "cases": [{"id": "a", "input": "hello there", "gold": {}}]})
>>> import tempfile
>>> done = run_report(suite, families=["case"], severities=[0.5], seeds=1, out_dir=tempfile.mkdtemp(),
...                   llm=lambda prompt: "{}", n_boot=10)
>>> done.exit_code, done.score, done.rows_done
(0, 100.0, 2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.atomic import replacing, write_atomic
from guardrail.errors import SuiteError
from guardrail.perturb import canonical_family
from guardrail.report.html import render_html
from guardrail.report.json import build_report, write_json
from guardrail.report.markdown import render_markdown
from guardrail.report.store import Store
from guardrail.robustness import item_key, plan, run_plan
from guardrail.suite import Suite, Task, load_suite

__all__ = ["DEFAULT_FAMILIES", "DEFAULT_SEEDS", "DEFAULT_SEVERITIES", "DEFAULT_SUITE_PLACES", "EXIT_FAIL_UNDER",
           "EXIT_INTERRUPTED", "EXIT_OK", "Progress", "ReportRun", "canonical_family", "default_suite", "run_report",
           "write_report"]  # canonical_family lives in guardrail.perturb

#: Where the suite ``guardrail report`` runs when none is given may live: packaged inside a wheel
#: (if the build force-includes it there), or in the source checkout's examples.
DEFAULT_SUITE_PLACES: tuple[Path, ...] = (
    Path(__file__).resolve().parents[1] / "suites" / "snips.yaml",
    Path(__file__).resolve().parents[2] / "examples" / "suites" / "snips.yaml",
)
#: Defaults sized for the embedded model on a 2-core CPU (see ``guardrail.report.cli``).
DEFAULT_FAMILIES: tuple[str, ...] = ("typos", "ocr", "case", "distractor")
DEFAULT_SEVERITIES: tuple[float, ...] = (0.1, 0.3)
DEFAULT_SEEDS = 1
#: Exit codes: success, score under ``fail_under``, interrupted (as a shell reports SIGINT).
EXIT_OK, EXIT_FAIL_UNDER, EXIT_INTERRUPTED = 0, 3, 130

#: ``progress(done, total, label)``: rows finished so far (resumed ones included), rows planned,
#: and what is running now.
Progress = Callable[[int, int, str], None]


@dataclass
class ReportRun:
    """What ``run_report`` did: the exit code to use, the score, and where everything is.

    ``exit_code`` is 0, 3 (score under ``fail_under``) or 130 (interrupted; rerun to resume).
    """

    out_dir: Path
    exit_code: int
    score: float | None
    complete: bool
    interrupted: bool
    rows_planned: int
    rows_done: int
    rows_reused: int
    rows_run: int
    config_hash: str
    torn: list[str] = field(default_factory=list)
    moved_aside: list[Path] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    resume_hint: str = ""
    report: dict[str, Any] = field(default_factory=dict, repr=False)


def run_report(
    suite: str | os.PathLike[str] | Suite | None = None,
    model: str = "embedded",
    families: Iterable[str] = DEFAULT_FAMILIES,
    severities: Iterable[float] = DEFAULT_SEVERITIES,
    seeds: int | Iterable[int] = DEFAULT_SEEDS,
    retries: int = 2,
    compare_unconstrained: bool = False,
    out_dir: str | os.PathLike[str] = "report",
    batch_size: int = 16,
    limit: int | None = None,
    progress: Progress | None = None,
    *,
    fail_under: float | None = None,
    llm: Callable[..., Any] | None = None,
    n_boot: int = 1000,
    target: str = "input",
    chat: bool | None = None,
    guard_options: dict[str, Any] | None = None,
    backend_options: dict[str, Any] | None = None,
    concurrency: int | None = None,
    strategy: str = "greedy",
    samples: int = 5,
    temperature: float | None = None,
) -> ReportRun:
    """Run (or resume) a robustness report into ``out_dir``; see the module docstring.

    ``suite``: a path, a loaded ``Suite``, or ``None`` for the shipped SNIPS suite. ``model``
    names a local model (``"embedded"``); ``llm`` instead gives your own function (prompt →
    text), which is what tests use. ``seeds``: a count (``3`` → 0, 1, 2) or the seeds.
    ``limit`` keeps the first N cases, taken round-robin over the tasks so each task is
    represented. ``compare_unconstrained`` runs every prompt a second time with constrained
    decoding off. ``chat`` sends chat messages (instruction as system, few-shot examples as
    turns) instead of one rendered text; by default a local model gets chat messages (the
    embedded model copies text-inlined examples far more often) and an ``llm`` function gets
    text. ``guard_options`` go to every ``Guard`` (e.g. ``max_new_tokens``). ``backend_options``
    go to ``guardrail.backends.resolve``: ``{"base_url": ...}`` runs on an OpenAI-compatible server
    (``model`` is then the server's model name; ``"embedded"`` means its only one).
    ``concurrency`` caps the prompts in flight at once (default: ``batch_size``; for a batching
    local model it is the batch of one model call).
    ``strategy`` (``greedy``, ``sample`` or ``vote``), ``samples`` and ``temperature`` choose the
    decoding strategy of every guard (see ``Guard``), sampled with seed 0 unless ``guard_options``
    gives one; rows then carry ``agreement`` (vote) and the report compares the fields'
    ``confidence`` and agreement with the gold (``guardrail.calibration``). A vote batch holds
    ``samples`` rows per prompt.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    loaded = _load(suite)
    chosen = _limit(loaded, limit)
    fams = list(dict.fromkeys(canonical_family(f) for f in families))
    sevs = [float(s) for s in severities]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not fams or not sevs or not seed_list:
        raise ValueError("give at least one family, one severity and one seed")
    if any(not 0.0 <= s <= 1.0 for s in sevs):
        raise ValueError(f"severities must be in [0, 1], got {sevs}")
    modes = ["constrained", "unconstrained"] if compare_unconstrained else ["constrained"]
    use_chat = (llm is None) if chat is None else chat
    config = {
        "suite": chosen.name,
        "suite_hash": _suite_hash(chosen),
        "model": _model_name(model, llm),
        "families": fams,
        "severities": sevs,
        "seeds": seed_list,
        "retries": retries,
        "modes": modes,
        "limit": limit,
        "target": target,
        "chat": use_chat,
        "guard_options": guard_options or {},
        "guardrail": _guardrail_version(),
    }
    strategy_options = _strategy_options(strategy, samples, temperature, guard_options or {})
    if strategy_options:  # only when not greedy, so greedy runs keep their configuration hash
        config["strategy"] = strategy_options
    if backend_options:  # only when given, so local runs keep their configuration hash; never the API key
        config["backend"] = {k: v for k, v in backend_options.items() if k not in ("api_key", "headers")}
    store = Store.open(out_dir, config)
    items = plan(chosen, fams, sevs, seed_list, target)  # type: ignore[arg-type]
    position = {item_key(item, mode): i for i, (mode, item) in enumerate((m, it) for m in modes for it in items)}
    done = store.done & position.keys()
    reused, total = len(done), len(position)
    if progress:
        progress(reused, total, "resumed" if reused else "starting")
    runner = _Runner(model, llm, retries, {**(guard_options or {}), **strategy_options}, backend_options or {})
    interrupted = False
    ran = 0
    try:
        for batch in run_plan(items, runner.guard, modes=modes, chat=use_chat, batch_size=batch_size,
                              concurrency=concurrency, done=done, sink=store):
            ran += len(batch.rows)
            if progress:
                progress(reused + ran, total, f"{batch.mode} · {batch.task.name}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        store.close()
    return _finish(store, position, modes, chosen, runner, interrupted, reused, ran, fail_under, n_boot)


def _strategy_options(strategy: str, samples: int, temperature: float | None,
                      guard_options: dict[str, Any]) -> dict[str, Any]:
    """The ``Guard`` options of a decoding strategy (empty for greedy, the default)."""
    from guardrail.guard import _check_strategy

    chosen, temp = _check_strategy(strategy, samples, temperature)
    if chosen == "greedy":
        return {}
    options: dict[str, Any] = {"strategy": chosen, "temperature": temp, "seed": guard_options.get("seed", 0)}
    if chosen == "vote":
        options["samples"] = samples
    return options


def _finish(store: Store, position: dict[str, int], modes: list[str], suite: Suite, runner: _Runner,
            interrupted: bool, reused: int, ran: int, fail_under: float | None, n_boot: int) -> ReportRun:
    # Plan order, not arrival order: resumed and uninterrupted runs must score the same rows alike.
    rows = sorted((r for r in store.rows if r.get("key") in position), key=lambda r: position[str(r["key"])])
    unique = {str(r["key"]): r for r in reversed(rows)}  # the first copy of a key wins
    rows = sorted(unique.values(), key=lambda r: position[str(r["key"])])
    complete = len(rows) == len(position)
    hint = "" if complete else (f"{len(position) - len(rows)} prompts still to run: rerun the same command to resume "
                                "(finished rows are kept).")
    run_info: dict[str, Any] = {"rows_planned": len(position), "rows_done": len(rows), "complete": complete}
    if hint:
        run_info["resume_hint"] = hint
    if store.torn:
        run_info["torn_lines"] = [str(t) for t in store.torn]
    if store.moved_aside:
        run_info["moved_aside"] = [p.name for p in store.moved_aside]
    report = build_report(
        {mode: [r for r in rows if r.get("mode") == mode] for mode in modes},
        suite=suite.name, config=store.config, config_hash=store.hash, model=runner.describe(), run=run_info,
        n_boot=n_boot,
    )
    files = write_report(report, store.out_dir)
    score = report.get("score")
    if interrupted:
        code = EXIT_INTERRUPTED
    elif fail_under is not None and (score is None or score < fail_under):
        code = EXIT_FAIL_UNDER
    else:
        code = EXIT_OK
    return ReportRun(
        out_dir=store.out_dir, exit_code=code, score=score, complete=complete, interrupted=interrupted,
        rows_planned=len(position), rows_done=len(rows), rows_reused=reused, rows_run=ran, config_hash=store.hash,
        torn=[str(t) for t in store.torn], moved_aside=list(store.moved_aside), files=files, resume_hint=hint,
        report=report,
    )


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html``; each replaces the old one atomically.

    >>> import tempfile
    >>> from guardrail.report.json import build_report
    >>> sorted(write_report(build_report({}, suite="empty"), tempfile.mkdtemp()))
    ['html', 'json', 'md']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, render in (("md", render_markdown), ("html", render_html)):
        files[kind] = write_atomic(out / f"report.{kind}", render(report))
    with replacing(out / "report.json") as tmp:
        write_json(report, tmp)
    files["json"] = out / "report.json"
    return files


class _Runner:
    """Builds one guard per task on first use, so a fully resumed run never loads the model."""

    def __init__(self, model: str, llm: Callable[..., Any] | None, retries: int, options: dict[str, Any],
                 backend_options: dict[str, Any] | None = None) -> None:
        self.model, self.llm, self.retries, self.options = model, llm, retries, options
        self.backend_options = backend_options or {}
        self._backend: Any = None
        self._guards: dict[str, Any] = {}

    def backend(self) -> Any:
        if self._backend is None:
            from guardrail.backends import resolve

            # One backend for every task: the model loads once, each schema compiles once.
            model: str | None = None if self.llm is not None else self.model
            if self.backend_options.get("base_url") and model == "embedded":
                model = None  # a server's only model
            self._backend = resolve(self.llm, model, **self.backend_options)
        return self._backend

    def guard(self, task: Task) -> Any:
        if task.name not in self._guards:
            from guardrail.guard import Guard

            self._guards[task.name] = Guard(task.schema, llm=self.backend(), retries=self.retries,
                                            extractive=task.extractive, **self.options)
        return self._guards[task.name]

    def describe(self) -> dict[str, Any]:
        if self.llm is not None:
            return {"backend": "callable", "function": _model_name("", self.llm)}
        if self._backend is None:
            remote = self.backend_options.get("base_url")
            return {"backend": "remote", "base_url": remote} if remote else {"backend": "local", "model": self.model}
        info = dict(self._backend.describe())
        info.setdefault("model", self.model)
        return info


def default_suite() -> Path:
    """The shipped SNIPS suite's path; ``SuiteError`` with the places looked in when it is missing."""
    found = next((p for p in DEFAULT_SUITE_PLACES if p.is_file()), None)
    if found is None:
        raise SuiteError("the shipped SNIPS suite is not installed here (looked in "
                         f"{', '.join(map(str, DEFAULT_SUITE_PLACES))}); give a suite file")
    return found


def _load(suite: str | os.PathLike[str] | Suite | None) -> Suite:
    if isinstance(suite, Suite):
        return suite
    return load_suite(default_suite() if suite is None else Path(suite))


def _limit(suite: Suite, limit: int | None) -> Suite:
    """The first ``limit`` cases, round-robin over tasks, so a small run still covers every task."""
    if limit is None or limit >= len(suite):
        return suite
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    kept: dict[str, list[Any]] = {t.name: [] for t in suite.tasks}
    n, depth = 0, 0
    while n < limit:
        for task in suite.tasks:
            if depth < len(task.cases) and n < limit:
                kept[task.name].append(task.cases[depth])
                n += 1
        depth += 1
    tasks = [dataclasses.replace(t, cases=kept[t.name]) for t in suite.tasks if kept[t.name]]
    return Suite(suite.name, tasks, suite.description, suite.source)


def _suite_hash(suite: Suite) -> str:
    text = json.dumps(suite.to_dict(), sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _model_name(model: str, llm: Callable[..., Any] | None) -> str:
    if llm is None:
        return model
    name = getattr(llm, "__qualname__", None) or type(llm).__qualname__
    return f"callable:{getattr(llm, '__module__', '?')}.{name}"


def _guardrail_version() -> str:
    from guardrail import __version__

    return __version__
