"""Greedy decoding against a self-consistency vote on the SNIPS example suite, plus calibration.

On every case of ``examples/suites/snips.yaml`` (56 cases, 7 intents, clean prompts sent as chat
messages, as ``guardrail report`` sends them to a local model), one run of:

* ``greedy``: ``Guard(schema)``;
* ``vote(N)``: ``Guard(schema, strategy="vote", samples=N, temperature=T, seed=S)``;

both with the report's settings (2 re-asks, 96 tokens per attempt). Prints, as Markdown, the
mean field F1 (``guardrail.metrics.field_f1``), exact match and validity of each, the expected
calibration error (10 bins) and AUROC of per-field confidence for each, and for the vote
whether low agreement predicts wrong fields. ``--out FILE`` also writes every row (outputs,
gold, confidence, agreement, each vote's samples) as JSON lines after a first line of run facts
(timings, load); ``--from-rows FILE`` prints the tables again from such a file without running
the model.

Usage::

    .venv/bin/python benchmarks/bench_vote.py --threads 1 --out /tmp/vote_rows.jsonl
    .venv/bin/python benchmarks/bench_vote.py --from-rows /tmp/vote_rows.jsonl

It runs 56 greedy and 56 × N sampled generations on the embedded model: about 10-20 minutes on
2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from guardrail import Guard  # noqa: E402
from guardrail.calibration import agreement_vs_accuracy, reliability  # noqa: E402
from guardrail.metrics import exact_match, field_f1  # noqa: E402
from guardrail.suite import load_suite  # noqa: E402


def run(strategy: str, suite: Any, backend: Any, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    options: dict[str, Any] = {"retries": 2, "max_new_tokens": 96, "max_new_tokens_cap": 96}
    if strategy == "vote":
        options.update(strategy="vote", samples=args.samples, temperature=args.temperature, seed=args.seed)
    rows = []
    started = time.perf_counter()
    for task in suite.tasks:
        guard = Guard(task.schema, llm=backend, **options)
        prompts = [task.messages(case.input) for case in task.cases]
        results = guard.run_many(prompts, concurrency=args.batch)
        for case, result in zip(task.cases, results, strict=True):
            rows.append({
                "strategy": strategy, "task": task.name, "case_id": case.id, "input": case.input,
                "valid": result.ok, "output": result.data if result.ok else None, "gold": case.gold,
                "raw": result.raw, "attempts": len(result.attempts),
                "confidence": result.confidence, "agreement": result.agreement,
                "samples": [{"output": s.output, "ended": s.ended, "confidence": s.confidence}
                            for a in result.attempts for s in a.samples],
            })
        print(f"  {strategy} {task.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows, time.perf_counter() - started


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "n": n,
        "valid": sum(r["valid"] for r in rows) / n,
        "field_f1": sum(field_f1(r["output"], r["gold"], valid=r["valid"]) for r in rows) / n,
        "exact": sum(exact_match(r["output"], r["gold"], valid=r["valid"]) for r in rows) / n,
        "calibration": reliability(rows),
        "agreement": agreement_vs_accuracy(rows) if any(r["agreement"] for r in rows) else None,
    }


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default=str(ROOT / "examples" / "suites" / "snips.yaml"))
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0,
                        help="only N cases, taken round-robin over the intents (0: all)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="prompts per batched call (a vote has N rows each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write every row here (JSON lines)")
    parser.add_argument("--from-rows", type=Path, default=None, help="print the tables of a run saved with --out")
    args = parser.parse_args(argv)

    if args.from_rows:
        lines = [json.loads(line) for line in args.from_rows.read_text(encoding="utf-8").splitlines() if line.strip()]
        meta = lines[0]["meta"]
        greedy = [r for r in lines[1:] if r["strategy"] == "greedy"]
        vote = [r for r in lines[1:] if r["strategy"] == "vote"]
    else:
        from guardrail.backends.local import LocalBackend

        suite = load_suite(args.suite)
        if args.limit:
            from guardrail.report.run import _limit

            suite = _limit(suite, args.limit)
        backend = LocalBackend(threads=args.threads)
        backend.load()
        load = os.getloadavg()
        greedy, greedy_s = run("greedy", suite, backend, args)
        vote, vote_s = run("vote", suite, backend, args)
        meta = {"cases": len(suite), "load": list(load), "greedy_s": greedy_s, "vote_s": vote_s,
                "samples": args.samples, "temperature": args.temperature, "seed": args.seed}
        if args.out:
            with args.out.open("w", encoding="utf-8") as handle:
                for row in [{"meta": meta}, *greedy, *vote]:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print_tables(meta, greedy, vote)
    return 0


def print_tables(meta: dict[str, Any], greedy: list[dict[str, Any]], vote: list[dict[str, Any]]) -> None:
    label = f"vote({meta['samples']}), T={meta['temperature']:g}, seed {meta['seed']}"
    results = [("greedy", summary(greedy), meta["greedy_s"]), (label, summary(vote), meta["vote_s"])]
    load = meta["load"]
    print(f"{meta['cases']} cases; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
    print("| strategy | valid | field F1 | exact match | confidence ECE | confidence AUROC | fields rated | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s, seconds in results:
        cal = s["calibration"]
        print(f"| {name} | {_f(s['valid'], 2)} | {_f(s['field_f1'])} | {_f(s['exact'])} | {_f(cal['ece'])} | "
              f"{_f(cal['auroc'])} | {cal['n']} | {seconds:.0f} |")
    agree = results[1][1]["agreement"]
    if agree:
        print(f"\nVote agreement (fields the answer gives a value for, n={agree['n']}): accuracy "
              f"{_f(agree['unanimous']['accuracy'])} where all samples agreed (n={agree['unanimous']['n']}), "
              f"{_f(agree['split']['accuracy'])} where they did not (n={agree['split']['n']}); "
              f"AUROC of agreement {_f(agree['auroc'])}. Gold fields the answer left out: "
              f"{agree['omitted']['n']}, {agree['omitted']['unanimous']} of them by every sample.")
        print("\n| agreement | fields | accuracy |\n|---|---|---|")
        for level, cell in agree["levels"].items():
            print(f"| {level} | {cell['n']} | {_f(cell['accuracy'])} |")
    for name, s, _ in results:
        print(f"\nReliability, {name} (confidence bin: fields, mean confidence, accuracy):")
        print("| bin | fields | confidence | accuracy |\n|---|---|---|---|")
        for cell in s["calibration"]["bins"]:
            if cell["n"]:
                print(f"| {cell['lo']:.1f}–{cell['hi']:.1f} | {cell['n']} | {_f(cell['confidence'])} | "
                      f"{_f(cell['accuracy'])} |")
    flipped = [(g, v) for g, v in zip(greedy, vote, strict=True)
               if field_f1(g["output"], g["gold"], valid=g["valid"]) != field_f1(v["output"], v["gold"], valid=v["valid"])]
    print(f"\nCases where greedy and vote differ in field F1: {len(flipped)}")
    for g, v in flipped:
        print(f"- {g['task']}/{g['case_id']}: greedy {_f(field_f1(g['output'], g['gold'], valid=g['valid']), 2)} "
              f"-> vote {_f(field_f1(v['output'], v['gold'], valid=v['valid']), 2)}")


if __name__ == "__main__":
    raise SystemExit(main())
