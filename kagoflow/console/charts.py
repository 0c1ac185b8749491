"""Server-rendered SVG charts for the console (no JavaScript, no chart library): bars per label.

Every label and number goes through ``markupsafe.escape``; the result is ``Markup`` for jinja2.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

_W, _H, _PAD = 640, 220, 30


def bar_chart(points: Sequence[tuple[str, float]], *, title: str, unit: str = "") -> Markup:
    """A bar per (label, value), scaled to the largest value; labels under the bars, values above."""
    n = max(len(points), 1)
    top = max((v for _, v in points), default=0.0) or 1.0
    slot = (_W - 2 * _PAD) / n
    bars = []
    for i, (label, value) in enumerate(points):
        height = (_H - 3 * _PAD) * (value / top)
        width = min(slot * 0.7, 56.0)  # a lone day is a bar, not a wall
        x = _PAD + i * slot + (slot - width) / 2
        y = _H - 2 * _PAD - height
        shown = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="#3b82f6">'
            f"<title>{escape(label)}: {escape(shown)}{escape(unit)}</title></rect>"
            f'<text x="{x + width / 2:.1f}" y="{y - 4:.1f}" font-size="12" text-anchor="middle">'
            f"{escape(shown)}</text>"
            f'<text x="{x + width / 2:.1f}" y="{_H - 2 * _PAD + 14:.1f}" font-size="11" '
            f'text-anchor="middle">{escape(label[-10:])}</text>'
        )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><text x="{_PAD}" y="16" font-size="13">{escape(title)}</text>'
        f'<line x1="{_PAD}" y1="{_H - 2 * _PAD}" x2="{_W - _PAD}" y2="{_H - 2 * _PAD}" stroke="#999"/>'
        + "".join(bars) + "</svg>"
    )
