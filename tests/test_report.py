"""The report job: escaping of hostile text, kill-and-resume, Ctrl-C, changed configurations, --fail-under.

Every LLM here is a plain Python function (the library's real contract) over a tiny suite built
in the test, so the whole file runs in seconds without the embedded model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from guardrail.report import canonical_family, md_escape, run_report
from guardrail.report.cli import register
from guardrail.report.store import Store
from guardrail.suite import parse_suite

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
    "additionalProperties": False,
}

SUITE = {
    "name": "people",
    "schema": SCHEMA,
    "instruction": "Extract the person's name and city as JSON.",
    "cases": [
        {"id": "p1", "input": "Ana Souza lives in Lisbon and likes tea", "gold": {"name": "Ana Souza", "city": "Lisbon"}},
        {"id": "p2", "input": "Bruno Lima moved to Porto last spring", "gold": {"name": "Bruno Lima", "city": "Porto"}},
        {"id": "p3", "input": "Carla Dias works downtown in Braga", "gold": {"name": "Carla Dias", "city": "Braga"}},
        {"id": "p4", "input": "Diego Alves was born in Faro", "gold": {"name": "Diego Alves", "city": "Faro"}},
    ],
}

HOSTILE = "<script>alert(1)</script></table> | a | b | `x` *bold* [link](http://evil)"

# A deterministic "LLM" for the subprocess runs: reads the input back out of the prompt, answers
# from its words (so noise changes the answer), fails the first attempt for some inputs (so
# there are retries), logs each call, and on demand SIGKILLs its own process or stops inside one
# call: it then says BLOCKED on stdout and waits for a line on stdin, so a test can act while the
# job is surely mid-run, however slow the machine.
FAKE_LLM = '''
import hashlib, json, os, signal, sys, threading
from pathlib import Path

_lock = threading.Lock()

def llm(prompt):
    counter = Path(os.environ["FAKE_LLM_COUNTER"])
    with _lock:
        with counter.open("a") as handle:
            handle.write("call\\n")
        calls = len(counter.read_text().splitlines())
    kill_at = int(os.environ.get("FAKE_LLM_KILL_AT", "0"))
    if kill_at and calls >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if calls == int(os.environ.get("FAKE_LLM_BLOCK_AT", "0")):
        print("BLOCKED", flush=True)
        sys.stdin.readline()
    text = prompt.split("Text: ", 1)[1].split("\\nJSON:", 1)[0]
    words = text.replace(".", " ").split()
    if "Your previous answer" not in prompt and hashlib.sha256(text.encode()).digest()[0] % 4 == 0:
        return "not json yet"
    return json.dumps({"name": " ".join(words[:2]), "city": words[-1]})
'''


def _write_suite(tmp_path: Path) -> Path:
    path = tmp_path / "people.yaml"
    path.write_text(json.dumps(SUITE), encoding="utf-8")  # JSON is YAML
    return path


def _metrics_without_latency(report: dict[str, Any]) -> dict[str, Any]:
    """report["metrics"] minus wall-clock numbers, which differ between any two runs."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "latency_s"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(report["metrics"])


# -- (a) hostile text renders as text ------------------------------------------------------------


def test_hostile_output_renders_as_text_in_html_and_markdown(tmp_path: Path) -> None:
    def hostile(prompt: str) -> str:
        # Invalid on every attempt for perturbed prompts (raw text lands in the worst cases);
        # valid JSON carrying hostile strings for clean ones (lands in outputs and tables).
        if "Ana" not in prompt:
            return HOSTILE
        return json.dumps({"name": HOSTILE, "city": "| x | y |"})

    suite = parse_suite({**SUITE, "name": "evil | <b>suite</b>"})
    done = run_report(suite, families=["distractor", "case"], severities=[0.5], seeds=1, retries=1,
                      out_dir=tmp_path, llm=hostile, n_boot=20)
    html = done.files["html"].read_text(encoding="utf-8")
    md = done.files["md"].read_text(encoding="utf-8")

    assert done.report["worst_cases"], "the hostile perturbed rows should be among the worst cases"
    assert "<script" not in html and "<b>suite" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/table&gt;" in html
    assert html.count("<table") == html.count("</table>"), "a model output closed a table"
    assert "<script" not in md and "</table>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "\\| a \\| b \\|" in md and "\\`x\\`" in md and "\\*bold\\*" in md and "\\[link\\]" in md
    # Every row of every Markdown table has as many (unescaped) cell separators as its header.
    unescaped_pipe = re.compile(r"(?<!\\)\|")
    for block in re.findall(r"(?:^\|.*\n)+", md, flags=re.M):
        widths = {len(unescaped_pipe.findall(line)) for line in block.splitlines()}
        assert len(widths) == 1, f"a table row has a different width:\n{block}"


def test_md_escape_covers_markdown_and_html_syntax() -> None:
    assert md_escape("<i>a|b</i>") == "&lt;i&gt;a\\|b&lt;/i&gt;"
    assert md_escape("`x` *y* _z_ [q](r) # h ~s~") == "\\`x\\` \\*y\\* \\_z\\_ \\[q\\](r) \\# h \\~s\\~"
    assert md_escape("&lt;") == "&amp;lt;", "an entity in model output must show as typed"
    assert "\n" not in md_escape("a\nb\r\nc")


# -- (b) kill and resume -------------------------------------------------------------------------


def _job(tmp_path: Path, out: Path, *, batch_size: int = 3) -> str:
    """A python -c program running the report job with the fake LLM; exits with the job's code."""
    return textwrap.dedent(f"""
        import signal, sys
        # Ctrl-C raises KeyboardInterrupt even where the suite itself runs in the background (``pytest &``,
        # nohup), whose children inherit SIGINT ignored and would otherwise never see it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {str(tmp_path)!r})
        from fake_llm import llm
        from guardrail.report.run import run_report
        done = run_report({str(_write_suite(tmp_path))!r}, families=["typos", "case", "distractor"],
                          severities=[0.2, 0.6], seeds=2, retries=2, out_dir={str(out)!r}, batch_size={batch_size},
                          llm=llm, n_boot=50)
        print("ROWS", done.rows_run, done.rows_reused, done.rows_done, done.rows_planned)
        sys.exit(done.exit_code)
    """)


def _run(tmp_path: Path, out: Path, counter: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FAKE_LLM_COUNTER": str(counter), **env}
    return subprocess.run([sys.executable, "-c", _job(tmp_path, out)], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    (tmp_path / "fake_llm.py").write_text(FAKE_LLM)

    # The uninterrupted reference run.
    full_out, full_counter = tmp_path / "full", tmp_path / "full.calls"
    reference = _run(tmp_path, full_out, full_counter)
    assert reference.returncode == 0, reference.stderr
    full_rows = _rows(full_out)
    calls_per_key = {r["key"]: r["attempts"] for r in full_rows}
    assert _calls(full_counter) == sum(calls_per_key.values())
    assert max(calls_per_key.values()) > 1, "the fake LLM should force some retries"

    # The same job, SIGKILLed from inside the LLM on its 12th call: no cleanup runs at all.
    out, counter = tmp_path / "resumed", tmp_path / "resumed.calls"
    killed = _run(tmp_path, out, counter, FAKE_LLM_KILL_AT="12")
    assert killed.returncode == -signal.SIGKILL
    finished = _rows(out)
    assert 0 < len(finished) < len(full_rows)
    # Simulate dying in the middle of writing the next row: a torn line with no newline.
    pending = next(r for r in full_rows if r["key"] not in {f["key"] for f in finished})
    torn = json.dumps({**pending, "run": finished[0]["run"]})[:70]
    with (out / "results.jsonl").open("a") as handle:
        handle.write(torn)

    before = _calls(counter)
    resumed = _run(tmp_path, out, counter)
    assert resumed.returncode == 0, resumed.stderr
    # Finished rows were not recomputed: exactly the calls of the missing rows were made.
    done_keys = {r["key"] for r in finished}
    assert _calls(counter) - before == sum(n for key, n in calls_per_key.items() if key not in done_keys)
    assert f"ROWS {len(full_rows) - len(finished)} {len(finished)} {len(full_rows)} {len(full_rows)}" in resumed.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["run"]["complete"] is True
    assert len(report["run"]["torn_lines"]) == 1 and "torn" in report["run"]["torn_lines"][0]
    assert all(line.endswith("}") for line in (out / "results.jsonl").read_text().splitlines()), "torn tail kept"
    reference_report = json.loads((full_out / "report.json").read_text())
    assert _metrics_without_latency(report) == _metrics_without_latency(reference_report)
    for section in ("score", "fields", "attempts", "worst_cases", "config_hash"):
        assert report[section] == reference_report[section], section


def test_ctrl_c_keeps_finished_rows_writes_a_partial_report_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "fake_llm.py").write_text(FAKE_LLM)
    out, counter = tmp_path / "out", tmp_path / "calls"
    # Calls 1-6 finish at least the first batch of 3 prompts (2 attempts at most each); call 10 stops.
    env = {**os.environ, "FAKE_LLM_COUNTER": str(counter), "FAKE_LLM_BLOCK_AT": "10"}
    process = subprocess.Popen([sys.executable, "-c", _job(tmp_path, out)], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline() != "BLOCKED\n":  # an empty line: the job ended without reaching call 10
        process.kill()
        pytest.fail(f"the job never reached the blocking call: {process.communicate()}")
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends; the blocked call holds the job mid-run
    # The line releases the blocked call only after the signal is pending, so the job cannot finish first.
    _, stderr = process.communicate(input="go\n", timeout=120)
    assert process.returncode == 130, stderr

    partial = json.loads((out / "report.json").read_text())
    kept = len(_rows(out))
    assert partial["run"]["complete"] is False
    assert 3 <= partial["run"]["rows_done"] == kept < partial["run"]["rows_planned"]
    assert "rerun the same command to resume" in partial["run"]["resume_hint"]
    assert "Incomplete run" in (out / "report.html").read_text()

    resumed = _run(tmp_path, out, counter)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((out / "report.json").read_text())
    assert final["run"]["complete"] is True and final["run"]["rows_done"] == final["run"]["rows_planned"]
    assert f"ROWS {final['run']['rows_planned'] - kept} {kept} " in resumed.stdout


# -- (c) a changed configuration starts a new run -------------------------------------------------


def _echo(prompt: str) -> str:
    text = prompt.split("Text: ", 1)[1].split("\nJSON:", 1)[0]
    words = text.split()
    return json.dumps({"name": " ".join(words[:2]), "city": words[-1]})


def test_changed_configuration_moves_old_results_aside_and_starts_a_new_run(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    first = run_report(suite, families=["case"], severities=[0.5], seeds=1, out_dir=tmp_path, llm=_echo, n_boot=10)
    assert first.complete and first.rows_run == first.rows_planned == 8

    again = run_report(suite, families=["case"], severities=[0.5], seeds=1, out_dir=tmp_path, llm=_echo, n_boot=10)
    assert (again.rows_run, again.rows_reused, again.moved_aside) == (0, 8, [])

    changed = run_report(suite, families=["case"], severities=[0.5], seeds=2, out_dir=tmp_path, llm=_echo, n_boot=10)
    assert changed.config_hash != first.config_hash
    assert changed.rows_reused == 0 and changed.rows_run == changed.rows_planned == 12
    assert sorted(p.name for p in changed.moved_aside) == sorted(
        [f"results.{first.config_hash}.jsonl", f"run.{first.config_hash}.json"])
    old = (tmp_path / f"results.{first.config_hash}.jsonl").read_text().splitlines()
    assert len(old) == 8 and all(json.loads(line)["run"] == first.config_hash for line in old)
    assert {r["run"] for r in _rows(tmp_path)} == {changed.config_hash}, "two configurations mixed"
    assert json.loads((tmp_path / "run.json").read_text())["hash"] == changed.config_hash


def test_store_skips_a_corrupt_middle_line_and_a_foreign_row(tmp_path: Path) -> None:
    store = Store.open(tmp_path, {"x": 1})
    store.append([{"key": "a"}, {"key": "b"}])
    store.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    lines.insert(1, "{not json")
    lines.append(json.dumps({"key": "c", "run": "someone-else"}))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    reopened = Store.open(tmp_path, {"x": 1})
    assert reopened.done == {"a", "b"}
    assert [bad.line for bad in reopened.torn] == [2, 4]


# -- (d) --fail-under and the command line -------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """guardrail (test app)"""

    register(app)
    return app


def test_cli_fail_under_exits_3_below_the_score_and_0_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_llm.py").write_text(
        "import json\n"
        "def llm(prompt):\n"
        "    text = prompt.split('Text: ', 1)[1].split('\\nJSON:', 1)[0]\n"
        "    return json.dumps({'name': ' '.join(text.split()[:2]), 'city': text.split()[-1]})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = _write_suite(tmp_path)
    common = ["report", str(suite), "--llm", "cli_llm:llm", "--perturb", "Distractors,case", "--severity", "0.5",
              "--seeds", "1", "--out", str(tmp_path / "out")]
    runner = CliRunner()

    failing = runner.invoke(_app(), [*common, "--fail-under", "101"])
    assert failing.exit_code == 3, failing.output
    score = json.loads((tmp_path / "out" / "report.json").read_text())["score"]
    assert 0 < score < 101

    passing = runner.invoke(_app(), [*common, "--fail-under", "1"])
    assert passing.exit_code == 0, passing.output
    assert "resumed" in passing.output, "the second invocation should reuse every row"

    unknown = runner.invoke(_app(), [*common[:5], "--perturb", "sunspots"])
    assert unknown.exit_code == 2 and "sunspots" in unknown.output

    both = runner.invoke(_app(), ["report", str(suite), "--base-url", "http://127.0.0.1:9/v1", "--runtime", "llamacpp"])
    assert both.exit_code == 2 and "--runtime" in both.output


def test_family_aliases_match_the_perturb_module() -> None:
    from guardrail.perturb import FAMILIES

    for name in ("typos", "ocr", "case", "distractor"):
        assert name in FAMILIES
        assert canonical_family(name) == name
    assert canonical_family("distractors") == "distractor"
    assert canonical_family("OCR-Confusions") == "ocr"
    with pytest.raises(ValueError, match="choose from"):
        canonical_family("sunspots")
