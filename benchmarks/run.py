"""Reproduce every table of BENCHMARKS.md on this machine, and write them into it.

    .venv/bin/python benchmarks/run.py [--only engines,throughput] [--dry-run]

Each section of BENCHMARKS.md whose tables a script produces sits between
``<!-- run.py:NAME -->`` and ``<!-- /run.py:NAME -->``; this runs the scripts one after another
(never two at once: they would share the two cores and distort each other), and replaces what is
between the markers with the script's output, stamped with the date, the load average and the
seconds it took. Prose outside the markers is left alone. Sizes are chosen so the default run
fits in 15 minutes on a 2-core CPU; each script's own options give bigger runs. The sections in
``LONG`` are left out of the default run for their length; run them by name (``--only batching``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks" / "BENCHMARKS.md"
PY = sys.executable

#: name -> command line, in the order they run.
SECTIONS: dict[str, list[str]] = {
    "load": [PY, "benchmarks/bench_local.py", "--engines", "llguidance,xgrammar"],
    "engines": [PY, "benchmarks/bench_engines.py", "--bound", "3", "--slow-every", "15"],
    "throughput": [PY, "benchmarks/bench_throughput.py"],
    "validity": [PY, "benchmarks/bench_validity.py", "--threads", "1", "--cases", "3", "--max-new-tokens", "128"],
    "llamacpp": [PY, "benchmarks/bench_llamacpp.py", "--per-task", "3"],
    "remote": [PY, "benchmarks/bench_remote.py", "--prompts", "3"],
    "vote": [PY, "benchmarks/bench_vote.py", "--limit", "4"],
    "streaming": [PY, "benchmarks/bench_streaming.py", "--prompts", "3"],
    # Not in the default run: continuous batching on the main job's prompts (about 16 minutes) and a
    # stream of fresh schemas against plain outlines (about 5 minutes).
    "batching": [PY, "benchmarks/bench_batching.py", "--cases", "8", "--llamacpp", "--main-job"],
    "fresh_schemas": [PY, "benchmarks/bench_fresh_schemas.py", "--schemas", "30"],
    # Not in the default run: greedy vs vote(5) on all 56 SNIPS cases takes about 11 minutes.
    "vote_full": [PY, "benchmarks/bench_vote.py", "--threads", "1"],
    # Not in the default run either: model × extractive × few-shot on the SNIPS tuning rows, about 25 minutes.
    "extraction": [PY, "benchmarks/bench_extraction.py", "--suites", "snips-tune", "--shots", "0,fixed,3",
                   "--threads", "2"],
}
#: What a plain ``run.py`` runs: every section but the long ones (under 15 minutes on 2 cores).
LONG = ("vote_full", "extraction", "batching", "fresh_schemas")
DEFAULT = [name for name in SECTIONS if name not in LONG]


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- run\.py:{name} -->)\n(?:.*?\n)?(<!-- /run\.py:{name} -->)", re.S)
    if not pattern.search(text):
        raise KeyError(f"BENCHMARKS.md has no <!-- run.py:{name} --> ... <!-- /run.py:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + "\n" + body.strip() + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DEFAULT),
                        help=f"comma-separated sections (known: {', '.join(SECTIONS)})")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    text = BENCHMARKS.read_text(encoding="utf-8")
    for name in names:  # before any script runs: a missing section would lose its output
        replace_section(text, name, "")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    total = time.perf_counter()
    failed = []
    for name in names:
        command = SECTIONS[name]
        shown = " ".join(["python", *command[1:]])
        if args.dry_run:
            print(shown)
            continue
        load = os.getloadavg()[0]
        started = time.perf_counter()
        print(f"[{name}] {shown}", file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            failed.append(name)
            print(f"[{name}] failed ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        stamp = (f"<sub>`{shown}` · {datetime.date.today()} · {seconds:.0f} s · "
                 f"load average {load:.1f} at the start</sub>")
        text = BENCHMARKS.read_text(encoding="utf-8")
        BENCHMARKS.write_text(replace_section(text, name, done.stdout.strip() + "\n\n" + stamp), encoding="utf-8")
        print(f"[{name}] {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"total {time.perf_counter() - total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
