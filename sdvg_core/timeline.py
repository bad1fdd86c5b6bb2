"""The block timeline picture: one column per block, coloured by decision, scores against tau.

One renderer for both the ComfyUI node's timeline IMAGE and the CLI's timeline.png. Pillow
only. A column shows the block's decision as a strip along the bottom and a light tint; each
scored frame is a grey dot and the block's aggregate (the minimum by default) a thick bar in
the decision colour; the dashed line is tau. The web extension draws the same colours live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from PIL import Image, ImageDraw, ImageFont

# The web/ extension uses the same colours (tests/test_nodes.py checks they agree).
DECISION_COLOURS = {
    "target": (84, 112, 198),
    "accepted": (46, 160, 90),
    "rejected": (214, 69, 65),
    "skipped": (232, 168, 56),
}
UNKNOWN_COLOUR = (150, 150, 150)
BACKGROUND = (255, 255, 255)
AXIS_COLOUR = (90, 90, 90)
DOT_COLOUR = (70, 70, 70)
TAU_COLOUR = (20, 20, 20)
TEXT_COLOUR = (30, 30, 30)

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 12, 28, 34
_STRIP = 10  # height of the decision strip under the plot


def _field(block, name, default=None):
    if isinstance(block, Mapping):
        return block.get(name, default)
    return getattr(block, name, default)


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def accept_rate_at(blocks: Iterable, tau: float) -> tuple[int, int]:
    """(accepted, scored) had the logged aggregates been thresholded at ``tau``.

    Scored blocks are the ones the router decided (accepted/rejected with an aggregate);
    target-first and skipped blocks do not count, as in the paper's table. An estimate: a
    different tau would also have changed the context of later drafts.
    """
    scored = [float(_field(b, "aggregate")) for b in blocks
              if _field(b, "decision") in ("accepted", "rejected") and _finite(_field(b, "aggregate"))]
    return sum(a >= tau for a in scored), len(scored)


@dataclass(frozen=True)
class TimelineLayout:
    """Where things go in a timeline picture (the tests use it to find them)."""

    width: int
    height: int
    num_blocks: int
    low: float   # score at the bottom of the plot
    high: float  # score at the top of the plot

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the score plot, bottom exclusive of the strip."""
        return (_MARGIN_LEFT, _MARGIN_TOP, self.width - _MARGIN_RIGHT,
                self.height - _MARGIN_BOTTOM - _STRIP)

    @property
    def strip_box(self) -> tuple[int, int, int, int]:
        left, _, right, bottom = self.plot_box
        return left, bottom, right, bottom + _STRIP

    def column(self, block: int) -> tuple[int, int]:
        """Left and right x of a block's column."""
        left, _, right, _ = self.plot_box
        step = (right - left) / max(1, self.num_blocks)
        return round(left + block * step), round(left + (block + 1) * step)

    def y(self, score: float) -> int:
        """Pixel row of a score (higher scores higher up), clamped to the plot."""
        _, top, _, bottom = self.plot_box
        frac = (float(score) - self.low) / (self.high - self.low)
        return round(bottom - min(1.0, max(0.0, frac)) * (bottom - top))


def timeline_layout(blocks: list, tau: float, width: int, height: int) -> TimelineLayout:
    """Score range: every frame score and aggregate, and tau when finite, with a margin."""
    values = [float(s) for b in blocks for s in (_field(b, "scores") or []) if _finite(s)]
    values += [float(_field(b, "aggregate")) for b in blocks if _finite(_field(b, "aggregate"))]
    if _finite(tau):
        values.append(float(tau))
    low, high = (min(values), max(values)) if values else (-1.0, 1.0)
    pad = max(0.25, 0.1 * (high - low))
    return TimelineLayout(width, height, len(blocks), low - pad, high + pad)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _tint(colour: tuple[int, int, int], amount: float = 0.85) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in colour)


def render_timeline(blocks: list, tau: float, width: int = 768, height: int = 256) -> Image.Image:
    """Draw the per-block timeline of one video.

    blocks: ``BlockStats`` objects or their dicts (``stats.json``'s ``blocks``): decision,
    scores (per frame), aggregate. tau: the threshold line (not drawn when infinite).
    """
    if width < 160 or height < 120:
        raise ValueError(f"timeline size {width}x{height} is too small; use at least 160x120.")
    blocks = list(blocks)
    layout = timeline_layout(blocks, tau, width, height)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    small = _font(11)
    left, top, right, bottom = layout.plot_box

    for b, block in enumerate(blocks):
        x0, x1 = layout.column(b)
        colour = DECISION_COLOURS.get(_field(block, "decision"), UNKNOWN_COLOUR)
        draw.rectangle([x0 + 1, top, x1 - 1, bottom - 1], fill=_tint(colour))
        s0, s1 = layout.strip_box[1], layout.strip_box[3]
        draw.rectangle([x0 + 1, s0, x1 - 1, s1 - 1], fill=colour)
        label = str(_field(block, "block", b))
        draw.text(((x0 + x1) / 2, s1 + 3), label, fill=TEXT_COLOUR, font=small, anchor="mt")

    # tau under the scores, so a score sitting on tau stays visible
    if _finite(tau):
        ty = layout.y(tau)
        for x in range(left, right, 8):
            draw.line([x, ty, min(x + 4, right), ty], fill=TAU_COLOUR, width=1)
        draw.text((left - 4, ty), f"tau {tau:.2f}", fill=TAU_COLOUR, font=small, anchor="rm")

    for b, block in enumerate(blocks):
        x0, x1 = layout.column(b)
        colour = DECISION_COLOURS.get(_field(block, "decision"), UNKNOWN_COLOUR)
        scores = [float(s) for s in (_field(block, "scores") or []) if _finite(s)]
        for i, s in enumerate(scores):
            x = x0 + (x1 - x0) * (i + 1) / (len(scores) + 1)
            y = layout.y(s)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=DOT_COLOUR)
        aggregate = _field(block, "aggregate")
        if _finite(aggregate):
            y = layout.y(aggregate)
            draw.rectangle([x0 + 3, y - 1, x1 - 3, y + 1], fill=colour)

    draw.line([left, top, left, bottom], fill=AXIS_COLOUR)
    for value in (layout.low, layout.high):
        draw.text((left - 4, layout.y(value)), f"{value:.1f}", fill=AXIS_COLOUR, font=small,
                  anchor="rb" if value == layout.low else "rt")

    _legend(draw, blocks, width, small)
    return image


def _legend(draw: ImageDraw.ImageDraw, blocks: list, width: int, font) -> None:
    x = _MARGIN_LEFT
    for name, colour in DECISION_COLOURS.items():
        draw.rectangle([x, 9, x + 10, 19], fill=colour)
        draw.text((x + 14, 14), name, fill=TEXT_COLOUR, font=font, anchor="lm")
        x += 22 + round(draw.textlength(name, font=font))
    decided = [_field(b, "decision") for b in blocks
               if _field(b, "decision") in ("accepted", "rejected") and _finite(_field(b, "aggregate"))]
    accepted, scored = decided.count("accepted"), len(decided)
    if not blocks:
        text = "no blocks"
    elif scored:
        text = f"accepted {accepted}/{scored} scored ({100 * accepted / scored:.0f}%)"
    else:
        text = "no block was scored"
    draw.text((width - _MARGIN_RIGHT, 14), text, fill=TEXT_COLOUR, font=font, anchor="rm")
