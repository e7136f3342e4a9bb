"""Schema-valid rate with and without constrained decoding, on the same prompts.

The embedded model answers every case of ``examples/suites/invoice_contact.yaml`` once with the
grammar on and once with it off (no retries, same greedy decoding, same prompt), and we count
first-attempt schema-valid outputs and field F1 against gold.

Run: .venv/bin/python benchmarks/bench_validity.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from guardrail import Guard
from guardrail.metrics import field_f1
from guardrail.suite import load_suite

SUITE = Path(__file__).resolve().parents[1] / "examples" / "suites" / "invoice_contact.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--cases", type=int, default=0, help="first N cases per schema (0: all)")
    args = parser.parse_args()
    suite = load_suite(SUITE)
    print("| schema | cases | mode | valid at attempt 1 | mean field F1 | seconds |")
    print("|---|---|---|---|---|---|")
    for task in suite.tasks:
        guard = Guard(task.schema, retries=0, max_new_tokens=args.max_new_tokens, threads=args.threads,
                      repetition_penalty=1.15)
        cases = task.cases[: args.cases] if args.cases else task.cases
        prompts = [task.messages(case.input) for case in cases]
        for constrained in (True, False):
            start = time.perf_counter()
            results = guard.run_many(prompts, concurrency=16, constrained=constrained)
            seconds = time.perf_counter() - start
            valid = sum(r.ok for r in results)
            f1 = sum(field_f1(r.data, case.gold, valid=r.ok) for r, case in zip(results, cases, strict=True))
            mode = "constrained" if constrained else "unconstrained"
            print(f"| {task.name} | {len(results)} | {mode} | {valid}/{len(results)} | "
                  f"{f1 / len(results):.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
