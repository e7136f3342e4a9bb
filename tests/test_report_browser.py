"""report.html in a real browser: headless Chromium renders it, draws the charts, runs nothing.

Skipped with a reason when Chromium is not installed (``apt-get install -y chromium``; CI does).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from guardrail.report import run_report
from guardrail.suite import parse_suite

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

HOSTILE = "<script>document.title='pwned'</script></table><img src=x onerror=alert(1)>"

SUITE = {
    "name": "people",
    "schema": {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
               "additionalProperties": False},
    "instruction": "Extract the person's name and city as JSON.",
    "cases": [
        {"id": "p1", "input": "Ana Souza lives in Lisbon and likes tea", "gold": {"name": "Ana Souza", "city": "Lisbon"}},
        {"id": "p2", "input": "Bruno Lima moved to Porto last spring", "gold": {"name": "Bruno Lima", "city": "Porto"}},
        {"id": "p3", "input": "Carla Dias works downtown in Braga", "gold": {"name": "Carla Dias", "city": "Braga"}},
    ],
}


def _llm(prompt: str) -> str:
    text = prompt.split("Text: ", 1)[1].split("\nJSON:", 1)[0]
    words = text.split()
    if len(words) % 3 == 0:
        return HOSTILE  # invalid on every attempt, and hostile: it must show up as text in the worst cases
    if "Your previous answer" not in prompt and len(words) % 4 == 0:
        return "{not json"  # invalid once, so some prompts need a retry
    return json.dumps({"name": " ".join(words[:2]), "city": words[-1]})


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    done = run_report(parse_suite(SUITE), families=["typos", "case", "distractor"], severities=[0.2, 0.6], seeds=2,
                      compare_unconstrained=True, out_dir=out, llm=_llm, n_boot=100)
    assert done.complete
    return done.files["html"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=90)


def test_rendered_dom_has_every_chart_and_no_script(report_html: Path, tmp_path: Path) -> None:
    run = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", report_html.as_uri())
    dom = run.stdout
    assert "<main>" in dom, run.stderr[-2000:]
    for kind in ("gr-line", "gr-heatmap", "gr-bar", "gr-hist"):
        assert re.search(rf'<svg class="gr-chart {kind}"', dom), f"no {kind} chart in the rendered page"
    assert dom.count('class="gr-band"') >= 3, "confidence bands missing"
    assert "<mark>" in dom, "edits are not highlighted"
    # The hostile output was parsed as text: no element came of it, and no script ran or was blocked.
    assert "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(1)  # type: ignore[union-attr]
    for marker in ("Uncaught", "CONSOLE", "Refused to"):
        assert marker not in run.stderr, f"browser console reported {marker!r}:\n{run.stderr[-2000:]}"


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the raw (filtered) scanlines of a PNG, with the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_screenshot_is_a_non_blank_png(report_html: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report_html.as_uri())
    assert shot.exists(), run.stderr[-2000:]
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1280, 2000)
    # A blank page compresses to a handful of byte values; text, tables and charts give many.
    assert len(set(pixels)) > 32, "the screenshot looks blank"
