"""A tiny SVG plotting kit for the HTML report: line chart with bands, heatmap, bars, histogram.

Every function returns one ``<svg>`` element as a string, ready to inline in HTML: no
JavaScript, no fonts or files to fetch, so the report stays one self-contained file. Every piece
of text (titles, labels, series names) is escaped here, because labels come from suites and
models we do not control.

>>> svg = bar_chart(["valid@1"], {"constrained": [0.9], "free": [0.4]}, title="Validity")
>>> svg.startswith('<svg class="gr-chart gr-bar"')
True
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: Colour-blind-safe palette (Okabe–Ito), so series stay apart for every reader.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def _t(text: object) -> str:
    """Escape text for SVG content and attribute values."""
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    """A compact coordinate: two decimals are far below a pixel."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


@dataclass
class Series:
    """One line of a line chart: points ``(x, y)`` and an optional band ``(low, high)`` per point.

    >>> Series("typos", [(0.05, 0.9), (0.1, 0.8)], band=[(0.85, 0.95), (0.7, 0.9)]).name
    'typos'
    """

    name: str
    points: list[tuple[float, float]]
    band: list[tuple[float, float]] | None = None
    color: str | None = None


@dataclass
class _Frame:
    """Plot area geometry shared by the axis-based charts."""

    width: int
    height: int
    left: int = 56
    right: int = 16
    top: int = 34
    bottom: int = 44
    legend: list[tuple[str, str]] = field(default_factory=list)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


def _open(kind: str, width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg class="gr-chart gr-{kind}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_t(title)}" {_FONT} font-size="11">',
        f"<title>{_t(title)}</title>",
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13" font-weight="600">{_t(title)}</text>',
    ]


def _y_axis(frame: _Frame, lo: float, hi: float, label: str, ticks: int = 5) -> list[str]:
    out = []
    for i in range(ticks + 1):
        value = lo + (hi - lo) * i / ticks
        y = frame.top + frame.plot_h * (1 - i / ticks)
        out.append(f'<line x1="{frame.left}" x2="{_n(frame.left + frame.plot_w)}" y1="{_n(y)}" y2="{_n(y)}" '
                   'stroke="#e5e5e5"/>')
        out.append(f'<text x="{frame.left - 6}" y="{_n(y + 4)}" text-anchor="end" fill="#444">{_t(_fmt(value))}</text>')
    cy = frame.top + frame.plot_h / 2
    out.append(f'<text x="14" y="{_n(cy)}" text-anchor="middle" transform="rotate(-90 14 {_n(cy)})" '
               f'fill="#222">{_t(label)}</text>')
    out.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{_n(frame.top + frame.plot_h)}" '
               'stroke="#888"/>')
    return out


def _x_label(frame: _Frame, label: str) -> str:
    return (f'<text x="{_n(frame.left + frame.plot_w / 2)}" y="{frame.height - 8}" text-anchor="middle" '
            f'fill="#222">{_t(label)}</text>')


def _legend_layout(names: Sequence[str], width: int, left: int) -> list[tuple[float, int]]:
    """``(x, row)`` of each legend entry, wrapping onto new rows when the chart is too narrow."""
    out, x, row = [], float(left + 4), 0
    for name in names:
        step = 24 + 6.5 * len(name)
        if x + step > width - 8 and x > left + 4:
            x, row = float(left + 4), row + 1
        out.append((x, row))
        x += step
    return out


def _with_legend(width: int, height: int, names: Sequence[str]) -> _Frame:
    """A frame whose plot starts below the title and however many legend rows ``names`` need."""
    layout = _legend_layout(names, width, 56)
    rows = (layout[-1][1] + 1) if layout else 0
    return _Frame(width, height, top=30 + 15 * rows + 8)


def _legend(frame: _Frame) -> list[str]:
    out = []
    layout = _legend_layout([name for name, _ in frame.legend], frame.width, frame.left)
    for (name, color), (x, row) in zip(frame.legend, layout, strict=True):
        y = 26 + 15 * row
        out.append(f'<rect class="gr-legend" x="{_n(x)}" y="{y}" width="10" height="10" fill="{_t(color)}"/>')
        out.append(f'<text x="{_n(x + 14)}" y="{y + 9}" fill="#222">{_t(name)}</text>')
    return out


def _nice_top(value: float) -> tuple[float, int]:
    """A round axis maximum at or above ``value`` and its tick count (steps of 1, 2 or 5 × 10^k)."""
    if value <= 5:
        top = max(math.ceil(value), 1)
        return float(top), top
    raw = value / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    ticks = math.ceil(value / step)
    return float(ticks * step), ticks


def line_chart(
    series: Sequence[Series],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    y_range: tuple[float, float] | None = (0.0, 1.0),
    width: int = 420,
    height: int = 260,
) -> str:
    """Lines with shaded confidence bands, one per series; x is numeric (e.g. severity).

    >>> svg = line_chart([Series("typos", [(0.0, 1.0), (0.1, 0.8)], band=[(1, 1), (0.7, 0.9)])], title="valid@1")
    >>> 'class="gr-band"' in svg and 'class="gr-line-path"' in svg
    True
    """
    frame = _with_legend(width, height, [s.name for s in series])
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    ys += [v for s in series for b in (s.band or []) for v in b if math.isfinite(v)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_range is not None:
        y_lo, y_hi = y_range
    else:
        y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if y_hi == y_lo:
            y_lo, y_hi = y_lo - 1, y_hi + 1

    def px(x: float) -> float:
        return frame.left + (x - x_lo) / (x_hi - x_lo) * frame.plot_w

    def py(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return frame.top + (1 - (y - y_lo) / (y_hi - y_lo)) * frame.plot_h

    out = _open("line", width, height, title)
    out += _y_axis(frame, y_lo, y_hi, y_label)
    for x in sorted(set(xs)):
        out.append(f'<text x="{_n(px(x))}" y="{_n(frame.top + frame.plot_h + 16)}" text-anchor="middle" '
                   f'fill="#444">{_t(_fmt(x))}</text>')
    out.append(_x_label(frame, x_label))
    for index, s in enumerate(series):
        color = s.color or PALETTE[index % len(PALETTE)]
        frame.legend.append((s.name, color))
        bands: list[tuple[float, float] | None] = list(s.band) if s.band else [None] * len(s.points)
        pts = sorted(zip(s.points, bands, strict=True), key=lambda p: p[0][0])
        banded = [(p[0], b) for p, b in pts if b is not None and all(math.isfinite(v) for v in b)]
        if len(banded) >= 2:
            upper = " ".join(f"{_n(px(x))},{_n(py(hi))}" for x, (_, hi) in banded)
            lower = " ".join(f"{_n(px(x))},{_n(py(lo))}" for x, (lo, _) in reversed(banded))
            out.append(f'<polygon class="gr-band" points="{upper} {lower}" fill="{_t(color)}" fill-opacity="0.15" '
                       'stroke="none"/>')
        finite = [(x, y) for (x, y), _ in pts if math.isfinite(y)]
        if finite:
            path = " ".join(f"{_n(px(x))},{_n(py(y))}" for x, y in finite)
            out.append(f'<polyline class="gr-line-path" points="{path}" fill="none" stroke="{_t(color)}" '
                       'stroke-width="2"/>')
        for x, y in finite:
            out.append(f'<circle cx="{_n(px(x))}" cy="{_n(py(y))}" r="3" fill="{_t(color)}">'
                       f"<title>{_t(s.name)} @ {_t(_fmt(x))}: {_t(_fmt(y))}</title></circle>")
    out += _legend(frame)
    out.append("</svg>")
    return "\n".join(out)


def _heat_color(value: float, lo: float, hi: float) -> str:
    """White (low) to a deep blue (high); read as 'more is better' in the report."""
    t = 0.0 if hi == lo else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    # Interpolate from a pale red (bad) through white to blue (good), so 0 stands out.
    if t < 0.5:
        k = t / 0.5
        r, g, b = 214 + (247 - 214) * k, 96 + (247 - 96) * k, 77 + (247 - 77) * k
    else:
        k = (t - 0.5) / 0.5
        r, g, b = 247 + (33 - 247) * k, 247 + (102 - 247) * k, 247 + (172 - 247) * k
    return f"#{round(r):02x}{round(g):02x}{round(b):02x}"


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    title: str = "",
    value_range: tuple[float, float] = (0.0, 1.0),
    cell: int = 46,
) -> str:
    """A grid of coloured cells with the value written in; ``None`` is a grey 'n/a' cell.

    >>> svg = heatmap(["city"], ["typos", "ocr"], [[0.9, None]], title="field F1")
    >>> svg.count('class="gr-cell"')
    2
    """
    label_w = max([len(r) for r in rows] + [4]) * 7 + 12
    head_h = max([len(c) for c in cols] + [4]) * 6 + 14
    # Wide enough for the title too: a narrow grid must not clip it.
    width = max(label_w + cell * max(len(cols), 1) + 16, int(len(title) * 7.5) + 24)
    height = 28 + head_h + cell * max(len(rows), 1) + 10
    out = _open("heatmap", width, height, title)
    top = 28 + head_h
    for j, col in enumerate(cols):
        x = label_w + cell * j + cell / 2
        out.append(f'<text x="{_n(x)}" y="{top - 6}" transform="rotate(-40 {_n(x)} {top - 6})" fill="#222">'
                   f"{_t(col)}</text>")
    lo, hi = value_range
    for i, row in enumerate(rows):
        y = top + cell * i
        out.append(f'<text x="{label_w - 6}" y="{_n(y + cell / 2 + 4)}" text-anchor="end" fill="#222">{_t(row)}</text>')
        for j, col in enumerate(cols):
            value = values[i][j] if j < len(values[i]) else None
            x = label_w + cell * j
            ok = value is not None and math.isfinite(value)
            fill = _heat_color(value, lo, hi) if ok else "#dddddd"  # type: ignore[arg-type]
            shown = f"{value:.2f}" if ok else "n/a"
            ink = "#fff" if ok and (value - lo) / ((hi - lo) or 1) > 0.8 else "#222"  # type: ignore[operator]
            out.append(f'<rect class="gr-cell" x="{_n(x)}" y="{_n(y)}" width="{cell - 2}" height="{cell - 2}" '
                       f'fill="{fill}"><title>{_t(row)} × {_t(col)}: {_t(shown)}</title></rect>')
            out.append(f'<text x="{_n(x + cell / 2 - 1)}" y="{_n(y + cell / 2 + 3)}" text-anchor="middle" '
                       f'fill="{ink}" font-size="10">{_t(shown)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(
    categories: Sequence[str],
    groups: Mapping[str, Sequence[float | None]],
    *,
    errors: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
    title: str = "",
    y_label: str = "",
    y_range: tuple[float, float] | None = (0.0, 1.0),
    width: int = 420,
    height: int = 260,
) -> str:
    """Grouped bars: one cluster per category, one bar per group, optional error bars (low, high).

    >>> svg = bar_chart(["a", "b"], {"x": [0.5, 0.7]}, errors={"x": [(0.4, 0.6), None]})
    >>> svg.count('class="gr-bar-rect"'), svg.count('class="gr-err"')
    (2, 1)
    """
    frame = _with_legend(width, height, list(groups))
    values = [v for vs in groups.values() for v in vs if v is not None and math.isfinite(v)]
    if y_range is None:
        y_lo, y_hi = 0.0, max([*values, 1.0]) * 1.1
    else:
        y_lo, y_hi = y_range

    def py(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return frame.top + (1 - (y - y_lo) / ((y_hi - y_lo) or 1)) * frame.plot_h

    out = _open("bar", width, height, title)
    out += _y_axis(frame, y_lo, y_hi, y_label)
    slot = frame.plot_w / max(len(categories), 1)
    n = max(len(groups), 1)
    bar_w = slot * 0.8 / n
    for index, (name, vs) in enumerate(groups.items()):
        color = PALETTE[index % len(PALETTE)]
        frame.legend.append((name, color))
        for c, value in enumerate(vs):
            if value is None or not math.isfinite(value):
                continue
            x = frame.left + slot * c + slot * 0.1 + bar_w * index
            out.append(f'<rect class="gr-bar-rect" x="{_n(x)}" y="{_n(py(value))}" width="{_n(bar_w - 1)}" '
                       f'height="{_n(py(y_lo) - py(value))}" fill="{color}"><title>{_t(name)} / '
                       f"{_t(categories[c])}: {_t(_fmt(value))}</title></rect>")
            err = (errors or {}).get(name)
            if err and c < len(err) and err[c] is not None:
                lo, hi = err[c]  # type: ignore[misc]
                cx = x + (bar_w - 1) / 2
                out.append(f'<path class="gr-err" d="M{_n(cx)},{_n(py(lo))}V{_n(py(hi))}M{_n(cx - 3)},{_n(py(lo))}'
                           f'H{_n(cx + 3)}M{_n(cx - 3)},{_n(py(hi))}H{_n(cx + 3)}" stroke="#222" fill="none"/>')
    for c, category in enumerate(categories):
        out.append(f'<text x="{_n(frame.left + slot * (c + 0.5))}" y="{_n(frame.top + frame.plot_h + 16)}" '
                   f'text-anchor="middle" fill="#444">{_t(category)}</text>')
    out += _legend(frame)
    out.append("</svg>")
    return "\n".join(out)


def histogram(
    counts: Mapping[str, int] | Sequence[tuple[str, int]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "count",
    width: int = 420,
    height: int = 240,
) -> str:
    """Bars of counts over ready-made bins (e.g. attempts 1, 2, 3), each labelled with its count.

    >>> svg = histogram({"1": 40, "2": 7, "3": 3}, title="attempts")
    >>> svg.count('class="gr-hist-bin"')
    3
    """
    items = list(counts.items()) if isinstance(counts, Mapping) else list(counts)
    frame = _Frame(width, height)
    top, ticks = _nice_top(max([c for _, c in items] + [1]))
    out = _open("hist", width, height, title)
    out += _y_axis(frame, 0, top, y_label, ticks=ticks)
    slot = frame.plot_w / max(len(items), 1)
    for i, (label, count) in enumerate(items):
        h = frame.plot_h * count / top
        x = frame.left + slot * i + 2
        y = frame.top + frame.plot_h - h
        out.append(f'<rect class="gr-hist-bin" x="{_n(x)}" y="{_n(y)}" width="{_n(slot - 4)}" height="{_n(h)}" '
                   f'fill="{PALETTE[0]}"><title>{_t(label)}: {count}</title></rect>')
        out.append(f'<text x="{_n(x + (slot - 4) / 2)}" y="{_n(y - 3)}" text-anchor="middle" fill="#222">{count}</text>')
        out.append(f'<text x="{_n(x + (slot - 4) / 2)}" y="{_n(frame.top + frame.plot_h + 16)}" text-anchor="middle" '
                   f'fill="#444">{_t(label)}</text>')
    out.append(_x_label(frame, x_label))
    out.append("</svg>")
    return "\n".join(out)


def reliability_diagram(
    bins: Sequence[Mapping[str, float | int | None]],
    *,
    title: str = "",
    width: int = 320,
    height: int = 300,
) -> str:
    """A reliability diagram: per confidence bin, a bar up to the bin's accuracy, a dot at (mean
    confidence, accuracy), and the diagonal a calibrated model would follow.

    ``bins`` are dicts ``{"lo", "hi", "n", "confidence", "accuracy"}`` (``guardrail.calibration``);
    empty bins draw nothing. Each bar is labelled with its number of fields.

    >>> svg = reliability_diagram([{"lo": 0.0, "hi": 0.5, "n": 3, "confidence": 0.3, "accuracy": 0.2},
    ...                            {"lo": 0.5, "hi": 1.0, "n": 0, "confidence": None, "accuracy": None}])
    >>> svg.count('class="gr-rel-bin"'), 'class="gr-diagonal"' in svg
    (1, True)
    """
    frame = _Frame(width, height)

    def px(x: float) -> float:
        return frame.left + min(max(x, 0.0), 1.0) * frame.plot_w

    def py(y: float) -> float:
        return frame.top + (1 - min(max(y, 0.0), 1.0)) * frame.plot_h

    out = _open("reliability", width, height, title)
    out += _y_axis(frame, 0.0, 1.0, "accuracy")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<text x="{_n(px(tick))}" y="{_n(frame.top + frame.plot_h + 16)}" text-anchor="middle" '
                   f'fill="#444">{_t(_fmt(tick))}</text>')
    out.append(_x_label(frame, "confidence"))
    out.append(f'<line class="gr-diagonal" x1="{_n(px(0))}" y1="{_n(py(0))}" x2="{_n(px(1))}" y2="{_n(py(1))}" '
               'stroke="#888" stroke-dasharray="4 3"/>')
    for cell in bins:
        n, acc, conf = cell.get("n") or 0, cell.get("accuracy"), cell.get("confidence")
        if not n or acc is None or conf is None:
            continue
        lo, hi = float(cell.get("lo") or 0.0), float(cell.get("hi") or 1.0)
        x, w = px(lo) + 1, px(hi) - px(lo) - 2
        out.append(f'<rect class="gr-rel-bin" x="{_n(x)}" y="{_n(py(acc))}" width="{_n(w)}" '
                   f'height="{_n(py(0) - py(acc))}" fill="{PALETTE[0]}" fill-opacity="0.55"><title>'
                   f"confidence {_t(_fmt(lo))}–{_t(_fmt(hi))}: {n} fields, mean confidence {conf:.3f}, "
                   f"accuracy {acc:.3f}</title></rect>")
        out.append(f'<circle cx="{_n(px(conf))}" cy="{_n(py(acc))}" r="3" fill="{PALETTE[3]}"/>')
        out.append(f'<text x="{_n(x + w / 2)}" y="{_n(py(acc) - 3)}" text-anchor="middle" fill="#222" '
                   f'font-size="9">{n}</text>')
    out.append("</svg>")
    return "\n".join(out)
