"""Template thumbnails and README pictures from the browser test's screenshots.

    python tests/browser/pictures.py SCREENSHOT_DIR

SCREENSHOT_DIR is the SDVG_SCREENSHOT_DIR of a run of tests/test_comfyui_browser.py. Writes
example_workflows/<workflow>.jpg (what ComfyUI's template browser shows) and docs/images/*.
Each picture is a crop of a real screenshot, never drawn by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CANVAS = (33, 33, 33)  # ComfyUI's dark canvas
CHROME = (70, 80, 1800, 1000)  # the part of a 1920x1080 screenshot under the menus and toolbars
THUMBNAIL = (512, 384)  # the template browser shows a 4:3 card
README_WIDTH = 1400


def graph_crop(path: Path, pad: int = 16) -> Image.Image:
    """The screenshot cut down to the nodes: everything that is not bare canvas, plus a margin."""
    image = Image.open(path).convert("RGB").crop(CHROME)
    pixels = np.asarray(image).astype(int)
    busy = np.abs(pixels - np.array(CANVAS)).sum(axis=-1) > 24
    rows, cols = np.flatnonzero(busy.any(axis=1)), np.flatnonzero(busy.any(axis=0))
    if not len(rows):
        raise SystemExit(f"{path} shows no nodes")
    box = (max(0, cols[0] - pad), max(0, rows[0] - pad),
           min(image.width, cols[-1] + pad), min(image.height, rows[-1] + pad))
    return image.crop(box)


def without_dark_bottom(image: Image.Image) -> Image.Image:
    """A close-up that runs past the page's bottom edge ends in black rows: cut them."""
    pixels = np.asarray(image).astype(int)
    lit = np.flatnonzero(pixels.max(axis=(1, 2)) > 40)
    return image.crop((0, 0, image.width, int(lit[-1]) + 1)) if len(lit) else image


def fit_width(image: Image.Image, width: int) -> Image.Image:
    if image.width <= width:
        return image
    return image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)


def thumbnail(graph: Image.Image) -> Image.Image:
    """The middle of the graph (where the SDVG node sits) at the card's aspect ratio."""
    width = min(graph.width, round(graph.height * THUMBNAIL[0] / THUMBNAIL[1]))
    height = min(graph.height, round(width * THUMBNAIL[1] / THUMBNAIL[0]))
    left, top = (graph.width - width) // 2, (graph.height - height) // 2
    return graph.crop((left, top, left + width, top + height)).resize(THUMBNAIL, Image.LANCZOS)


def main(shots: Path) -> None:
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for workflow in sorted((ROOT / "example_workflows").glob("*.json")):
        after_run = shots / f"{workflow.stem}.after_run.png"
        graph = graph_crop(after_run)
        thumbnail(graph).save(workflow.with_suffix(".jpg"), quality=88)
        slug = workflow.stem.lower().replace(" ", "-")
        fit_width(graph, README_WIDTH).save(images / f"{slug}.jpg", quality=88)
        print(f"{workflow.with_suffix('.jpg').relative_to(ROOT)}, docs/images/{slug}.jpg from {after_run.name}")
    for name, out in (("SDVG text to video.node9.png", "sampler-node.png"),
                      ("SDVG modular block loop.after_reload.png", None)):
        source = shots / name
        if out:  # a node at 125%, as the screenshot has it
            without_dark_bottom(Image.open(source).convert("RGB")).save(images / out, optimize=True)
        else:
            fit_width(graph_crop(source), README_WIDTH).save(images / "modular-after-reload.jpg", quality=88)
        print(f"docs/images/{out or 'modular-after-reload.jpg'} from {name}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
