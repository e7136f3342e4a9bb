"""Extraction quality: embedded model × extractive decoding × few-shot examples, on clean prompts.

    HF_HUB_OFFLINE=1 python benchmarks/bench_extraction.py                     # the full grid
    python benchmarks/bench_extraction.py --models smollm2-135m --shots 3 --extractive on

For each configuration every clean prompt of the suites runs through ``Guard.run_all`` (one
running batch, the report's settings: 2 re-asks, 96 tokens per attempt) and is scored against the
gold: field F1 (``guardrail.metrics.field_f1``), exact match, valid@1 (the first attempt valid),
valid@k (valid within the re-asks), generated tokens per second and wall time.

Cases. ``snips`` are the shipped SNIPS suite's cases (SNIPS *train* rows). ``snips-tune`` are other
SNIPS train rows (8 per intent, none of them a case or an example of the shipped suite) with the
shipped suite's tasks: the set the prompt choices were tuned on, so the figures on ``snips`` are
not fitted to the cases they report. ``invoice_contact`` is the hand-written suite. The test split
(``snips_test``) is never read.

Few-shot: ``0`` shows no example; ``N`` shows the N examples of the task's pool nearest to the
input (``guardrail.shots``); ``fixed`` shows the pool's first 3, the same for every input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from guardrail import Guard  # noqa: E402
from guardrail.guard import run_all  # noqa: E402
from guardrail.metrics import exact_match, field_f1  # noqa: E402
from guardrail.schema import Schema  # noqa: E402
from guardrail.snips import SLOT_DESCRIPTIONS, described, load_snips  # noqa: E402
from guardrail.suite import Case, Suite, Task, load_suite  # noqa: E402

SNIPS = ROOT.parent / "shared" / "data" / "snips" / "derived"
SUITES = ROOT / "examples" / "suites"
OPTIONS = {"retries": 2, "max_new_tokens": 96, "max_new_tokens_cap": 96}


def tuning_suite(shipped: Suite, per_intent: int = 8, seed: int = 7) -> Suite:
    """Other SNIPS train rows with the shipped tasks: never a case or an example of the shipped suite."""
    taken = {c.id for _, c in shipped.cases()} | {e.input for t in shipped.tasks for e in t.examples}
    rows = [r for r in load_snips(SNIPS, "train") if r.id not in taken and r.text not in taken and len(r.slots) >= 2]
    rng = random.Random(seed)
    tasks = []
    for task in shipped.tasks:
        mine = sorted((r for r in rows if r.intent == task.name), key=lambda r: r.id)
        picked = rng.sample(mine, per_intent)
        tasks.append(dataclasses.replace(task, cases=[Case(r.id, r.text, r.slots) for r in picked]))
    return Suite("snips-tune", tasks, shipped.description)


def with_descriptions(suite: Suite) -> Suite:
    """The suite with each SNIPS slot described in its schema (``guardrail.snips.SLOT_DESCRIPTIONS``)."""
    tasks = [dataclasses.replace(t, schema=Schema.load(described(t.schema.json_schema, SLOT_DESCRIPTIONS.get(t.name, {})),
                                                       name=t.name)) for t in suite.tasks]
    return dataclasses.replace(suite, tasks=tasks)


def with_shots(task: Task, shots: str) -> Task:
    if shots == "0":
        return dataclasses.replace(task, examples=[], shots=None)
    if shots == "fixed":
        return dataclasses.replace(task, examples=task.examples[:3], shots=None)
    return dataclasses.replace(task, shots=min(int(shots), len(task.examples)) if task.examples else None)


def run(suite: Suite, model: str, extractive: bool, shots: str, threads: int | None) -> dict[str, Any]:
    tasks = [with_shots(t, shots) for t in suite.tasks]
    options: dict[str, Any] = dict(OPTIONS)
    if threads:
        options["threads"] = threads
    guards = {t.name: Guard(t.schema, model=model, extractive=(t.extractive or True) if extractive else False, **options)
              for t in tasks}
    jobs = [(guards[t.name], t.messages(c.input), {"input": c.input}) for t in tasks for c in t.cases]
    golds = [c.gold for t in tasks for c in t.cases]
    started = time.perf_counter()
    results = dict(run_all(jobs))
    seconds = time.perf_counter() - started
    ordered = [results[i] for i in range(len(jobs))]
    f1 = [field_f1(r.value if r.ok else None, g, valid=r.ok) for r, g in zip(ordered, golds, strict=True)]
    exact = [exact_match(r.value if r.ok else None, g, valid=r.ok) for r, g in zip(ordered, golds, strict=True)]
    tokens = sum(a.completion_tokens or 0 for r in ordered for a in r.attempts)
    return {"cases": len(jobs), "f1": sum(f1) / len(f1), "exact": sum(exact) / len(exact),
            "valid1": sum(r.attempts[0].ended == "valid" for r in ordered) / len(ordered),
            "validk": sum(r.ok for r in ordered) / len(ordered), "tokens_s": tokens / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--extractive", default="off,on")
    parser.add_argument("--shots", default="0,3", help="comma-separated: 0, fixed, or a number of nearest examples")
    parser.add_argument("--suites", default="snips-tune,snips,invoice_contact")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--describe", action="store_true", help="add the SNIPS slot descriptions to the schemas")
    args = parser.parse_args()
    shipped = load_suite(SUITES / "snips.yaml")
    suites = {"snips": shipped, "invoice_contact": load_suite(SUITES / "invoice_contact.yaml")}
    if "snips-tune" in args.suites:
        suites["snips-tune"] = tuning_suite(shipped)
    if args.describe:
        suites = {name: with_descriptions(suite) if name.startswith("snips") else suite for name, suite in suites.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs\n")
    print("| suite | model | extractive | few-shot | cases | field F1 | exact | valid@1 | valid@k | tokens/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.suites.split(","):
        for model in args.models.split(","):
            for extractive in args.extractive.split(","):
                for shots in args.shots.split(","):
                    got = run(suites[name], model, extractive == "on", shots, args.threads)
                    print(f"| {name} | {model} | {extractive} | {shots} | {got['cases']} | {got['f1']:.3f} | "
                          f"{got['exact']:.3f} | {got['valid1']:.2f} | {got['validk']:.2f} | {got['tokens_s']:.1f} | "
                          f"{got['seconds']:.0f} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
