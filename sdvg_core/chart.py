"""A small Pillow chart: line and marker panels over a shared x axis (benchmark and tau plots)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: tuple[int, int, int] = (31, 119, 180)
    line: bool = True
    marker: str | None = None      # "o" (disc) or "s" (square)
    notes: list[str] | None = None  # a text beside each point, in the order of ``points``


@dataclass
class Panel:
    title: str
    series: list[Series]
    y_range: tuple[float, float] | None = None
    hlines: list[tuple[float, str]] = field(default_factory=list)
    vlines: list[tuple[float, str]] = field(default_factory=list)
    legend: str = "left"           # corner of the legend: "left" or "right" (top)


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_chart(panels: list[Panel], xlabel: str, title: str = "", width: int = 960,
               panel_height: int = 420, x_range: tuple[float, float] | None = None):
    """Line/marker panels stacked over a shared x axis, as a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:
            return ImageFont.load_default()

    small, regular = font(13), font(15)
    top, left, right, gap = (34 if title else 10), 70, 20, 48
    height = top + len(panels) * (panel_height + gap) + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((left, 8), title, fill=(30, 30, 30), font=regular)
    xs = [x for p in panels for s in p.series for x, _ in s.points] + [x for p in panels for x, _ in p.vlines]
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    for index, panel in enumerate(panels):
        box_top = top + index * (panel_height + gap) + 22
        box = (left, box_top, width - right, box_top + panel_height - 40)
        ys = [y for s in panel.series for _, y in s.points] + [y for y, _ in panel.hlines]
        y0, y1 = panel.y_range or (min(ys + [0.0]), max(ys) * 1.08 if ys else 1.0)
        if y1 <= y0:
            y1 = y0 + 1.0

        def px(x, y):
            return (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
                    box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))

        draw.text((left, box_top - 20), panel.title, fill=(30, 30, 30), font=regular)
        for ty in _nice_ticks(y0, y1):
            _, yy = px(x0, ty)
            draw.line([(box[0], yy), (box[2], yy)], fill=(232, 232, 232))
            draw.text((box[0] - 8, yy), f"{ty:g}", fill=(60, 60, 60), font=small, anchor="rm")
        for tx in _nice_ticks(x0, x1, 10):
            xx, _ = px(tx, y0)
            draw.line([(xx, box[1]), (xx, box[3])], fill=(240, 240, 240))
            draw.text((xx, box[3] + 6), f"{tx:g}", fill=(60, 60, 60), font=small, anchor="mt")
        draw.rectangle(box, outline=(90, 90, 90))
        for y, label in panel.hlines:
            if y0 <= y <= y1:
                _, yy = px(x0, y)
                draw.line([(box[0], yy), (box[2], yy)], fill=(120, 120, 120), width=1)
                draw.text((box[2] - 4, yy - 3), label, fill=(90, 90, 90), font=small, anchor="rb")
        for x, label in panel.vlines:
            if x0 <= x <= x1:
                xx, _ = px(x, y0)
                draw.line([(xx, box[1]), (xx, box[3])], fill=(120, 120, 120), width=1)
                draw.text((xx + 4, box[1] + 4), label, fill=(90, 90, 90), font=small)
        legend_y = box[1] + 8
        legend_x = box[0] if panel.legend == "left" else box[2] - 40 - max(
            (draw.textlength(s.label, font=small) for s in panel.series), default=0)
        for s in panel.series:
            for (x, y), note in zip(s.points, s.notes or ()):
                if x0 <= x <= x1 and y0 <= y <= y1:
                    draw.text((px(x, y)[0] + 8, px(x, y)[1] + 2), note, fill=s.colour, font=small, anchor="lt")
            points = [px(x, y) for x, y in sorted(s.points) if x0 <= x <= x1 and y0 <= y <= y1]
            if s.line and len(points) > 1:
                draw.line(points, fill=s.colour, width=2)
            for x, y in points if s.marker else ():
                shape = draw.ellipse if s.marker == "o" else draw.rectangle
                shape([x - 4, y - 4, x + 4, y + 4], fill=s.colour, outline="white")
            if s.line:
                draw.line([(legend_x + 10, legend_y + 7), (legend_x + 30, legend_y + 7)], fill=s.colour, width=2)
            if s.marker:
                shape = draw.ellipse if s.marker == "o" else draw.rectangle
                shape([legend_x + 16, legend_y + 3, legend_x + 24, legend_y + 11], fill=s.colour)
            draw.text((legend_x + 36, legend_y), s.label, fill=(30, 30, 30), font=small)
            legend_y += 18
        draw.text(((box[0] + box[2]) / 2, box[3] + 24), xlabel, fill=(30, 30, 30), font=small, anchor="mt")
    return image
