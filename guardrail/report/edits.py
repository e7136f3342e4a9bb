"""Split a clean text and its perturbed twin into plain and changed pieces, for highlighting.

Outcome rows store edits as ``{part, start, end, before, after}`` with positions in the
*original* part (``guardrail.perturb.Edit``), so both sides are rebuilt from the original text.
Both renderers mark the changed pieces: the clean side shows what was replaced or removed, the
perturbed side what came instead.

>>> edits = [{"part": "input", "start": 4, "end": 5, "before": "c", "after": "k"}]
>>> segments("the cat", edits, side="clean")
[('the ', False), ('c', True), ('at', False)]
>>> segments("the cat", edits, side="perturbed")
[('the ', False), ('k', True), ('at', False)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal


def segments(text: str, edits: Sequence[Mapping[str, Any]], *, side: Literal["clean", "perturbed"],
             part: str = "input", expected: str | None = None) -> list[tuple[str, bool]]:
    """``(piece, changed)`` pairs that concatenate to the clean ``text`` (``side="clean"``) or to
    the perturbed text rebuilt from it (``side="perturbed"``).

    Edits of other parts, or that do not match the text (a hand-edited results file), are
    ignored rather than trusted, so a bad row can never garble the display. When ``expected``
    (the perturbed text as recorded) is given and the rebuilt text differs, it is returned
    unmarked instead.
    """
    mine = sorted(
        (e for e in edits if e.get("part", "input") == part),
        key=lambda e: (int(e.get("start", 0)), int(e.get("end", 0))),
    )
    out: list[tuple[str, bool]] = []
    pos = 0
    for edit in mine:
        start, end = int(edit.get("start", 0)), int(edit.get("end", 0))
        before, after = str(edit.get("before", "")), str(edit.get("after", ""))
        if start < pos or end < start or text[start:end] != before:
            continue
        if start > pos:
            out.append((text[pos:start], False))
        shown = before if side == "clean" else after
        if shown:
            out.append((shown, True))
        pos = end
    if pos < len(text):
        out.append((text[pos:], False))
    if expected is not None and "".join(p for p, _ in out) != expected:
        return [(expected, False)] if expected else []
    return out
