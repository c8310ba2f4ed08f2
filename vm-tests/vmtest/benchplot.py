"""bench.svg: kupgrade's downtime per snapshot size as stacked bars of its phases, with the
kexec floor and the reboot baseline as horizontal lines. Hand-written SVG (no plotting library):
one function per part of the picture, all from bench.json alone."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 900, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 330, 60, 60        # the plot area's margins; the legend is on the right
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac")
FLOOR_COLOR, REBOOT_COLOR = "#1f5fbf", "#c0392b"


def nice_step(top: float, ticks: int = 6) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving at most about `ticks` ticks up to top."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", color: str = "#222",
         rotate: int = 0) -> str:
    turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}"{turn}>'
            f"{escape(s)}</text>")


def hline(y: float, color: str) -> str:
    return (f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{color}" stroke-width="1.5" '
            f'stroke-dasharray="6 4"/>')


def axes(top: float, scale) -> list[str]:
    """The y axis with its ticks and grid lines, the x axis line."""
    out = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
           f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
           text(18, TOP + (HEIGHT - TOP - BOTTOM) / 2, "downtime (s)", 12, "middle", rotate=-90)]
    step = nice_step(top)
    v = 0.0
    while v <= top + 1e-9:
        y = scale(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(text(LEFT - 6, y + 4, f"{v:g}", 11, "end"))
        v += step
    return out


def bars(sizes: list[dict], scale, colors: dict[str, str]) -> list[str]:
    """One stacked bar per size (its phases, bottom up), the total on top, the size below."""
    out = []
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(sizes))
    for i, s in enumerate(sizes):
        x = LEFT + slot * i + slot * 0.25
        w = slot * 0.5
        base = 0.0
        for phase, seconds in s.get("phases", {}).items():
            y0, y1 = scale(base), scale(base + seconds)
            out.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{w:.1f}" height="{max(0.0, y0 - y1):.1f}" '
                       f'fill="{colors[phase]}"><title>{escape(phase)}: {seconds:.2f} s</title></rect>')
            base += seconds
        top = scale(max(base, s["downtime_s"]))
        out.append(text(x + w / 2, top - 5, f"{s['downtime_s']:.1f} s", 11, "middle"))
        out.append(text(x + w / 2, HEIGHT - BOTTOM + 18, f"{s['mib']} MiB", 12, "middle"))
        out.append(text(x + w / 2, HEIGHT - BOTTOM + 32, s.get("transport", ""), 10, "middle", color="#555"))
    return out


def legend(lines: list[tuple[str, str]], colors: dict[str, str]) -> list[str]:
    """The horizontal lines (label, color) and the phases (label: color), top down."""
    x, y = WIDTH - RIGHT + 10, TOP + 10
    out = []
    for i, (label, color) in enumerate(lines):
        yy = y + i * 18
        out.append(f'<line x1="{x}" y1="{yy - 4}" x2="{x + 14}" y2="{yy - 4}" stroke="{color}" stroke-width="1.5" '
                   f'stroke-dasharray="4 2"/>')
        out.append(text(x + 20, yy, label, 11, color=color))
    y += len(lines) * 18 + 24
    out.append(text(x, y - 14, "phases (host clock, console lines)", 11))
    for i, (phase, color) in enumerate(colors.items()):
        yy = y + i * 18
        out.append(f'<rect x="{x}" y="{yy - 10}" width="12" height="12" fill="{color}"/>')
        out.append(text(x + 18, yy, phase.replace("->", " → "), 11))
    return out


def svg(bench: dict) -> str:
    """The whole picture for a bench.json dict."""
    sizes = bench.get("sizes", [])
    lines = {k: bench.get(k) for k in ("floor_s", "reboot_s")}
    top = max([s["downtime_s"] for s in sizes] + [v for v in lines.values() if v] + [1.0]) * 1.15
    step = nice_step(top)
    top = math.ceil(top / step) * step
    plot_h = HEIGHT - TOP - BOTTOM

    def scale(v: float) -> float:
        return HEIGHT - BOTTOM - v / top * plot_h

    phases = list(dict.fromkeys(p for s in sizes for p in s.get("phases", {})))
    colors = {p: COLORS[i % len(COLORS)] for i, p in enumerate(phases)}
    slope = bench.get("slope_ms_per_mb")
    sub = (f"{bench.get('kernel_from')} → {bench.get('kernel_to')}, accel {bench.get('accel')}, "
           f"guest {bench.get('guest_memory_mib')} MiB" + (f", slope {slope:g} ms/MiB" if slope is not None else ""))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           text(LEFT, 24, "kupgrade downtime by snapshot size", 16), text(LEFT, 42, sub, 11, color="#555"),
           *axes(top, scale), *bars(sizes, scale, colors)]
    drawn = []
    for key, label, color in (("floor_s", "kexec floor", FLOOR_COLOR), ("reboot_s", "reboot", REBOOT_COLOR)):
        if lines[key]:
            out.append(hline(scale(lines[key]), color))
            drawn.append((f"{label} {lines[key]:.1f} s", color))
    out += legend(drawn, colors)
    out.append(text(WIDTH / 2, HEIGHT - 14, "workload buffer (snapshot size)", 12, "middle"))
    return "\n".join(out + ["</svg>"]) + "\n"
