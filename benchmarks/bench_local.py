"""Benchmark the local backend on this machine; prints Markdown tables.

Measures, for the embedded SmolLM2-135M-Instruct:

1. load time: cold (dequantize the GGUF file) versus the converted-weights cache, each in a fresh
   process so imports and file caches are honest;
2. per grammar engine and schema: engine set-up (vocabulary conversion, once per model), compile
   time, first-call latency (compile + generate) and warm latency (generate only);
3. throughput in tokens/s, constrained versus unconstrained, at several batch sizes, with the
   time spent computing masks per step.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_local.py            # everything (several minutes)
    python benchmarks/bench_local.py --skip-cold --batches 1,8   # faster

Uses the schemas in ``schemas/*.json`` when present, else small stand-ins. Timings on a shared
CPU are noisy: run it on an idle machine and compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from guardrail.backends import local  # noqa: E402
from guardrail.backends.base import Sampling  # noqa: E402
from guardrail.backends.local import ENGINES, LocalBackend  # noqa: E402
from guardrail.prompting import instructions  # noqa: E402
from guardrail.schema import Schema  # noqa: E402

# One text per schema, in the spirit of each; the stand-ins cover a checkout without schemas/.
TEXTS = {
    "contact": "Hi, I'm Maria Garcia from Blue Ocean Ltd. Email maria.garcia@blueocean.com, phone +44 20 7946 0958.",
    "invoice": "INVOICE INV-2024-0117, dated 2024-03-05. From Northwind Traders to Contoso GmbH. 2 x Widget at "
               "12.50 EUR, 1 x Gadget at 30.00 EUR. Total due: 55.00 EUR.",
    "calendar_event": "Team sync with Alice and Bob on 2024-06-12 from 10:00 to 10:30 in Room 4B.",
    "product_review": "The Acme X200 headphones sound great and the battery lasts, but they are heavy. 4 stars, "
                      "I'd recommend them.",
    "support_ticket": "Hello, my order #A-99812 arrived broken and I need a replacement urgently. - Tom Baker",
}
STAND_INS = {
    "contact": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                                 "phone": {"type": ["string", "null"]}},
                "required": ["name", "email", "phone"]},
    "support_ticket": {"type": "object", "properties": {
        "customer_name": {"type": ["string", "null"]},
        "category": {"enum": ["billing", "shipping", "technical", "other"]},
        "summary": {"type": "string"}}, "required": ["customer_name", "category", "summary"]},
}


def load_schemas(names: list[str] | None) -> dict[str, Schema]:
    found = {p.stem: p for p in sorted((ROOT / "schemas").glob("*.json"))}
    chosen: dict[str, Schema] = {}
    for name in names or (list(found) or list(STAND_INS)):
        source: Any = found.get(name) or STAND_INS.get(name)
        if source is None:
            raise SystemExit(f"unknown schema {name!r}")
        chosen[name] = Schema.load(source, name=name)
    return chosen


def prompt_for(schema: Schema, text: str) -> list[dict[str, str]]:
    return [*instructions(schema.json_schema), {"role": "user", "content": text}]


def load_times(skip_cold: bool) -> list[tuple[str, float, float]]:
    """(kind, import seconds, load seconds), each measured in a fresh process."""
    code = (
        "import json, sys, time; t = time.perf_counter(); import torch, transformers; "
        "from guardrail.backends.embedded import load_embedded; imported = time.perf_counter() - t; "
        "e = load_embedded(use_cache=sys.argv[1] == 'cache'); "
        "print(json.dumps({'source': e.source, 'imports': imported, 'load': e.seconds}))"
    )
    rows = []
    kinds = ["cache"] if skip_cold else ["cold", "cache"]
    # Make sure the cache exists before timing the cached load.
    subprocess.run([sys.executable, "-c", code, "cache"], cwd=ROOT, capture_output=True, check=True)
    for kind in kinds:
        done = subprocess.run([sys.executable, "-c", code, kind], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((f"{kind} ({report['source']})", report["imports"], report["load"]))
    return rows


class MaskTimer:
    """Wraps ``_GrammarMask.__call__`` to add up the time spent masking."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.original = local._GrammarMask.__call__

    def __enter__(self) -> MaskTimer:
        timer = self

        def timed(mask: Any, input_ids: Any, scores: Any) -> Any:
            started = time.perf_counter()
            try:
                return timer.original(mask, input_ids, scores)
            finally:
                timer.seconds += time.perf_counter() - started
                timer.calls += 1

        local._GrammarMask.__call__ = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        local._GrammarMask.__call__ = self.original  # type: ignore[method-assign]


def engine_rows(schemas: dict[str, Schema], engines: list[str], max_new: int, repeat: int,
                threads: int | None) -> list[list[str]]:
    rows = []
    for engine in engines:
        backend = LocalBackend(engine=engine, threads=threads)
        loaded = backend.load()
        started = time.perf_counter()
        try:
            loaded.engine(engine)
            setup = f"{time.perf_counter() - started:.2f}"
        except local.EngineRefused as exc:
            rows.append([engine, "-", f"unavailable: {exc}", "", "", "", "", ""])
            continue
        for name, schema in schemas.items():
            prompt = prompt_for(schema, TEXTS.get(name, "Fill in the fields."))
            sampling = Sampling(max_new_tokens=max_new)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                started = time.perf_counter()
                backend.prepare(schema)
                compile_s = time.perf_counter() - started
                used = backend.engine_for(schema) or "unconstrained"
                first = backend.generate([prompt], schema, sampling)[0]
            first_total = compile_s + (first.duration_s or 0.0)
            warm = [backend.generate([prompt], schema, sampling)[0] for _ in range(repeat)]
            warm_s = statistics.median(g.duration_s or 0.0 for g in warm)
            valid = _valid(schema, warm[0].text)
            note = used if used == engine else f"fell back to {used}"
            if caught:
                note += f" ({len(caught)} warning{'s' if len(caught) > 1 else ''})"
            verdict = "valid" if valid else "cut off" if warm[0].finish_reason == "length" else "INVALID"
            rows.append([engine, name, setup, f"{compile_s * 1000:.1f}", f"{first_total:.2f}", f"{warm_s:.2f}",
                         f"{warm[0].completion_tokens}, {verdict}", note])
            setup = ""
    return rows


def _valid(schema: Schema, text: str) -> bool:
    try:
        return not list(schema.validator.iter_errors(json.loads(text)))
    except ValueError:
        return False


def throughput_rows(schema: Schema, batches: list[int], max_new: int, threads: int | None) -> list[list[str]]:
    backend = LocalBackend(threads=threads)
    backend.prepare(schema)
    texts = list(TEXTS.values())
    rows = []
    import torch

    shown = str(threads or torch.get_num_threads())
    for batch in batches:
        prompts = [prompt_for(schema, texts[i % len(texts)]) for i in range(batch)]
        for constrained in (False, True):
            sampling = Sampling(max_new_tokens=max_new, constrained=constrained)
            backend.generate(prompts[:1], schema, sampling.but(max_new_tokens=2))  # warm the path
            with MaskTimer() as timer:
                out = backend.generate(prompts, schema, sampling)
            wall = out[0].duration_s or 0.0
            tokens = sum(g.completion_tokens or 0 for g in out)
            steps = max(g.completion_tokens or 0 for g in out)
            mask = f"{timer.seconds / timer.calls * 1000:.2f}" if timer.calls else "-"
            rows.append([shown, str(batch), "yes" if constrained else "no", str(tokens), f"{wall:.2f}",
                         f"{tokens / wall:.1f}", f"{wall / max(steps, 1) * 1000:.0f}", mask])
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cold", action="store_true", help="skip the 20-40 s cold GGUF load")
    parser.add_argument("--skip-load", action="store_true", help="skip load timings altogether")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--schemas", default="", help="comma-separated names (default: all in schemas/)")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="budget of the throughput runs")
    parser.add_argument("--latency-tokens", type=int, default=128, help="budget of the engine runs")
    parser.add_argument("--repeat", type=int, default=2, help="warm calls per engine and schema (median)")
    parser.add_argument("--threads", default="1,0",
                        help="torch threads for the throughput runs, comma-separated; 0 is torch's default "
                             "(the engine table uses the first)")
    args = parser.parse_args()

    import torch

    print(f"# bench_local: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    if not args.skip_load:
        rows = [[kind, f"{imports:.1f}", f"{load:.1f}"] for kind, imports, load in load_times(args.skip_cold)]
        print("## Embedded model load (fresh process)\n")
        print(table(["load", "imports s", "load s"], rows) + "\n", flush=True)

    schemas = load_schemas([s for s in args.schemas.split(",") if s] or None)
    engines = [e for e in args.engines.split(",") if e]
    threads = [int(t) or None for t in args.threads.split(",") if t]
    print(f"## Engines: compile and latency (batch 1, greedy, max_new_tokens={args.latency_tokens}, "
          f"threads={threads[0] or 'default'})\n")
    rows = engine_rows(schemas, engines, args.latency_tokens, args.repeat, threads[0])
    print(table(["engine", "schema", "engine setup s", "compile ms", "first call s", "warm call s",
                 "tokens, output", "note"], rows) + "\n", flush=True)

    name = "contact" if "contact" in schemas else next(iter(schemas))
    batches = [int(b) for b in args.batches.split(",") if b]
    print(f"## Throughput ({name}, llguidance, max_new_tokens={args.max_new_tokens})\n")
    rows = [row for count in threads for row in throughput_rows(schemas[name], batches, args.max_new_tokens, count)]
    print(table(["threads", "batch", "constrained", "tokens", "wall s", "tokens/s", "ms/step", "mask ms/step"], rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
