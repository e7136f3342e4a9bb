"""Benchmark the llama.cpp local runtime against the transformers one; prints a Markdown table.

Same model (the embedded SmolLM2-135M-Instruct: its Q4_1 GGUF run by llama.cpp, against the
same file dequantised to float32 for transformers), same prompts (the first four invoice and
contact cases of ``examples/suites/invoice_contact.yaml``, alternating, as chat messages with
the suite's instruction and few-shot examples), greedy, the same ``max_new_tokens``, both
constrained by llguidance to the same decoding schema. One request at a time (batch 1): each
backend first loads, compiles both schemas and answers one short request per schema (warm-up),
then every prompt is timed once on each backend in turn, so all see the same load.

The prompts alternate between the two tasks. llama.cpp keeps a KV-cache snapshot of each task's
shared prefix (instruction and examples), so it evaluates only each case's own text; with
``--cold``, a "no snapshots" run (``prefix_cache_mb=0``) evaluates every prompt in full, as
transformers does. Latency is the whole request (prompt and output); tokens/s divides output
tokens by it.

Usage::

    .venv/bin/python benchmarks/bench_llamacpp.py                  # 1 thread each (about 100 s)
    .venv/bin/python benchmarks/bench_llamacpp.py --cold           # also llama.cpp without snapshots
    .venv/bin/python benchmarks/bench_llamacpp.py --threads 1,2    # also 2 threads each

Timings on a shared CPU are noisy: the load average is printed before and after; compare
numbers from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from md_table import table  # noqa: E402

from guardrail.backends.base import Sampling  # noqa: E402
from guardrail.schema import Schema  # noqa: E402
from guardrail.suite import load_suite  # noqa: E402

SUITE = ROOT / "examples" / "suites" / "invoice_contact.yaml"


def prompts(per_task: int) -> list[tuple[str, Schema, list[dict[str, str]]]]:
    """(case id, schema, chat messages): the first ``per_task`` cases of each task, alternating."""
    suite = load_suite(SUITE)
    columns = [[(c.id, t.schema, t.messages(c.input)) for c in t.cases[:per_task]] for t in suite.tasks]
    return [row for group in zip(*columns, strict=False) for row in group]


def valid(schema: Schema, text: str) -> bool:
    try:
        return not list(schema.validator.iter_errors(json.loads(text)))
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1", help="comma-separated thread counts, each run on both runtimes")
    parser.add_argument("--per-task", type=int, default=4, help="cases per task (2 tasks)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--cold", action="store_true",
                        help="also run llama.cpp without prefix snapshots (prefix_cache_mb=0): about 40 s more")
    args = parser.parse_args()

    from guardrail.backends.llamacpp import LlamaCppBackend
    from guardrail.backends.local import LocalBackend

    items = prompts(args.per_task)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    print(f"{len(items)} prompts, greedy, constrained, max_new_tokens={args.max_new_tokens}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
    summary = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        runs: dict[str, Any] = {"llama.cpp": LlamaCppBackend(n_threads=threads)}
        if args.cold:
            runs["llama.cpp, no snapshots"] = LlamaCppBackend(n_threads=threads, prefix_cache_mb=0)
        runs["transformers"] = LocalBackend(threads=threads)
        for backend in runs.values():
            for _, schema, messages in {id(s): (c, s, m) for c, s, m in items}.values():
                backend.prepare(schema)
                backend.generate([messages], schema, sampling.but(max_new_tokens=4))  # warm-up
        out: dict[str, list[Any]] = {name: [] for name in runs}
        rows = []
        for case, schema, messages in items:
            row = [case]
            for name, backend in runs.items():
                done = backend.generate([messages], schema, sampling)[0]
                out[name].append(done)
                row += [f"{done.duration_s:.2f}", str(done.completion_tokens), "yes" if valid(schema, done.text) else "no"]
            row.insert(1, str(out["llama.cpp"][-1].prompt_tokens))
            fast, slow = out["llama.cpp"][-1], out["transformers"][-1]
            row += ["yes" if fast.text == slow.text else "no",
                    *(f"{out[name][-1].duration_s / slow.duration_s:.2f}" for name in runs if name != "transformers")]
            rows.append(row)
        print(f"### {threads} thread{'s' if threads > 1 else ''}: llama.cpp (n_threads={threads}) vs transformers "
              f"(threads={threads})\n")
        headers = ["case", "prompt tokens"]
        for name in runs:
            headers += [f"{name} s", "tokens", "valid"]
        headers += ["same output", *(f"{name} / transformers" for name in runs if name != "transformers")]
        print(table(headers, rows) + "\n")
        slow_s = [g.duration_s or 0.0 for g in out["transformers"]]
        slow_rate = sum(g.completion_tokens or 0 for g in out["transformers"]) / sum(slow_s)
        for name in runs:
            seconds = [g.duration_s or 0.0 for g in out[name]]
            tokens = sum(g.completion_tokens or 0 for g in out[name])
            summary.append([
                str(threads), name,
                f"{statistics.median(seconds):.2f}",
                f"{statistics.median(seconds) / statistics.median(slow_s):.2f}",
                f"{tokens / sum(seconds):.1f}",
                f"{tokens / sum(seconds) / slow_rate:.2f}",
                f"{1000 * sum(seconds) / tokens:.0f}",
                f"{sum(valid(s, g.text) for (_, s, _), g in zip(items, out[name], strict=True))} of {len(items)}",
                f"{sum(g.text == t.text for g, t in zip(out[name], out['transformers'], strict=True))} of {len(items)}",
            ])
        print(f"load average after {threads} thread(s): {os.getloadavg()[0]:.2f}\n", flush=True)
    print("### Summary (ratios: against transformers at the same thread count)\n")
    print(table(["threads", "runtime", "median latency s", "latency ratio", "tokens/s", "tokens/s ratio",
                 "ms per output token", "schema-valid", "same output as transformers"], summary))
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
