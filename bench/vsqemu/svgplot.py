"""Guest progress around the switch as a hand-written SVG: one panel per
(RAM size, workload), one line per mode, passes since the switch against
seconds since the switch (t = 0 is the source's STOP event)."""
from xml.sax.saxutils import escape

COLOURS = {"precopy": "#7f7f7f", "postcopy": "#1f77b4", "postcopy-preempt": "#2ca02c",
           "swapcopy": "#d62728", "swapcopy-patched": "#9467bd"}
PW, PH = 360, 230           # panel size
ML, MR, MT, MB = 52, 12, 28, 36


def _ticks(lo, hi, n=5):
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if step * mag >= raw:
            step *= mag
            break
    start = int(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9:
        if v >= lo - 1e-9:
            out.append(round(v, 6))
        v += step
    return out


def _fmt(v):
    return f"{v:g}"


def write(path, panels, title, subtitle=""):
    """panels: [(panel title, {mode: [(t, passes)], ...}, x_range or None)]"""
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    width, height = cols * PW + 20, rows * PH + 90
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="10" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
         f'<text x="10" y="34" fill="#444">{escape(subtitle)}</text>']
    modes = []
    for _, curves, _ in panels:
        modes += [m for m in curves if m not in modes]
    for i, m in enumerate(modes):
        x = 10 + i * 150
        o.append(f'<line x1="{x}" y1="50" x2="{x + 24}" y2="50" stroke="{COLOURS.get(m, "#000")}" '
                 f'stroke-width="2.5"/><text x="{x + 30}" y="54">{escape(m)}</text>')
    for k, (ptitle, curves, xr) in enumerate(panels):
        ox, oy = 10 + (k % cols) * PW, 70 + (k // cols) * PH
        pts = [p for c in curves.values() for p in c]
        if not pts:
            continue
        if xr:
            x0, x1 = xr
        else:
            x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        inside = [p for p in pts if x0 <= p[0] <= x1] or pts
        y0, y1 = min(p[1] for p in inside), max(p[1] for p in inside)
        if y1 - y0 < 1:
            y1 = y0 + 1
        w, h = PW - ML - MR, PH - MT - MB

        def sx(t):
            return ox + ML + (t - x0) / (x1 - x0) * w

        def sy(v):
            return oy + MT + h - (v - y0) / (y1 - y0) * h

        o.append(f'<text x="{ox + ML}" y="{oy + 16}" font-weight="bold">{escape(ptitle)}</text>')
        o.append(f'<rect x="{ox + ML}" y="{oy + MT}" width="{w}" height="{h}" fill="none" '
                 f'stroke="#999"/>')
        for t in _ticks(x0, x1):
            o.append(f'<line x1="{sx(t):.1f}" y1="{oy + MT + h}" x2="{sx(t):.1f}" '
                     f'y2="{oy + MT + h + 4}" stroke="#999"/><text x="{sx(t):.1f}" '
                     f'y="{oy + MT + h + 15}" text-anchor="middle">{_fmt(t)}</text>')
        for v in _ticks(y0, y1):
            o.append(f'<line x1="{ox + ML - 4}" y1="{sy(v):.1f}" x2="{ox + ML + w}" '
                     f'y2="{sy(v):.1f}" stroke="#eee"/><text x="{ox + ML - 6}" y="{sy(v) + 4:.1f}" '
                     f'text-anchor="end">{_fmt(v)}</text>')
        if x0 < 0 < x1:
            o.append(f'<line x1="{sx(0):.1f}" y1="{oy + MT}" x2="{sx(0):.1f}" y2="{oy + MT + h}" '
                     f'stroke="#000" stroke-dasharray="4,3"/>')
        o.append(f'<text x="{ox + ML + w / 2}" y="{oy + PH - 6}" text-anchor="middle" '
                 f'fill="#444">seconds since the switch</text>')
        o.append(f'<text x="{ox + 12}" y="{oy + MT + h / 2}" text-anchor="middle" fill="#444" '
                 f'transform="rotate(-90 {ox + 12} {oy + MT + h / 2})">passes since the switch</text>')
        o.append(f'<clipPath id="c{k}"><rect x="{ox + ML}" y="{oy + MT}" width="{w}" '
                 f'height="{h}"/></clipPath>')
        for m, c in curves.items():
            if len(c) < 2:
                continue
            # at most ~300 points a line: the idle guest logs 100 passes a second
            step = max(1, len(c) // 300)
            c = c[::step] + ([c[-1]] if (len(c) - 1) % step else [])
            d = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in c)
            o.append(f'<polyline clip-path="url(#c{k})" fill="none" stroke-width="1.6" '
                     f'stroke="{COLOURS.get(m, "#000")}" points="{d}"/>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")
