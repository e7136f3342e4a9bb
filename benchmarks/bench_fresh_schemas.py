"""A stream of schemas the guard has never seen, one call each: guardrail against plain outlines (issue 15).

    .venv/bin/python benchmarks/bench_fresh_schemas.py [--schemas 30] [--tokens 256]

Function-calling schemas from ``../shared/data/jsonschemabench-sample/dev`` (BFCL and Glaive,
spread evenly over the sorted file names; never ``holdout/``), each with a short request built
from its first valid instance ("Request: base = 10; height = 5 ..."). Each schema gets one
``Guard(schema, retries=2).run(request)`` on the default embedded model, a fresh guard per schema,
and one plain outlines call (``outlines.Generator(model, JsonSchema(schema))`` on the same
transformers model and tokenizer, the request rendered as guardrail renders it: the model's chat template, or the plain text
for a model without one; the same token limit), timed
from the schema to the answer, so grammar building is in both. One schema outside the 30 is run
first by both, untimed: loading and per-model set-up are not part of a call.

Per side: p50, p95, max and total seconds per call, tokens, valid answers; for guardrail also the
calls that needed a re-ask, so a slow tail can be traced to its cause.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

from md_table import table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEV = ROOT.parent / "shared" / "data" / "jsonschemabench-sample" / "dev"
FUNCTION_CALLING = ("BFCL_", "Glaiveai2K")


def request_for(value: Any) -> str:
    """A short request naming every leaf of a valid instance: what a user would ask for."""
    parts: list[str] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, key)
        elif isinstance(node, list) and not all(isinstance(x, (str, int, float, bool)) for x in node):
            for child in node:
                walk(child, name)
        else:
            parts.append(f"{name} = {json.dumps(node)}")

    walk(value, "")
    return "Request: " + "; ".join(parts[:12])


def schemas(count: int) -> list[tuple[str, dict[str, Any], str]]:
    files = sorted(p for p in DEV.glob("*.json") if p.name.startswith(FUNCTION_CALLING))
    if not files:
        raise SystemExit(f"no function-calling schemas under {DEV}: is ../shared/data there?")
    step = max(1, len(files) // (count + 1))
    chosen = []
    for path in files[::step][: count + 1]:
        data = json.loads(path.read_text())
        valid = next((t["data"] for t in data["tests"] if t["valid"]), None)
        if valid is not None:
            chosen.append((path.stem, data["schema"], request_for(valid)))
    return chosen


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemas", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=256, help="token limit per call (Guard's default)")
    parser.add_argument("--detail", action="store_true", help="also print one line per call")
    args = parser.parse_args(argv)
    import jsonschema
    import outlines
    import torch
    from outlines.types import JsonSchema

    from guardrail import Guard
    from guardrail.backends.local import LocalBackend
    from guardrail.backends.local.text import render

    warnings.filterwarnings("ignore")
    backend = LocalBackend()
    loaded = backend.load()
    plain = outlines.from_transformers(loaded.model, loaded.tokenizer)
    work = schemas(args.schemas)
    warm, work = work[0], work[1:]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {backend.model_name}, "
          f"outlines {version('outlines')}, load average "
          f"{os.getloadavg()[0]:.1f} at the start\n")

    def ours(schema: dict[str, Any], request: str) -> tuple[float, int, bool, int]:
        started = time.perf_counter()
        result = Guard(schema, llm=backend, retries=2, max_new_tokens=args.tokens).run(request)
        seconds = time.perf_counter() - started
        tokens = sum(a.completion_tokens or 0 for a in result.attempts)
        return seconds, tokens, result.ok, len(result.attempts)

    def theirs(schema: dict[str, Any], request: str) -> tuple[float, int, bool, int]:
        chat = render(loaded.tokenizer, request)[0]  # the model's chat template, or plain text for a base model
        started = time.perf_counter()
        generator = outlines.Generator(plain, JsonSchema(json.dumps(schema)))
        text = generator(chat, max_new_tokens=args.tokens)
        seconds = time.perf_counter() - started
        tokens = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
        try:
            jsonschema.validate(json.loads(text), schema)
            ok = True
        except (ValueError, jsonschema.ValidationError):
            ok = False
        return seconds, tokens, ok, 1

    sides = {"guardrail": ours, "plain outlines": theirs}
    for run in sides.values():
        run(warm[1], warm[2])  # untimed: first-call set-up of each side
    results: dict[str, list[tuple[float, int, bool, int]]] = {name: [] for name in sides}
    for name, schema, request in work:
        for side, run in sides.items():  # alternated, so a change of machine load falls on both
            results[side].append(run(schema, request))
            if args.detail:
                s, t, ok, n = results[side][-1]
                print(f"{side:15} {name:40} {s:6.2f} s {t:4d} tok ok={ok} attempts={n}", flush=True)
    rows = []
    for side, got in results.items():
        seconds = [g[0] for g in got]
        p50 = statistics.median(seconds)
        rows.append([side, len(got), f"{p50:.2f}", f"{percentile(seconds, 0.95):.2f}",
                     f"{percentile(seconds, 0.95) / p50:.1f}", f"{max(seconds):.2f}", f"{sum(seconds):.1f}",
                     sum(g[1] for g in got), f"{sum(g[2] for g in got)}/{len(got)}",
                     sum(g[3] > 1 for g in got) if side == "guardrail" else ""])
    ours_total, theirs_total = (sum(g[0] for g in results[s]) for s in sides)
    print(f"{len(work)} function-calling schemas of `jsonschemabench-sample/dev`, a fresh guard each, "
          f"{args.tokens} tokens at most per call.\n")
    print(table(["side", "calls", "p50 s", "p95 s", "p95 / p50", "max s", "total s", "tokens", "valid",
                 "calls re-asked"], rows))
    print(f"\nguardrail total / plain outlines total: **{ours_total / theirs_total:.2f}**")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
