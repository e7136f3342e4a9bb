"""Benchmark the llama.cpp local runtime against the transformers one; prints a Markdown table.

Same model (the embedded SmolLM2-135M-Instruct: its Q4_1 GGUF run by llama.cpp, against the
same file dequantised to float32 for transformers), same prompts (the first four invoice and
contact cases of ``examples/suites/invoice_contact.yaml``, alternating, as chat messages with
the suite's instruction and few-shot examples), greedy, the same ``max_new_tokens``, both
constrained by llguidance to the same decoding schema. One request at a time (batch 1): each
backend first loads, compiles both schemas and answers one short request per schema (warm-up),
then every prompt is timed once, llama.cpp then transformers, so both see the same load. The
prompts alternate between the two tasks, so llama.cpp's reuse of the KV cache for a prefix
shared with the previous request (the system prompt and examples) barely helps here: the
figures are for unrelated consecutive requests.

Usage::

    .venv/bin/python benchmarks/bench_llamacpp.py                  # 1 thread each (about 90 s on an idle machine)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1", help="comma-separated thread counts, each run on both runtimes")
    parser.add_argument("--per-task", type=int, default=4, help="cases per task (2 tasks)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    from guardrail.backends.llamacpp import LlamaCppBackend
    from guardrail.backends.local import LocalBackend

    items = prompts(args.per_task)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    print(f"# bench_llamacpp: {len(items)} prompts, greedy, constrained, max_new_tokens={args.max_new_tokens}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
    summary = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        fast = LlamaCppBackend(n_threads=threads)
        slow = LocalBackend(threads=threads)
        for backend in (fast, slow):
            for _, schema, messages in {id(s): (c, s, m) for c, s, m in items}.values():
                backend.prepare(schema)
                backend.generate([messages], schema, sampling.but(max_new_tokens=4))  # warm-up
        rows = []
        pairs = []
        for case, schema, messages in items:
            a = fast.generate([messages], schema, sampling)[0]
            b = slow.generate([messages], schema, sampling)[0]
            pairs.append((a, b))
            rows.append([case, str(a.prompt_tokens), f"{a.duration_s:.2f}", str(a.completion_tokens),
                         "yes" if valid(schema, a.text) else "no", f"{b.duration_s:.2f}", str(b.completion_tokens),
                         "yes" if valid(schema, b.text) else "no",
                         "yes" if a.text == b.text else "no", f"{a.duration_s / b.duration_s:.2f}"])
        print(f"## {threads} thread{'s' if threads > 1 else ''}: llama.cpp (n_threads={threads}) vs transformers "
              f"(threads={threads})\n")
        print(table(["case", "prompt tokens", "llama.cpp s", "tokens", "valid", "transformers s", "tokens", "valid",
                     "same output", "llama.cpp / transformers"], rows) + "\n")
        fast_s = [a.duration_s or 0.0 for a, _ in pairs]
        slow_s = [b.duration_s or 0.0 for _, b in pairs]
        fast_tok = sum(a.completion_tokens or 0 for a, _ in pairs)
        slow_tok = sum(b.completion_tokens or 0 for _, b in pairs)
        summary.append([
            str(threads),
            f"{statistics.median(fast_s):.2f} / {statistics.median(slow_s):.2f}",
            f"{statistics.median(fast_s) / statistics.median(slow_s):.2f}",
            f"{fast_tok / sum(fast_s):.1f} / {slow_tok / sum(slow_s):.1f}",
            f"{(fast_tok / sum(fast_s)) / (slow_tok / sum(slow_s)):.2f}",
            f"{1000 * sum(fast_s) / fast_tok:.0f} / {1000 * sum(slow_s) / slow_tok:.0f}",
            f"{sum(valid(s, a.text) for (_, s, _), (a, _) in zip(items, pairs, strict=True))} / "
            f"{sum(valid(s, b.text) for (_, s, _), (_, b) in zip(items, pairs, strict=True))} of {len(items)}",
            f"{sum(a.text == b.text for a, b in pairs)} of {len(items)}",
        ])
        print(f"load average after {threads} thread(s): {os.getloadavg()[0]:.2f}\n", flush=True)
    print("## Summary (llama.cpp / transformers)\n")
    print(table(["threads", "median latency s", "latency ratio", "tokens/s", "tokens/s ratio", "ms per token",
                 "schema-valid", "same output"], summary))
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
