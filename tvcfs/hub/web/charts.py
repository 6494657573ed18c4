"""Server-rendered SVG pictures of the web pages (docs/hub.md, "Web pages"): the
storage chart of a log page and the heat map of a tensor diff. Every text that comes
from a repository (names, messages) is XML-escaped; the result is
:class:`markupsafe.Markup`, ready for a template."""

from __future__ import annotations

import math
import re

from markupsafe import Markup, escape

from ...formatting import human_size

# ``encoder.layer.3.attention.self.query.weight``, ``model.layers.7.mlp.down_proj.weight``,
# ``transformer.h.0.attn.c_attn.weight``, ``blocks.2.norm1.weight``
_LAYER = re.compile(r"^(?:(?P<stack>.*?)\.)?(?:layers?|h|blocks?)\.(?P<layer>\d+)\.(?P<kind>.+)$")


def parse_tensor_name(name: str) -> tuple:
    """``(stack, layer, kind)`` of a tensor name: ``encoder.layer.3.attention.self.query.weight``
    → ``("encoder", 3, "attention.self.query.weight")``; ``model.layers.7.mlp.down_proj.weight``
    → ``("model", 7, "mlp.down_proj.weight")``. A tensor outside numbered layers (embeddings,
    heads) gives ``(None, None, name)``."""
    m = _LAYER.match(name)
    if not m:
        return None, None, name
    return m.group("stack") or "", int(m.group("layer")), m.group("kind")


# --------------------------------------------------------------------------- storage chart
def storage_chart(bars: list, width: int = 760, height: int = 200) -> Markup:
    """A bar chart of bytes new per commit against the model size.

    ``bars``: oldest first, dicts ``{"label", "href", "new", "total", "title"}``
    (``new``/``total``: bytes). Each commit is one ``<rect class="bar">`` (bytes new,
    at least 1 px tall so an empty commit still shows) in front of a light
    ``<rect class="size">`` (its tree's bytes); the y axis is logarithmic (1 KiB up to
    the largest tree), because a fine-tune is often a thousandth of its model."""
    n = len(bars)
    left, right, top, bottom = 64, 8, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    hi = max([b["total"] for b in bars] + [b["new"] for b in bars] + [2048])
    lo = 1024.0
    span = math.log(hi / lo) or 1.0

    def y(v: float) -> float:
        if v <= lo:
            return top + plot_h
        return top + plot_h - plot_h * math.log(v / lo) / span

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="storage-chart" role="img" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           '<title>bytes new per commit (dark) against the model size (light), log scale</title>']
    # y ticks at powers of 1024 (KiB, MiB, GiB…) and at 32x steps between them
    v = lo
    while v <= hi * 1.0001:
        ty = y(v)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{ty + 4:.1f}" text-anchor="end" class="tick">'
                   f'{escape(human_size(v))}</text>')
        v *= 32
    slot = plot_w / max(n, 1)
    bw = max(1.0, min(28.0, slot * 0.8))
    for i, b in enumerate(bars):
        x = left + i * slot + (slot - bw) / 2
        yt, yn = y(b["total"]), y(b["new"])
        hn = max(1.0, top + plot_h - yn)
        title = escape(b.get("title") or "")
        out.append(f'<a href="{escape(b["href"])}" class="bar-link">'
                   f'<rect class="size" x="{x:.1f}" y="{yt:.1f}" width="{bw:.1f}" height="{top + plot_h - yt:.1f}"/>'
                   f'<rect class="bar" data-new="{int(b["new"])}" x="{x:.1f}" y="{top + plot_h - hn:.1f}" '
                   f'width="{bw:.1f}" height="{hn:.1f}"><title>{title}</title></rect></a>')
        if n <= 30:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
                       f'class="tick">{escape(b["label"])}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    out.append("</svg>")
    return Markup("".join(out))


# --------------------------------------------------------------------------- heat map
def _color(status: str, rel) -> str:
    if status == "added":
        return "#3b8f3b"
    if status == "removed":
        return "#555555"
    if status == "unchanged" or rel == 0:
        return "#f2f2f2"
    if rel is None or (isinstance(rel, float) and math.isnan(rel)):
        return "#9b59b6"  # changed, no numeric summary (dtype or shape changed)
    if rel == math.inf:
        return "#4a0000"
    t = min(1.0, max(0.0, (math.log10(rel) + 6) / 6))  # 1e-6 … 1
    # light yellow (255,237,160) → dark red (128,0,38)
    r = round(255 + (128 - 255) * t)
    g = round(237 + (0 - 237) * t)
    b = round(160 + (38 - 160) * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def _value_text(status: str, rel) -> str:
    if status in ("added", "removed", "unchanged"):
        return status
    if rel is None:
        return "modified (no numeric summary)"
    return f"‖Δ‖/‖A‖ = {rel:.3g}"


def change_heatmap(tensors: list, cell: int = 20) -> Markup:
    """The relative change ‖B − A‖/‖A‖ of every tensor of a safetensors file as an
    SVG heat map: one row per numbered layer, one column per tensor kind
    (:func:`parse_tensor_name`), then one row per tensor outside the layers. Colour:
    log scale from 1e-6 (light) to 1 (dark red); grey for unchanged, green for added,
    dark grey for removed. ``tensors``: dicts ``{"name", "status" (added / removed /
    modified / unchanged), "rel" (float or None)}``. Each cell is a
    ``<rect class="cell" data-tensor=NAME>`` with a ``<title>``."""
    grid: dict = {}
    kinds: list = []
    rows: list = []
    others: list = []
    for t in tensors:
        stack, layer, kind = parse_tensor_name(t["name"])
        if layer is None:
            others.append(t)
            continue
        row = (stack, layer)
        if row not in grid:
            grid[row] = {}
            rows.append(row)
        if kind not in kinds:
            kinds.append(kind)
        grid[row][kind] = t
    rows.sort()
    stacks = {s for s, _ in rows}
    label_w = 190
    longest = max((len(k) for k in kinds), default=0)
    top = 10 + (longest * 6.0 * 0.87 + 10 if kinds else 0)  # column labels at 60 degrees
    width = int(max(label_w + max(len(kinds), 1) * cell + longest * 3.0 + 20, 600))
    height = int(top + (len(rows) + len(others)) * cell + (16 if others and rows else 0) + 48)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">',
           "<title>relative change per tensor: layers as rows, tensor kinds as columns</title>"]
    for j, k in enumerate(kinds):
        x = label_w + j * cell + cell / 2
        out.append(f'<text class="col" transform="translate({x:.1f},{top - 4:.1f}) rotate(-60)">{escape(k)}</text>')

    def rect(x, y, t):
        title = escape(f"{t['name']}: {_value_text(t['status'], t.get('rel'))}")
        return (f'<rect class="cell {escape(t["status"])}" data-tensor="{escape(t["name"])}" x="{x:.1f}" '
                f'y="{y:.1f}" width="{cell - 2}" height="{cell - 2}" fill="{_color(t["status"], t.get("rel"))}">'
                f"<title>{title}</title></rect>")

    y = top
    for stack, layer in rows:
        label = f"{stack}.{layer}" if len(stacks) > 1 and stack else f"layer {layer}"
        out.append(f'<text class="row" x="{label_w - 6}" y="{y + cell - 5:.1f}" text-anchor="end">{escape(label)}</text>')
        for j, k in enumerate(kinds):
            t = grid[(stack, layer)].get(k)
            if t is not None:
                out.append(rect(label_w + j * cell, y, t))
        y += cell
    if others and rows:
        y += 16
    for t in others:
        name = t["name"] if len(t["name"]) <= 30 else "…" + t["name"][-29:]
        out.append(f'<text class="row" x="{label_w - 6}" y="{y + cell - 5:.1f}" text-anchor="end">{escape(name)}</text>')
        out.append(rect(label_w, y, t))
        y += cell
    # legend
    y += 12
    for i, v in enumerate((1e-6, 1e-4, 1e-2, 1)):
        out.append(f'<rect x="{10 + i * 70}" y="{y:.1f}" width="14" height="14" fill="{_color("modified", v)}"/>'
                   f'<text class="legend" x="{28 + i * 70}" y="{y + 11:.1f}">{v:g}</text>')
    for i, (st, text) in enumerate((("unchanged", "unchanged"), ("added", "added"), ("removed", "removed"))):
        out.append(f'<rect x="{300 + i * 90}" y="{y:.1f}" width="14" height="14" fill="{_color(st, None)}"/>'
                   f'<text class="legend" x="{318 + i * 90}" y="{y + 11:.1f}">{text}</text>')
    out.append("</svg>")
    return Markup("".join(out))
