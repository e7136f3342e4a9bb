"""Compile once, constrained vs unconstrained speed, and batched report runs (issue 6, targets 2, 4, 5).

    .venv/bin/python benchmarks/bench_throughput.py [--threads 0] [--only overhead,disk,ratio,report]

1. **Warm-call overhead** (target 2): ``Guard.run`` on a warm guard, minus the time spent inside
   the backend's ``generate``, over 10 calls; and the compile counter before and after.
2. **Grammar cache across processes** (target 2): a fresh process prepares a schema with
   xgrammar and with outlines_core (compile, write the cache), then a second fresh process
   prepares it again (read the cache); llguidance is shown for scale (it is not cached).
3. **Constrained / unconstrained tokens/s** (target 5) at batch 1 and 16: every row generates
   exactly ``--tokens`` tokens in both modes (a long counting answer that no row finishes early),
   so the ratio is the cost of masking alone. A second table uses extraction prompts, where
   rows end at different steps, and compares time per decoding step.
4. **Batched report runs** (target 4): ``run_report`` on the same 16 SNIPS prompts (one task,
   clean plus three perturbation families), batch 1 against batch 16, constrained, counting
   every generated token of every attempt.

Ratios come from one run of this script on one machine; ``--threads 0`` leaves torch's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from md_table import table  # noqa: E402

from guardrail import Guard  # noqa: E402
from guardrail.backends.base import Sampling  # noqa: E402
from guardrail.backends.local import LocalBackend  # noqa: E402
from guardrail.prompting import instructions  # noqa: E402
from guardrail.schema import Schema  # noqa: E402

CONTACT_TEXT = "Hi, I'm Maria Garcia from Blue Ocean Ltd. Email maria.garcia@blueocean.com, phone +44 20 7946 0958."
EXTRACTION_TEXTS = [
    CONTACT_TEXT,
    "Reach Tom Baker at tom.baker@example.org or on 555-0199; he works for Acme Corp.",
    "Contact: Dr. Li Wei (li.wei@uni.edu), Department of Physics, no phone listed.",
    "Please call Anna Schmidt, +49 30 1234567, anna@schmidt.de, regarding the Berlin office.",
]
COUNTING = {"type": "array", "items": {"type": "integer"}, "minItems": 400}
COUNTING_PROMPT = [{"role": "user", "content": "Write every whole number from 1 to 400 as one JSON array."}]


class TimedBackend(LocalBackend):
    """The local backend, adding up time and generated tokens inside ``generate``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0
        self.tokens = 0
        self.calls = 0

    def generate(self, prompts: Any, schema: Schema, sampling: Sampling) -> Any:
        started = time.perf_counter()
        out = super().generate(prompts, schema, sampling)
        self.seconds += time.perf_counter() - started
        self.tokens += sum(g.completion_tokens or 0 for g in out)
        self.calls += 1
        return out


# -- 1. warm-call overhead ------------------------------------------------------------------------


def overhead(threads: int | None) -> str:
    backend = TimedBackend(threads=threads)
    guard = Guard("contact", llm=backend, max_new_tokens=8, retries=0)
    guard.run_many([CONTACT_TEXT])  # warm: model loaded, grammar compiled, code paths touched
    compiles = backend.compile_count
    extra = []
    for _ in range(10):
        backend.seconds = 0.0
        started = time.perf_counter()
        guard.run_many([CONTACT_TEXT])
        extra.append(time.perf_counter() - started - backend.seconds)
    rows = [["median", f"{statistics.median(extra) * 1000:.2f}"], ["max", f"{max(extra) * 1000:.2f}"],
            ["compilations during the 10 warm calls", str(backend.compile_count - compiles)]]
    return ("Warm `Guard` call (contact schema, 8 tokens, 10 calls): time outside the model call, in ms "
            "(prompt building, validation, retry bookkeeping).\n\n" + table(["", "ms"], rows))


# -- 2. grammar cache across processes ---------------------------------------------------------------

CHILD = """
import json, sys, time
from guardrail.backends.local import LocalBackend
from guardrail.schema import Schema
backend = LocalBackend(engine=sys.argv[1], grammar_cache=sys.argv[2], threads=1)
backend.load(); backend.load().engine(sys.argv[1])  # model and tokenizer adapter: not what is measured
schema = Schema.load(sys.argv[3])
started = time.perf_counter()
chosen = backend.engine_for(schema)
print(json.dumps({"engine": chosen, "seconds": time.perf_counter() - started,
                  "compiles": backend.compile_count, "disk": backend.disk_load_count}))
"""


def disk_cache(schema_name: str) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for engine in ("llguidance", "xgrammar", "outlines_core"):
            runs = []
            for _ in range(2):
                done = subprocess.run([sys.executable, "-c", CHILD, engine, cache, schema_name], cwd=ROOT,
                                      capture_output=True, text=True, timeout=600,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
                if done.returncode != 0:
                    raise RuntimeError(done.stderr[-2000:])
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            first, second = runs
            how = "read from disk" if second["disk"] else "compiled again (not cached)"
            rows.append([engine, f"{first['seconds'] * 1000:.1f}", f"{second['seconds'] * 1000:.1f}", how,
                         f"{first['seconds'] / max(second['seconds'], 1e-9):.0f}x"])
    return (f"Preparing the `{schema_name}` schema in a fresh process, first and second time (grammar only; "
            "the model load is not included).\n\n"
            + table(["engine", "first process ms", "second process ms", "second process", "speed-up"], rows))


# -- 3. constrained vs unconstrained ------------------------------------------------------------------


def ratio(threads: int | None, tokens: int) -> str:
    backend = LocalBackend(threads=threads)
    counting = Schema.load(COUNTING, name="counting")
    contact = Schema.load("contact")
    backend.prepare(counting)
    backend.prepare(contact)
    fixed, steps = [], []
    for batch in (1, 16):
        rates = {}
        for constrained in (False, True):
            sampling = Sampling(max_new_tokens=tokens, constrained=constrained)
            backend.generate([COUNTING_PROMPT], counting, sampling.but(max_new_tokens=2))  # warm the path
            started = time.perf_counter()
            out = backend.generate([COUNTING_PROMPT] * batch, counting, sampling)
            wall = time.perf_counter() - started
            made = sum(g.completion_tokens or 0 for g in out)
            full = sum(g.finish_reason == "length" for g in out)
            rates[constrained] = made / wall
            fixed.append([batch, "yes" if constrained else "no", made, f"{full}/{batch}", f"{wall:.2f}",
                          f"{made / wall:.1f}"])
        fixed[-1].append(f"**{rates[True] / rates[False]:.2f}**")
        fixed[-2].append("")
        per_step = {}
        prompts = [[*instructions(contact.json_schema), {"role": "user", "content": EXTRACTION_TEXTS[i % 4]}]
                   for i in range(batch)]
        for constrained in (False, True):
            sampling = Sampling(max_new_tokens=tokens, constrained=constrained)
            started = time.perf_counter()
            out = backend.generate(prompts, contact, sampling)
            wall = time.perf_counter() - started
            longest = max(g.completion_tokens or 0 for g in out)
            per_step[constrained] = wall / longest
            steps.append([batch, "yes" if constrained else "no", longest, f"{wall:.2f}",
                          f"{wall / longest * 1000:.1f}"])
        steps[-1].append(f"**{per_step[False] / per_step[True]:.2f}**")
        steps[-2].append("")
    return (f"Counting prompt, {tokens} tokens per row in both modes:\n\n"
            + table(["batch", "constrained", "tokens", "rows that ran the full budget", "wall s", "tokens/s",
                     "constrained / unconstrained"], fixed)
            + "\n\nExtraction prompts (contact schema), rows end at different steps; speed per decoding step:\n\n"
            + table(["batch", "constrained", "steps", "wall s", "ms/step", "step-rate ratio"], steps))


# -- 4. shared prompt prefix ------------------------------------------------------------------------


def prefix(threads: int | None, tokens: int = 32, task_name: str = "AddToPlaylist") -> str:
    from guardrail.suite import load_suite

    suite = load_suite(ROOT / "examples" / "suites" / "snips.yaml")
    task = next(t for t in suite.tasks if t.name == task_name)
    rows: list[list[Any]] = []
    walls: dict[bool, tuple[float, float]] = {}
    plain_texts: list[str] = []
    for share in (False, True):
        backend = LocalBackend(threads=threads, share_prefix=share)
        guard = Guard(task.schema, llm=backend)
        backend.prepare(task.schema)
        requests = [guard._episode(case.input, {}).request for case in task.cases[:8]]
        sampling = guard.sampling.but(max_new_tokens=tokens)
        started = time.perf_counter()
        batch = backend.generate(requests, task.schema, sampling)
        batch_wall = time.perf_counter() - started
        started = time.perf_counter()
        singles = [backend.generate([r], task.schema, sampling)[0] for r in requests[:4]]
        single_wall = time.perf_counter() - started
        walls[share] = (batch_wall, single_wall)
        texts = [g.text for g in batch + singles]
        same = ("yes" if texts == plain_texts else "no") if share else ""
        plain_texts = plain_texts or texts
        rows.append(["yes" if share else "no", f"{batch_wall:.2f}", f"{single_wall:.2f}", same])
    rows[-1] += [f"**{walls[False][0] / walls[True][0]:.2f}x**", f"**{walls[False][1] / walls[True][1]:.2f}x**"]
    rows[0] += ["", ""]
    prompt_tokens = batch[0].prompt_tokens
    return (f"SNIPS {task_name}, 8 prompts of about {prompt_tokens} tokens (instructions and schema, then the "
            f"text), constrained, {tokens} new tokens at most: one batch of 8, then 4 of them one at a time "
            "(the first batch stores the prefix; the single calls reuse it).\n\n"
            + table(["shared prefix", "batch of 8 s", "4 single calls s", "same outputs", "batch speed-up",
                     "single-call speed-up"], rows))


# -- 5. batched report runs ----------------------------------------------------------------------------


def report_runs(threads: int | None, cases: int = 4, task_name: str = "AddToPlaylist",
                tokens: int = 64, retries: int = 1) -> str:
    from guardrail.report.run import run_report
    from guardrail.suite import Suite, load_suite

    suite = load_suite(ROOT / "examples" / "suites" / "snips.yaml")
    task = next(t for t in suite.tasks if t.name == task_name)
    task = dataclasses.replace(task, cases=task.cases[:cases])
    one_task = Suite(name=f"snips-{task_name}", tasks=[task], description=suite.description)
    rows, rates, walls = [], {}, {}
    for batch in (1, 16):
        backend = TimedBackend(threads=threads)
        backend.prepare(task.schema)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            run = run_report(one_task, out_dir=out, llm=backend, chat=True, batch_size=batch, retries=retries,
                             families=["typos", "case", "distractor"], severities=[0.3], seeds=1,
                             guard_options={"max_new_tokens": tokens})
            wall = time.perf_counter() - started
            results = [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines() if line]
        valid = sum(bool(r.get("valid")) for r in results) / len(results)
        rates[batch] = backend.tokens / wall
        walls[batch] = wall
        rows.append([batch, run.rows_done, backend.calls, backend.tokens, f"{wall:.1f}", f"{backend.tokens / wall:.1f}",
                     f"{valid:.2f}"])
    rows[-1] += [f"**{rates[16] / rates[1]:.1f}x**", f"{walls[1] / walls[16]:.1f}x"]
    rows[0] += ["", ""]
    return (f"`run_report` on SNIPS task {task_name}: {cases} cases x (clean + typos, case, distractor at 0.3) = "
            f"{cases * 4} prompts, constrained, retries {retries}, {tokens} tokens at the first attempt (doubled "
            "after a cut-off).\n\n"
            + table(["batch", "prompts", "model calls", "generated tokens", "wall s", "generated tokens/s",
                     "valid rate", "batched / one at a time", "wall-time speed-up"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per row in the ratio runs")
    parser.add_argument("--only", default="overhead,disk,ratio,prefix,report")
    parser.add_argument("--schema", default="calendar_event", help="schema of the grammar-cache runs")
    args = parser.parse_args(argv)
    threads = args.threads or None
    import torch

    print(f"torch {torch.__version__}, {threads or torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} at the start\n")
    sections = {"overhead": ("Compile once: warm-call overhead", lambda: overhead(threads)),
                "disk": ("Compile once: grammar cache across processes", lambda: disk_cache(args.schema)),
                "ratio": ("Constrained vs unconstrained", lambda: ratio(threads, args.tokens)),
                "prefix": ("Shared prompt prefix", lambda: prefix(threads)),
                "report": ("Batched report runs", lambda: report_runs(threads))}
    for key in args.only.split(","):
        title, run = sections[key.strip()]
        started = time.perf_counter()
        print(f"### {title}\n\n{run()}\n\n({time.perf_counter() - started:.0f} s)\n", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
