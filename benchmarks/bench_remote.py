"""Warm latency per extraction: through an OpenAI-compatible server vs the local transformers backend.

Same model (the embedded SmolLM2-135M-Instruct GGUF), same prompts (the first contact and invoice
cases of ``examples/suites/invoice_contact.yaml``, taken alternately), same guard (its default
instructions, greedy, ``retries=0``, ``max_new_tokens`` 256), both constrained to the schema:

* remote: llama-cpp-python's server (started here on loopback with one thread, or ``--base-url``),
  ``structured="json_object"`` (llama.cpp's grammar, built by the server from the schema);
* local: ``Guard(..., model="embedded", threads=1)`` (transformers + llguidance in this process).

Each prompt runs once to warm up (grammar compile, caches) and once timed, remote then local, so
both see the same machine load. Prints a Markdown table and the ratio remote / local.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_remote.py            # 8 prompts
    .venv/bin/python benchmarks/bench_remote.py --prompts 4 --base-url http://127.0.0.1:8000/v1

Note: the server runs the GGUF's Q4_1 weights as they are (llama.cpp), while the local backend
dequantizes them into float32 for torch, so outputs (and their lengths) can differ: the table
shows tokens per answer and ms per token beside the latency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_server import llama_server  # noqa: E402

from guardrail import Guard, GuardError, Result  # noqa: E402
from guardrail.backends.embedded import find_embedded_gguf  # noqa: E402
from guardrail.suite import Task, load_suite  # noqa: E402

SUITE = ROOT / "examples" / "suites" / "invoice_contact.yaml"


def prompts(n: int) -> list[tuple[Task, str, str]]:
    """(task, case id, input) for the first ``n`` cases, alternating between the suite's tasks."""
    suite = load_suite(SUITE)
    chosen: list[tuple[Task, str, str]] = []
    depth = 0
    while len(chosen) < n:
        added = False
        for task in suite.tasks:
            if depth < len(task.cases) and len(chosen) < n:
                chosen.append((task, task.cases[depth].id, task.cases[depth].input))
                added = True
        if not added:
            break
        depth += 1
    return chosen


def timed(guard: Guard[Any], text: str) -> tuple[float, Result[Any] | None, int | None]:
    started = time.perf_counter()
    try:
        result: Result[Any] | None = guard.run(text)
    except GuardError as error:
        result = None
        tokens = error.attempts[-1].completion_tokens if error.attempts else None
        return time.perf_counter() - started, result, tokens
    return time.perf_counter() - started, result, result.attempts[-1].completion_tokens


@contextlib.contextmanager
def server(base_url: str | None, threads: int) -> Iterator[str]:
    if base_url:
        yield base_url
        return
    with llama_server(find_embedded_gguf(), threads=threads) as url:
        yield url


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="server threads and torch threads")
    parser.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    chosen = prompts(args.prompts)
    load_before = load()
    rows = []
    with server(args.base_url, args.threads) as url:
        remote: dict[str, Guard[Any]] = {}
        local: dict[str, Guard[Any]] = {}
        for task, case_id, text in chosen:
            if task.name not in remote:
                options = {"retries": 0, "max_new_tokens": args.max_new_tokens}
                remote[task.name] = Guard(task.schema.json_schema, base_url=url,
                                          structured="json_object", **options)
                local[task.name] = Guard(task.schema.json_schema, model="embedded", threads=args.threads, **options)
            measured = {}
            for side, guard in (("remote", remote[task.name]), ("local", local[task.name])):
                timed(guard, text)  # warm-up
                measured[side] = timed(guard, text)
            rows.append((task.name, case_id, measured))
            r, lo = measured["remote"], measured["local"]
            print(f"{case_id}: remote {r[0]:.2f} s ({r[2]} tok), local {lo[0]:.2f} s ({lo[2]} tok)", file=sys.stderr)
    load_after = load()

    print("| case | remote s | tokens | valid | local s | tokens | valid | remote / local |")
    print("|---|---|---|---|---|---|---|---|")
    for _, case_id, m in rows:
        (rs, rres, rtok), (ls, lres, ltok) = m["remote"], m["local"]
        print(f"| {case_id} | {rs:.2f} | {rtok} | {'yes' if rres else 'no'} | {ls:.2f} | {ltok} | "
              f"{'yes' if lres else 'no'} | {rs / ls:.2f} |")
    remote_s = [m["remote"][0] for _, _, m in rows]
    local_s = [m["local"][0] for _, _, m in rows]
    remote_tok = sum(m["remote"][2] or 0 for _, _, m in rows)
    local_tok = sum(m["local"][2] or 0 for _, _, m in rows)
    print()
    print(f"median latency: remote {statistics.median(remote_s):.2f} s, local {statistics.median(local_s):.2f} s; "
          f"ratio of medians remote / local = {statistics.median(remote_s) / statistics.median(local_s):.2f}")
    print(f"total: remote {sum(remote_s):.1f} s for {remote_tok} tokens ({1000 * sum(remote_s) / max(remote_tok, 1):.0f} "
          f"ms/token), local {sum(local_s):.1f} s for {local_tok} tokens "
          f"({1000 * sum(local_s) / max(local_tok, 1):.0f} ms/token); ratio of totals = {sum(remote_s) / sum(local_s):.2f}")
    print(f"valid: remote {sum(1 for _, _, m in rows if m['remote'][1])}/{len(rows)}, "
          f"local {sum(1 for _, _, m in rows if m['local'][1])}/{len(rows)}")
    print(f"load average (1, 5, 15 min): before {load_before}; after {load_after}")


if __name__ == "__main__":
    main()
