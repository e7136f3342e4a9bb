"""Continuous batching on the main job's prompts (issue 15): one at a time against 4, 8 and 16 slots.

    .venv/bin/python benchmarks/bench_batching.py [--cases 8] [--slots 1,4,8,16] [--llamacpp]

The prompts are the main job's (``guardrail report``: the shipped SNIPS suite, its first
``--cases`` cases taken round-robin over the intents, each clean and under typos, ocr, case and
distractor at severities 0.1 and 0.3), on the default embedded model, with the main job's options:
chat messages, 2 retries, 96 tokens per attempt, extractive decoding where the suite asks for it.
Every prompt goes through ``run_plan`` with one ``Guard`` per intent, as ``run_report`` does (the
results file aside), so re-asks join the queue beside fresh prompts exactly as in the report.

For each configuration: generated tokens (every attempt's, counted by the decode loop as busy
slot-steps), wall time, tokens/s, the speed-ups against one at a time, and slot occupancy (busy
slot-steps / (steps x slots): the share of the batch doing useful work). Three more rows at the
largest slot count: unconstrained decoding (the cost of masking), extractive decoding off (the
cost of input-span grammars), and the sparse output layer off (``SparseHead``). ``--llamacpp``
adds the llama.cpp runtime, which takes one request at a time, on the same prompts; ``--main-job``
adds the whole main job (28 cases, 252 prompts) at the largest slot count, where occupancy is
measured on the real workload rather than on a sample whose last wave drains a larger share.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from md_table import table  # noqa: E402

from guardrail import Guard  # noqa: E402
from guardrail.report.run import DEFAULT_FAMILIES, DEFAULT_SEVERITIES, _limit, default_suite  # noqa: E402
from guardrail.robustness import plan, run_plan  # noqa: E402
from guardrail.suite import Suite, load_suite  # noqa: E402

MAIN_JOB = {"max_new_tokens": 96, "max_new_tokens_cap": 96}  # guardrail report's defaults
RETRIES = 2


def main_job_suite(cases: int, *, extractive: bool = True) -> Suite:
    """The shipped suite's first ``cases`` cases, round-robin over its tasks (as ``--limit`` takes them)."""
    suite = _limit(load_suite(default_suite()), cases)
    if extractive:
        return suite
    return Suite(suite.name, [dataclasses.replace(t, extractive=False) for t in suite.tasks], suite.description,
                 suite.source)


@dataclasses.dataclass
class Measured:
    label: str
    slots: int
    prompts: int
    tokens: int
    wall: float
    steps: int
    valid: float

    @property
    def rate(self) -> float:
        return self.tokens / self.wall

    @property
    def occupancy(self) -> float | None:
        return self.tokens / (self.steps * self.slots) if self.steps else None


def run_local(label: str, suite: Suite, slots: int, *, mode: str = "constrained", sparse: bool = True,
              concurrency: int | None = None) -> Measured:
    from guardrail.backends.local import LocalBackend
    from guardrail.backends.local.head import SparseHead

    backend = LocalBackend(max_batch=slots)
    scheduler = backend.scheduler
    scheduler.resize(slots)
    kept_head = scheduler.head
    scheduler.head = SparseHead.of(scheduler.model) if sparse else None
    guards = {t.name: Guard(t.schema, llm=backend, retries=RETRIES, extractive=t.extractive, **MAIN_JOB)
              for t in suite.tasks}
    for guard in guards.values():  # compiled before the clock starts, as a warm report would have them
        backend.prepare(guard.schema)
    items = plan(suite, DEFAULT_FAMILIES, DEFAULT_SEVERITIES, (0,))
    steps, busy = scheduler.steps, scheduler.busy_slot_steps
    started = time.perf_counter()
    rows = [row for batch in run_plan(items, lambda task: guards[task.name], modes=[mode], chat=True,
                                      batch_size=slots, concurrency=concurrency) for row in batch.rows]
    wall = time.perf_counter() - started
    scheduler.head = kept_head
    return Measured(label, slots, len(rows), scheduler.busy_slot_steps - busy, wall, scheduler.steps - steps,
                    sum(bool(r["valid"]) for r in rows) / len(rows))


def run_llamacpp(suite: Suite) -> Measured:
    from guardrail.backends import resolve

    backend = resolve(None, None, runtime="llamacpp")
    generated = [0]
    plain_generate = backend.generate

    def generate(*args: Any, **kwargs: Any) -> Any:  # counts generated tokens (rows record prompt + answer)
        out = plain_generate(*args, **kwargs)
        generated[0] += sum(g.completion_tokens or 0 for g in out)
        return out

    backend.generate = generate  # type: ignore[method-assign]
    guards = {t.name: Guard(t.schema, llm=backend, retries=RETRIES, extractive=t.extractive, **MAIN_JOB)
              for t in suite.tasks}
    for guard in guards.values():
        backend.prepare(guard.schema)
    items = plan(suite, DEFAULT_FAMILIES, DEFAULT_SEVERITIES, (0,))
    started = time.perf_counter()
    rows = [row for batch in run_plan(items, lambda task: guards[task.name], chat=True, batch_size=1)
            for row in batch.rows]
    wall = time.perf_counter() - started
    return Measured("llama.cpp runtime, one at a time", 1, len(rows), generated[0], wall, 0,
                    sum(bool(r["valid"]) for r in rows) / len(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="main-job cases (each gives 9 prompts)")
    parser.add_argument("--slots", default="1,4,8,16", help="slot counts; the first is the baseline")
    parser.add_argument("--llamacpp", action="store_true", help="also the llama.cpp runtime (one at a time)")
    parser.add_argument("--main-job", action="store_true",
                        help="also the whole main job (28 cases) at the largest slot count, for its occupancy")
    args = parser.parse_args(argv)
    import torch

    from guardrail.backends.local import LocalBackend

    slot_counts = [int(s) for s in args.slots.split(",")]
    model = LocalBackend()
    model.load()  # loaded (and converted, the first time) before any clock starts
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {model.model_name}, load average "
          f"{os.getloadavg()[0]:.1f} at the start\n")
    suite = main_job_suite(args.cases)
    # Untimed, so that no configuration pays the first-use costs (span grammars, kernels) for the others.
    run_local("warm-up", suite, max(slot_counts))
    runs = [run_local("one at a time" if n == 1 else f"{n} slots", suite, n) for n in slot_counts]
    base, top = runs[0], max(slot_counts)
    extra = [run_local(f"{top} slots, unconstrained", suite, top, mode="unconstrained"),
             run_local(f"{top} slots, extractive off", main_job_suite(args.cases, extractive=False), top),
             run_local(f"{top} slots, sparse output layer off", suite, top, sparse=False)]
    if args.main_job:
        extra.append(run_local(f"{top} slots, the whole main job (28 cases)", main_job_suite(28), top))
    if args.llamacpp:
        extra.append(run_llamacpp(suite))

    def row(m: Measured) -> list[Any]:
        speed = m.prompts == base.prompts
        return [m.label, m.prompts, m.tokens, f"{m.wall:.1f}", f"{m.rate:.1f}",
                f"{m.occupancy:.2f}" if m.occupancy is not None else "",
                f"{m.valid:.2f}", f"**{m.rate / base.rate:.1f}x**" if speed and m is not base else "",
                f"{base.wall / m.wall:.1f}x" if speed and m is not base else ""]

    print(f"Main-job prompts: {args.cases} cases x (clean + {len(DEFAULT_FAMILIES)} families x "
          f"{len(DEFAULT_SEVERITIES)} severities) = {base.prompts} prompts, retries {RETRIES}, "
          f"{MAIN_JOB['max_new_tokens']} tokens per attempt; tokens are every attempt's.\n")
    print(table(["configuration", "prompts", "generated tokens", "wall s", "tokens/s", "slot occupancy",
                 "valid rate", "tokens/s vs one at a time", "wall-time speed-up"],
                [row(m) for m in runs] + [row(m) for m in extra]))
    at_top = next(m for m in runs if m.slots == top)
    unconstrained, extractive_off, dense = extra[:3]
    print(f"\nAt {top} slots: constrained / unconstrained tokens/s **{at_top.rate / unconstrained.rate:.2f}**; "
          f"with extractive decoding / without, tokens/s **{at_top.rate / extractive_off.rate:.2f}** (above 1: no "
          f"per-token cost); the sparse output layer gives **{at_top.rate / dense.rate:.2f}x** the tokens/s of the "
          "full one. Every configuration ran after an untimed warm-up run.")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
