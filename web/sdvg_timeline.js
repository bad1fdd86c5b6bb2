// Live block timeline on SDVG Sampler / SDVG Begin / SDVG Finish.
// The backend sends one "sdvg.block" message per committed block; the node draws one column
// per block in its decision colour, the block's score (a bar) and frame scores (dots) against
// the tau line, and under it the accept rate the logged scores would give at the tau slider's
// current value.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { DECISION_COLOURS, acceptRateAt, describeRate, scoreRange } from "./sdvg_math.js";

const TIMELINE_NODES = new Set(["SDVGSampler", "SDVGBegin", "SDVGFinish"]);
const STRIP = 78; // px the timeline adds under the widgets
const PAD = 10;

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

function drawTimeline(node, ctx) {
  const blocks = node.sdvgBlocks || [];
  const total = Math.max(node.sdvgNumBlocks || 0, blocks.length);
  const x0 = PAD;
  const width = node.size[0] - 2 * PAD;
  const top = node.size[1] - STRIP + 4;
  const height = STRIP - 26;
  ctx.save();
  ctx.fillStyle = "#1c1c1c";
  ctx.fillRect(x0, top, width, height);
  const tau = currentTau(node);
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  if (!total) {
    ctx.fillStyle = "#999";
    ctx.fillText("SDVG timeline: run the graph", x0 + 6, top + height / 2);
    ctx.restore();
    return;
  }
  const [low, high] = scoreRange(blocks, tau);
  const y = (s) => top + height - ((s - low) / (high - low)) * height;
  const column = width / total;
  for (let b = 0; b < total; b++) {
    const block = blocks[b];
    const left = x0 + b * column;
    if (!block) {
      ctx.strokeStyle = "#444";
      ctx.strokeRect(left + 1, top + 1, column - 2, height - 2);
      continue;
    }
    const colour = DECISION_COLOURS[block.decision] || "#888";
    ctx.globalAlpha = 0.25;
    ctx.fillStyle = colour;
    ctx.fillRect(left + 1, top, column - 2, height);
    ctx.globalAlpha = 1;
    ctx.fillRect(left + 1, top + height - 4, column - 2, 4);
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
    ctx.moveTo(x0, y(tau));
    ctx.lineTo(x0 + width, y(tau));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.fillStyle = "#ccc";
  ctx.fillText(describeRate(acceptRateAt(blocks, tau), tau), x0, top + height + 11);
  ctx.restore();
}

app.registerExtension({
  name: "sdvg.timeline",

  setup() {
    api.addEventListener("sdvg.block", ({ detail }) => {
      const node = findNode(detail?.node);
      if (!node) return;
      if (detail.block === 0 || !node.sdvgBlocks) node.sdvgBlocks = [];
      node.sdvgBlocks[detail.block] = detail;
      node.sdvgNumBlocks = detail.num_blocks;
      node.setDirtyCanvas(true, true);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TIMELINE_NODES.has(nodeData.name)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.sdvgBlocks = [];
      const node = this;
      const tau = this.widgets?.find((w) => w.name === "tau");
      if (tau) {
        const callback = tau.callback;
        tau.callback = function () {
          const r = callback?.apply(this, arguments);
          node.setDirtyCanvas(true, true); // redraw the accept rate at the new tau
          return r;
        };
      }
      this.setSize([Math.max(this.size[0], 360), this.size[1]]);
      return result;
    };

    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function () {
      const size = computeSize.apply(this, arguments);
      size[1] += STRIP; // room for the timeline under the widgets
      return size;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.sdvg_blocks) {
        this.sdvgBlocks = message.sdvg_blocks;
        this.sdvgNumBlocks = message.sdvg_blocks.length;
        this.setDirtyCanvas(true, true);
      }
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) drawTimeline(this, ctx);
    };
  },
});
