"""Grammar engines on real-world schemas: coverage, cold compile time, soundness (issue 6, target 1).

    .venv/bin/python benchmarks/bench_engines.py [--bound 5] [--limit N] [--json out.json]

Every schema of ``../shared/data/jsonschemabench-sample/dev`` is compiled, exactly as
``LocalBackend`` compiles it (the decoding schema: capped strings, closed objects), by each engine
in a worker process of its own, one schema at a time under a time bound: a compile that runs past
it is killed with its worker and counts as a timeout. Then each test instance of the schema is
laid out as guardrail's decoder writes JSON (``SEPARATORS``), tokenised, and fed to the compiled
grammar: an *invalid* instance that the grammar accepts would be output that constrained decoding
can produce and the validator rejects (unsound); a valid instance it rejects is only output the
decoder cannot produce (the string cap, closed objects, or an engine limit).

The "guardrail default" column is the fallback chain ``LocalBackend`` uses: the first engine of
llguidance, xgrammar, outlines_core that compiles the schema; its compile time includes the
refusals before it. Workers build the engines' tokenizer adapters from the embedded model's
tokenizer and a weightless (meta-device) model, so nothing but compile time is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "jsonschemabench-sample" / "dev"
ENGINES = ("llguidance", "xgrammar", "outlines_core")
#: The engine measured on a sample only: 1-30 s per schema would take the run past 15 minutes.
SLOW_ENGINE = "outlines_core"


# -- the worker: one engine, schemas from stdin, one JSON line per schema on stdout ------------


def worker(engine_name: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    import outlines

    from guardrail.backends.embedded import embedded_cache_dir, file_digest, find_embedded_gguf, load_embedded
    from guardrail.backends.local import SEPARATORS, EngineRefused, decoding_schema
    from guardrail.backends.local.engines import ENGINE_CLASSES as _ENGINE_CLASSES
    from guardrail.errors import GuardrailError
    from guardrail.schema import Schema
    from guardrail.validation import validate

    entry = embedded_cache_dir(file_digest(find_embedded_gguf()))
    if not entry.is_dir():
        load_embedded()  # writes the converted-weights cache the tokenizer is read from
    tokenizer = AutoTokenizer.from_pretrained(entry)
    with torch.device("meta"):  # the adapters need a model object, not its weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(entry))
    engine = _ENGINE_CLASSES[engine_name](outlines.from_transformers(model, tokenizer))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = Path(line.strip())
        document = json.loads(path.read_text(encoding="utf-8"))
        row: dict[str, Any] = {"name": path.name}
        try:
            schema = Schema.load(document["schema"], name=path.stem)
        except GuardrailError as exc:
            row.update(status="guardrail-refused", reason=str(exc).splitlines()[0][:160])
            print(json.dumps(row), flush=True)
            continue
        target = decoding_schema(schema.json_schema, forbid_newlines=engine.forbid_newlines,
                                 cap_patterns=engine.cap_patterns)
        started = time.perf_counter()
        try:
            engine.admit(target)  # what LocalBackend does first: refuse a schema the engine would widen
            compiled = engine.compile(json.dumps(target))
        except EngineRefused as exc:
            row.update(status="refused", reason=str(exc).splitlines()[0][:160] if str(exc) else "refused",
                       compile_s=time.perf_counter() - started)
            print(json.dumps(row), flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - an engine crash is a finding, not the end of the run
            row.update(status="crashed", reason=f"{type(exc).__name__}: {exc}"[:160])
            print(json.dumps(row), flush=True)
            continue
        row.update(status="compiled", compile_s=time.perf_counter() - started, instances=[])
        for test in document.get("tests", []):
            text = json.dumps(test["data"], separators=SEPARATORS, ensure_ascii=False)
            tokens = tokenizer.encode(text, add_special_tokens=False)
            row["instances"].append({"label": bool(test["valid"]), "validator": validate(schema, text).ok,
                                     "grammar": engine.accepts(compiled, tokens)})
        print(json.dumps(row), flush=True)


# -- the driver ---------------------------------------------------------------------------------


class Worker:
    """One engine's worker process, with a started spare that takes over after a timeout.

    A schema that runs past the bound is abandoned by killing its process; the spare (started in
    the background, so its 5 s of imports overlap the work) answers the next schema at once.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.process = self._spawn()
        self.spare = self._spawn()
        self._wait_ready(self.process)

    def _spawn(self) -> subprocess.Popen[str]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        return subprocess.Popen([sys.executable, __file__, "--worker", self.engine], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def _wait_ready(self, process: subprocess.Popen[str]) -> None:
        line = self._readline(process, 180.0)
        assert line and json.loads(line).get("ready"), f"{self.engine} worker did not start"

    @staticmethod
    def _readline(process: subprocess.Popen[str], timeout: float) -> str | None:
        import selectors

        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        return process.stdout.readline() or None

    def run(self, path: Path, bound: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        started = time.perf_counter()
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        line = self._readline(self.process, bound)
        if line is None:
            timed_out = time.perf_counter() - started >= bound * 0.99
            self.process.kill()
            self.process.wait()
            self.process, self.spare = self.spare, self._spawn()
            self._wait_ready(self.process)
            return {"name": path.name, "status": "timeout" if timed_out else "crashed",
                    "reason": f"no answer within {bound:g} s"}
        return json.loads(line)  # type: ignore[no-any-return]

    def stop(self) -> None:
        for process in (self.process, self.spare):
            process.kill()
            process.wait()


def measure(paths: list[Path], bound: float, slow_every: int) -> dict[str, list[dict[str, Any]]]:
    """Per engine, per schema. outlines_core (seconds per schema) runs on every ``slow_every``-th
    schema plus every schema the other engines both refuse, so the default chain is still exact."""
    results: dict[str, list[dict[str, Any]]] = {}
    for engine in ENGINES:
        worker_ = Worker(engine)
        started = time.perf_counter()
        results[engine] = []
        for index, path in enumerate(paths):
            others_refused = all(results[e][index]["status"] != "compiled" for e in results if e != engine)
            if engine == SLOW_ENGINE and index % slow_every and not others_refused:
                results[engine].append({"name": path.name, "status": "skipped"})
                continue
            results[engine].append(worker_.run(path, bound))
        worker_.stop()
        print(f"{engine}: {sum(r['status'] != 'skipped' for r in results[engine])} schemas in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return results


def chain(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What LocalBackend's fallback order yields per schema: the first engine that compiles."""
    rows = []
    for per_engine in zip(*(results[e] for e in ENGINES), strict=True):
        spent = 0.0
        chosen: dict[str, Any] = {"name": per_engine[0]["name"], "status": "unconstrained", "engine": None}
        for engine, row in zip(ENGINES, per_engine, strict=True):
            spent += row.get("compile_s", 0.0) if row["status"] != "timeout" else 0.0
            if row["status"] == "compiled":
                chosen = {**row, "engine": engine, "compile_s": spent}
                break
            if row["status"] == "guardrail-refused":
                chosen = row
                break
        rows.append(chosen)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in rows if r["status"] != "skipped"]
    compiled = [r for r in rows if r["status"] == "compiled"]
    times = sorted(r["compile_s"] for r in compiled)
    instances = [i for r in compiled for i in r["instances"]]
    return {
        "schemas": len(rows),
        "compiled": len(compiled),
        "refused": sum(r["status"] == "refused" for r in rows),
        "timeout": sum(r["status"] == "timeout" for r in rows),
        "crashed": sum(r["status"] == "crashed" for r in rows),
        "unconstrained": sum(r["status"] == "unconstrained" for r in rows),
        "median_s": statistics.median(times) if times else None,
        "p90_s": times[int(0.9 * (len(times) - 1))] if times else None,
        "invalid": sum(not i["validator"] for i in instances),
        "unsound": sum(i["grammar"] and not i["validator"] for i in instances),
        "valid": sum(i["validator"] for i in instances),
        "valid_accepted": sum(i["grammar"] and i["validator"] for i in instances),
    }


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(results: dict[str, list[dict[str, Any]]], bound: float, slow_every: int) -> str:
    columns = {**{e: summarize(results[e]) for e in ENGINES}, "guardrail default": summarize(chain(results))}
    best_single = max(ENGINES, key=lambda e: columns[e]["compiled"] / columns[e]["schemas"])
    fastest = min((e for e in ENGINES if columns[e]["median_s"] is not None), key=lambda e: columns[e]["median_s"])
    default = columns["guardrail default"]
    lines = [
        f"Schemas: {default['schemas']} of `jsonschemabench-sample/dev`, compile bound {bound:g} s, one worker "
        f"process per engine, one thread. {SLOW_ENGINE} ran on {columns[SLOW_ENGINE]['schemas']} of them (every "
        f"{slow_every}th, plus any that both other engines refuse): its column is a sample.",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(c) for c in columns.values()) + " |")

    row("compiled (coverage)", lambda c: f"{c['compiled']}/{c['schemas']}")
    row("refused by the engine", lambda c: str(c["refused"]))
    row(f"timed out (> {bound:g} s)", lambda c: str(c["timeout"]))
    row("crashed", lambda c: str(c["crashed"]))
    row("left to validation alone (no engine compiles it soundly)", lambda c: str(c["unconstrained"]) if c is default
        else "–")
    row("median cold compile", lambda c: _ms(c["median_s"]))
    row("p90 cold compile", lambda c: _ms(c["p90_s"]))
    row("invalid instances accepted by the grammar (unsound)", lambda c: f"{c['unsound']}/{c['invalid']}")
    row("valid instances the grammar can produce", lambda c: f"{c['valid_accepted']}/{c['valid']}")
    chosen = [r["engine"] for r in chain(results) if r.get("engine")]
    lines += [
        "",
        f"Default chain: engines chosen {', '.join(f'{e} {chosen.count(e)}' for e in ENGINES)}. "
        f"Coverage {default['compiled']} against {columns[best_single]['compiled']} for the best single engine "
        f"({best_single}); median compile {_ms(default['median_s'])} against {_ms(columns[fastest]['median_s'])} for "
        f"the fastest single engine ({fastest}), ratio "
        f"{default['median_s'] / columns[fastest]['median_s']:.2f}.",
    ]
    unsound = [(e, r["name"]) for e in ENGINES for r in results[e] if r["status"] == "compiled"
               and any(i["grammar"] and not i["validator"] for i in r["instances"])]
    if unsound:
        lines += ["", "Schemas where a grammar accepts an invalid instance: "
                  + ", ".join(f"{name} ({engine})" for engine, name in unsound) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--bound", type=float, default=5.0, help="seconds one schema may take per engine")
    parser.add_argument("--limit", type=int, default=0, help="only the first N schemas (0: all)")
    parser.add_argument("--slow-every", type=int, default=5,
                        help=f"run {SLOW_ENGINE} on every Nth schema only (1: all)")
    parser.add_argument("--json", type=Path, help="also write the raw per-schema results here")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not DEV.is_dir():
        print(f"no schemas at {DEV}", file=sys.stderr)
        return 2
    paths = sorted(DEV.glob("*.json"))
    paths = paths[: args.limit] if args.limit else paths
    results = measure(paths, args.bound, args.slow_every)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown(results, args.bound, args.slow_every))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
