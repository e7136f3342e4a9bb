"""Benchmark the local backend on this machine; prints Markdown tables.

Measures, for the embedded SmolLM2-135M-Instruct:

1. load time: cold (dequantize the GGUF file) versus the converted-weights cache, each in a fresh
   process so imports and file caches are honest;
2. per grammar engine and shipped schema: engine set-up (vocabulary conversion, once per model)
   and cold compile time.

Throughput is in ``bench_throughput.py``, real-world schemas in ``bench_engines.py``.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_local.py            # about a minute and a half
    python benchmarks/bench_local.py --skip-cold                 # faster

Uses the schemas in ``schemas/*.json`` when present, else small stand-ins. Timings on a shared
CPU are noisy: run it on an idle machine and compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from md_table import table  # noqa: E402

from guardrail.backends import local  # noqa: E402
from guardrail.backends.local import ENGINES, LocalBackend  # noqa: E402
from guardrail.schema import Schema  # noqa: E402

# Stand-ins for a checkout without schemas/.
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


def load_times(skip_cold: bool) -> list[tuple[str, float, float]]:
    """(kind, import seconds, load seconds), each measured in a fresh process."""
    code = (
        "import json, sys, time; t = time.perf_counter(); import torch, transformers; "
        # transformers imports a model's modules lazily, at its first from_pretrained: count them here.
        "from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, GenerationConfig; "
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


def engine_rows(schemas: dict[str, Schema], engines: list[str]) -> list[list[str]]:
    """Per engine: tokenizer set-up once, then a cold compile of each shipped schema (no disk cache)."""
    rows = []
    for engine in engines:
        backend = LocalBackend(engine=engine, grammar_cache=False)
        loaded = backend.load()
        started = time.perf_counter()
        try:
            loaded.engine(engine)
            setup = f"{time.perf_counter() - started:.2f}"
        except local.EngineRefused as exc:
            rows.append([engine, "-", f"unavailable: {exc}", "", ""])
            continue
        for name, schema in schemas.items():
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                started = time.perf_counter()
                used = backend.engine_for(schema) or "unconstrained"
                compile_s = time.perf_counter() - started
            note = "" if used == engine else f"refused: fell back to {used}"
            rows.append([engine, name, setup, f"{compile_s * 1000:.1f}", note])
            setup = ""
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cold", action="store_true", help="skip the 20-40 s cold GGUF load")
    parser.add_argument("--skip-load", action="store_true", help="skip load timings altogether")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--schemas", default="", help="comma-separated names (default: all in schemas/)")
    args = parser.parse_args()

    print(f"torch threads {__import__('torch').get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    if not args.skip_load:
        rows = [[kind, f"{imports:.1f}", f"{load:.1f}", f"{imports + load:.1f}"]
                for kind, imports, load in load_times(args.skip_cold)]
        print("### Embedded model load (a fresh process each)\n")
        print("imports: torch, transformers and the Llama model and tokenizer modules (paid by any process "
              "that runs this model through transformers); load: reading the weights and tokenizer.\n")
        print(table(["load", "imports s", "load s", "total s"], rows) + "\n", flush=True)

    schemas = load_schemas([s for s in args.schemas.split(",") if s] or None)
    engines = [e for e in args.engines.split(",") if e]
    print("### Cold compile of the shipped schemas, per engine\n")
    print(table(["engine", "schema", "tokenizer set-up s (once)", "compile ms", "note"],
                engine_rows(schemas, engines)))


if __name__ == "__main__":
    main()
