// Live block timeline on SDVG Sampler / SDVG Begin / SDVG Finish.
// The backend sends one "sdvg.block" message per committed block; the node shows one column per
// block in its decision colour, the block's score (a bar) and frame scores (dots) against the tau
// line, and under it the accept rate the logged scores would give at the tau slider's value.
//
// The timeline is a DOM widget (a <canvas> in the node's widget column), so the progress preview,
// which ComfyUI draws below the widgets, never covers it. The last run's blocks are kept in the
// node's serialized form (onSerialize/onConfigure), which is what ComfyUI persists across a page
// reload and a cached re-queue sends nothing for; they travel with a saved workflow too.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { DECISION_COLOURS, acceptRateAt, describeRate, scoreRange } from "./sdvg_math.js";

const TIMELINE_NODES = new Set(["SDVGSampler", "SDVGBegin", "SDVGFinish"]);
const HEIGHT = 96; // px of the widget: columns, then one line of text
const TEXT_LINE = 16;
const MARGIN = 6; // px around the canvas inside the widget's slot
const MIN_WIDTH = 380;
const SAVED_KEY = "sdvg_timeline"; // in the serialized node: {blocks, num_blocks}

function findNode(id) {
  const graph = app.graph;
  if (!graph || id === null || id === undefined) return null;
  return graph.getNodeById(Number(id)) ?? graph.getNodeById(id) ?? null;
}

function currentTau(node) {
  const widget = node.widgets?.find((w) => w.name === "tau");
  if (widget) return Number(widget.value);
  const logged = (node.sdvgBlocks || []).find((b) => b && typeof b.tau === "number");
  return logged ? logged.tau : NaN;
}

// Draw the timeline of `blocks` (total columns) in a width x height area of ctx.
export function drawTimeline(ctx, blocks, total, tau, width, height) {
  const top = 0;
  const plot = height - TEXT_LINE;
  ctx.save();
  ctx.clearRect?.(0, 0, width, height);
  ctx.fillStyle = "#1c1c1c";
  ctx.fillRect(0, top, width, plot);
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  if (!total) {
    ctx.fillStyle = "#999";
    ctx.fillText("SDVG timeline: run the graph", 6, top + plot / 2);
    ctx.restore();
    return 0;
  }
  const [low, high] = scoreRange(blocks, tau);
  const y = (s) => top + plot - ((s - low) / (high - low)) * plot;
  const column = width / total;
  let shown = 0;
  for (let b = 0; b < total; b++) {
    const block = blocks[b];
    const left = b * column;
    if (!block) {
      ctx.strokeStyle = "#444";
      ctx.strokeRect(left + 1, top + 1, column - 2, plot - 2);
      continue;
    }
    shown += 1;
    const colour = DECISION_COLOURS[block.decision] || "#888";
    ctx.globalAlpha = 0.25;
    ctx.fillStyle = colour;
    ctx.fillRect(left + 1, top, column - 2, plot);
    ctx.globalAlpha = 1;
    ctx.fillRect(left + 1, top + plot - 4, column - 2, 4);
    const scores = (block.scores || []).filter(Number.isFinite);
    ctx.fillStyle = "#ddd";
    scores.forEach((s, i) => {
      const cx = left + (column * (i + 1)) / (scores.length + 1);
      ctx.fillRect(cx - 1, y(s) - 1, 2, 2);
    });
    if (Number.isFinite(block.aggregate)) {
      ctx.fillStyle = colour;
      ctx.fillRect(left + 3, y(block.aggregate) - 1.5, column - 6, 3);
    }
  }
  if (Number.isFinite(tau)) {
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(0, y(tau));
    ctx.lineTo(width, y(tau));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.fillStyle = "#ccc";
  ctx.fillText(describeRate(acceptRateAt(blocks, tau), tau), 0, plot + TEXT_LINE / 2 + 1);
  ctx.restore();
  return shown;
}

// Redraw the node's canvas at its on-screen size; the canvas says what it shows (data-*),
// which is what the browser test reads.
function render(node) {
  const canvas = node.sdvgCanvas;
  if (!canvas) return;
  const blocks = node.sdvgBlocks || [];
  const total = Math.max(node.sdvgNumBlocks || 0, blocks.length);
  const width = Math.max(1, canvas.clientWidth || node.size[0] - 20);
  const height = Math.max(1, canvas.clientHeight || HEIGHT);
  const scale = globalThis.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * scale)) canvas.width = Math.round(width * scale);
  if (canvas.height !== Math.round(height * scale)) canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.setTransform?.(scale, 0, 0, scale, 0, 0);
  const shown = drawTimeline(ctx, blocks, total, currentTau(node), width, height);
  canvas.dataset.blocks = String(shown);
  canvas.dataset.total = String(total);
  canvas.title = total ? `${shown} of ${total} blocks` : "SDVG timeline: run the graph";
}

function setBlocks(node, blocks, total) {
  node.sdvgBlocks = blocks;
  node.sdvgNumBlocks = total;
  render(node);
}

// A run's last block: let ComfyUI's change tracker see the new state, so it is persisted.
function remember() {
  app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
}

app.registerExtension({
  name: "sdvg.timeline",

  setup() {
    api.addEventListener("sdvg.block", ({ detail }) => {
      const node = findNode(detail?.node);
      if (!node) return;
      const blocks = detail.block === 0 || !node.sdvgBlocks ? [] : node.sdvgBlocks;
      blocks[detail.block] = detail;
      setBlocks(node, blocks, detail.num_blocks);
      if (detail.block === detail.num_blocks - 1) remember();
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TIMELINE_NODES.has(nodeData.name)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      this.sdvgBlocks = [];
      this.sdvgNumBlocks = 0;
      const canvas = document.createElement("canvas");
      canvas.className = "sdvg-timeline";
      canvas.style.width = "100%";
      canvas.style.height = "100%";
      this.sdvgCanvas = canvas;
      this.addDOMWidget("sdvg_timeline", "sdvg_timeline", canvas, {
        serialize: false,
        hideOnZoom: false,
        margin: MARGIN,
        getMinHeight: () => HEIGHT + 2 * MARGIN,
        getMaxHeight: () => HEIGHT + 2 * MARGIN,
      });
      globalThis.ResizeObserver && new ResizeObserver(() => render(node)).observe(canvas);
      const tau = this.widgets?.find((w) => w.name === "tau");
      if (tau) {
        const callback = tau.callback;
        tau.callback = function () {
          const r = callback?.apply(this, arguments);
          render(node); // the accept rate at the new tau
          return r;
        };
      }
      const size = this.computeSize();
      this.setSize([Math.max(size[0], this.size[0], MIN_WIDTH), Math.max(size[1], this.size[1])]);
      render(this);
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.sdvg_blocks) {
        setBlocks(this, message.sdvg_blocks, message.sdvg_blocks.length);
        remember();
      }
    };

    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (data) {
      onSerialize?.apply(this, arguments);
      if (this.sdvgNumBlocks) data[SAVED_KEY] = { blocks: this.sdvgBlocks, num_blocks: this.sdvgNumBlocks };
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (data) {
      onConfigure?.apply(this, arguments);
      const saved = data?.[SAVED_KEY];
      if (saved && Array.isArray(saved.blocks)) setBlocks(this, saved.blocks, saved.num_blocks || saved.blocks.length);
      const fits = this.computeSize(); // a saved size from before the timeline existed may be too small
      if (this.size[0] < fits[0] || this.size[1] < fits[1])
        this.setSize([Math.max(this.size[0], fits[0]), Math.max(this.size[1], fits[1])]);
    };
  },
});
