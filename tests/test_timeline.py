"""The block timeline: the Python renderer (node IMAGE, CLI timeline.png) and the web extension."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import support
from sdvg_core.stats import BlockStats
from sdvg_core.timeline import DECISION_COLOURS, TAU_COLOUR, accept_rate_at, render_timeline, timeline_layout

ROOT = support.ROOT
support.load_pack()
from sdvg_pack_under_test.nodes import session as node_session  # noqa: E402


def timeline_blocks():
    return [
        BlockStats(block=0, decision="target"),
        BlockStats(block=1, decision="accepted", scores=[0.4, 0.9, 0.6], aggregate=0.4, tau=-0.5),
        BlockStats(block=2, decision="rejected", scores=[-1.4, 0.2, -0.3], aggregate=-1.4, tau=-0.5),
        BlockStats(block=3, decision="skipped"),
        BlockStats(block=4, decision="accepted", scores=[-0.2, -0.1], aggregate=-0.2, tau=-0.5),
    ]


def rows_with(image: np.ndarray, colour, x0: int, x1: int, y0: int, y1: int) -> list[int]:
    region = image[y0:y1, x0:x1]
    hits = np.all(region == np.array(colour, dtype=region.dtype), axis=-1).any(axis=1)
    return [y0 + int(i) for i in np.flatnonzero(hits)]


@pytest.mark.parametrize("as_dicts", [False, True], ids=["BlockStats", "dicts"])
def test_timeline_colours_blocks_and_puts_scores_on_the_right_side_of_tau(as_dicts):
    blocks, tau = timeline_blocks(), -0.5
    picture = render_timeline([b.to_dict() for b in blocks] if as_dicts else blocks, tau, 640, 240)
    image = np.asarray(picture)
    layout = timeline_layout(blocks, tau, 640, 240)
    left, top, right, bottom = layout.plot_box
    _, s0, _, s1 = layout.strip_box
    tau_rows = rows_with(image, TAU_COLOUR, left, right, top, bottom)
    assert tau_rows, "the tau line is drawn"
    tau_y = int(np.median(tau_rows))
    bar_y = {}
    for b, block in enumerate(blocks):
        x0, x1 = layout.column(b)
        colour = DECISION_COLOURS[block.decision]
        assert tuple(image[(s0 + s1) // 2, (x0 + x1) // 2]) == colour  # the decision strip
        rows = rows_with(image, colour, x0 + 4, x1 - 4, top, bottom)
        if block.aggregate is None:
            assert not rows
            continue
        bar_y[b] = np.mean(rows)
        assert (bar_y[b] < tau_y) == (block.aggregate > tau), f"block {b} is drawn on the wrong side of tau"
    order = sorted(bar_y, key=bar_y.get)  # top to bottom = highest score first
    assert order == sorted(bar_y, key=lambda b: -blocks[b].aggregate)


def test_timeline_takes_odd_inputs():
    blocks = timeline_blocks()
    assert render_timeline([], -0.7).size == (768, 256)
    assert render_timeline(blocks, float("inf")).size == (768, 256)
    with pytest.raises(ValueError):
        render_timeline(blocks, 0.0, 50, 50)


def test_accept_rate_at_counts_only_scored_blocks():
    rng = np.random.default_rng(0)
    decisions = ["target", "accepted", "rejected", "skipped"]
    blocks = [{"decision": decisions[i % 4], "aggregate": float(rng.normal()) if i % 4 in (1, 2) else None}
              for i in range(40)]
    for tau in (-2.0, -0.3, 0.0, 0.7, 3.0):
        scored = [b["aggregate"] for b in blocks if b["decision"] in ("accepted", "rejected")]
        assert accept_rate_at(blocks, tau) == (sum(a >= tau for a in scored), len(scored))


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed")
def test_web_extension_math_agrees_with_python():
    """The tau slider's accept-rate estimate (web/sdvg_math.js) equals timeline.accept_rate_at,
    and the browser draws the Python renderer's colours."""
    rng = np.random.default_rng(1)
    decisions = ["target", "accepted", "rejected", "skipped"]
    blocks = [{"decision": decisions[int(rng.integers(4))], "aggregate": float(rng.normal())} for _ in range(30)]
    taus = [-1.5, -0.25, 0.0, 0.5]
    script = (
        "import { acceptRateAt, DECISION_COLOURS } from './web/sdvg_math.js';\n"
        f"const blocks = {json.dumps(blocks)};\n"
        f"const out = {json.dumps(taus)}.map((t) => acceptRateAt(blocks, t));\n"
        "console.log(JSON.stringify({rates: out, colours: DECISION_COLOURS}));\n")
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    for tau, rate in zip(taus, result["rates"]):
        assert (rate["accepted"], rate["scored"]) == accept_rate_at(blocks, tau)
    for decision, rgb in DECISION_COLOURS.items():
        assert result["colours"][decision] == "#%02x%02x%02x" % rgb
    for path in (ROOT / "web").glob("*.js"):
        subprocess.run(["node", "--check", str(path)], check=True, timeout=60)


EXTENSION_HARNESS = r"""
// Stand-ins for the browser's canvas, ComfyUI's app/api and a LiteGraph node, enough to drive
// web/sdvg_timeline.js: every draw of the timeline's canvas is recorded.
let draws = [];
const context = { save() {}, restore() {}, clearRect() {}, setTransform() {}, beginPath() {}, moveTo() {},
  lineTo() {}, stroke() {}, setLineDash() {}, strokeRect() {},
  fillText(t) { draws.at(-1).texts.push(t); },
  fillRect(x, y, w, h) { draws.at(-1).rects.push([this.fillStyle, this.globalAlpha]); } };
globalThis.document = { createElement: (tag) => ({ tag, style: {}, dataset: {}, clientWidth: 400, clientHeight: 96,
  getContext() { draws.push({ texts: [], rects: [] }); return context; } }) };
import { app } from "./scripts/app.js";
import { api } from "./scripts/api.js";
await import("./extensions/pack/sdvg_timeline.js");
const extension = app.extensions[0];
class Node {
  constructor() { this.id = 5; this.size = [300, 200]; this.widgets = [{ name: "seed", value: 1 },
    { name: "tau", value: -0.7, callback: null }]; this.domWidgets = []; }
  addDOMWidget(name, type, element, options) { const w = { name, type, element, options };
    this.domWidgets.push(w); return w; }
  computeSize() { return [300, 200 + this.domWidgets.map((w) => w.options.getMinHeight()).reduce((a, b) => a + b, 0)]; }
  setSize(size) { this.size = size; }
}
await extension.beforeRegisterNodeDef(Node, { name: "SDVGSampler" });
const node = new Node();
node.onNodeCreated();
app.graph = { getNodeById: (id) => (id === 5 ? node : null) };
extension.setup();
const canvas = node.domWidgets[0].element;
const last = () => ({ ...draws.at(-1), blocks: canvas.dataset.blocks, total: canvas.dataset.total });
const out = { widget: { name: node.domWidgets[0].name, serialize: node.domWidgets[0].options.serialize },
  size: node.size, empty: last() };
const before = draws.length;
for (const detail of DETAILS) api.emit("sdvg.block", { detail });
out.drawsForBlocks = draws.length - before;
out.atDefault = last();
const tau = node.widgets[1];
tau.value = -1.5;
tau.callback(-1.5);
out.atLowerTau = last();
const saved = {};
node.onSerialize(saved);
out.saved = saved;
const reloaded = new Node();
reloaded.onNodeCreated();
reloaded.size = [300, 100]; // a size saved before the timeline existed
reloaded.onConfigure(saved);
out.reloaded = { ...draws.at(-1), blocks: reloaded.domWidgets[0].element.dataset.blocks, size: reloaded.size };
node.onExecuted({ sdvg_blocks: [DETAILS[0]] });
out.afterExecuted = last();
const blank = {};
new Node().onSerialize?.(blank);
out.blankSaved = blank;
console.log(JSON.stringify(out));
"""
EXTENSION_APP = """
export const app = { extensions: [], graph: null, registerExtension(e) { this.extensions.push(e); } };
"""
EXTENSION_API = """
const listeners = {};
export const api = {
  addEventListener(type, fn) { (listeners[type] ||= []).push(fn); },
  emit(type, event) { for (const fn of listeners[type] || []) fn(event); },
};
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed")
def test_web_extension_draws_the_timeline_and_follows_the_tau_slider(tmp_path):
    """web/sdvg_timeline.js under node with stand-ins for ComfyUI's app, api and a node: the
    sdvg.block messages fill the timeline, and moving tau re-estimates the accept rate."""
    pack = tmp_path / "extensions" / "pack"
    pack.mkdir(parents=True)
    for js in (ROOT / "web").glob("*.js"):
        shutil.copy(js, pack / js.name)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(EXTENSION_APP)
    (tmp_path / "scripts" / "api.js").write_text(EXTENSION_API)
    details = [node_session.block_payload(s, 3, "5") for s in (
        BlockStats(block=0, decision="target"),
        BlockStats(block=1, decision="accepted", scores=[0.5, 0.9], aggregate=0.5, tau=-0.7),
        BlockStats(block=2, decision="rejected", scores=[-1.0, 0.3], aggregate=-1.0, tau=-0.7))]
    assert [d["tau"] for d in details] == [None, -0.7, -0.7], "each block carries its own tau, as in stats.json"
    harness = tmp_path / "harness.mjs"
    harness.write_text(EXTENSION_HARNESS.replace("DETAILS", json.dumps(details)))
    done = subprocess.run(["node", str(harness)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["widget"] == {"name": "sdvg_timeline", "serialize": False}, "a DOM widget, not a prompt input"
    assert out["size"][1] > 200 and out["size"][0] >= 380, "the node grows to make room for the timeline"
    assert out["empty"]["texts"] == ["SDVG timeline: run the graph"] and out["empty"]["total"] == "0"
    assert out["drawsForBlocks"] == 3, "one redraw per committed block"
    hexes = {"#%02x%02x%02x" % rgb: name for name, rgb in DECISION_COLOURS.items()}

    def drawn(state):
        return {hexes[colour] for colour, alpha in state["rects"] if colour in hexes and alpha == 1}

    assert out["atDefault"]["texts"] == ["at tau -0.70: 1/2 accepted (50%)"]
    assert (out["atDefault"]["blocks"], out["atDefault"]["total"]) == ("3", "3")
    assert drawn(out["atDefault"]) == {"target", "accepted", "rejected"}
    assert out["atLowerTau"]["texts"] == ["at tau -1.50: 2/2 accepted (100%)"], "the slider re-estimates"
    assert out["saved"]["sdvg_timeline"] == {"blocks": details, "num_blocks": 3}
    assert out["reloaded"]["blocks"] == "3" and drawn(out["reloaded"]) == {"target", "accepted", "rejected"}
    assert out["reloaded"]["size"][1] > 200, "a small saved size grows to fit the timeline"
    assert out["afterExecuted"]["blocks"] == "1" and "no scored blocks yet" in out["afterExecuted"]["texts"][0]
    assert out["blankSaved"] == {}, "a node that never ran saves nothing extra"
