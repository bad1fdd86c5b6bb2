// Drives ComfyUI's real frontend in headless Chromium for tests/test_comfyui_browser.py:
// loads one workflow, runs it, re-queues it (served from cache), reloads the page, and after
// each step reports, from the page itself, what the SDVG timelines show and whether anything
// covers them or overlaps. Screenshots of each step go to the output folder.
//
// node run_workflow.mjs URL WORKFLOW.json SETTINGS_JSON OUT_DIR   (puppeteer-core on NODE_PATH)
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const puppeteer = require("puppeteer-core");

const [url, workflowPath, settingsJson, outDir] = process.argv.slice(2);
const settings = JSON.parse(settingsJson);
const name = path.basename(workflowPath, ".json");
const STEP_MS = 600_000;

// A first-time user gets the template browser and the minimap; this one has seen them.
// Text stays drawn at the zoom that fits a whole workflow in the screenshot.
for (const [id, value] of [["Comfy.TutorialCompleted", true], ["Comfy.Minimap.Visible", false],
                           ["LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2]]) {
  await fetch(`${url}/api/settings/${id}`, { method: "POST", body: JSON.stringify(value) });
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1920,1080"],
  defaultViewport: { width: 1920, height: 1080 },
});
const report = { workflow: name, steps: {}, console_errors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => report.console_errors.push(String(e)));
  page.on("dialog", (d) => d.accept()); // "leave the page?" on reload
  page.setDefaultTimeout(STEP_MS);

  async function ready() {
    await page.waitForFunction(() => {
      const app = window.comfyAPI?.app?.app;
      return app?.graph && app.extensions?.some((e) => e.name === "sdvg.timeline");
    });
  }

  // Everything the test checks, read from the page: timelines (blocks drawn, hit-tested at a grid
  // of points), node boxes that overlap, and group titles a node sits on. A node's box reaches
  // BADGE_ROW above its title: the frontend draws the node-source badge ("SDVG") there.
  async function inspect(step) {
    const result = await page.evaluate(() => {
      const app = window.comfyAPI.app.app;
      const graph = app.graph;
      const timelines = [];
      for (const node of graph.nodes) {
        const canvas = node.sdvgCanvas;
        if (!canvas) continue;
        const r = canvas.getBoundingClientRect();
        let covered = 0, probes = 0, by = new Set();
        for (const fx of [0.03, 0.25, 0.5, 0.75, 0.97]) {
          for (const fy of [0.05, 0.5, 0.95]) {
            const x = r.left + fx * r.width, y = r.top + fy * r.height;
            const hit = document.elementFromPoint(x, y);
            probes += 1;
            if (hit !== canvas) {
              covered += 1;
              by.add(hit ? `${hit.tagName.toLowerCase()}.${hit.className}` : "nothing");
            }
          }
        }
        const ds = app.canvas.ds, screen = app.canvas.canvas.getBoundingClientRect();
        const [nx, ny, nw, nh] = node.boundingRect;
        const [left, top] = ds.convertOffsetToCanvas([nx, ny]);
        const inside = r.left >= screen.left + left - 1 && r.right <= screen.left + left + nw * ds.scale + 1 &&
          r.top >= screen.top + top - 1 && r.bottom <= screen.top + top + nh * ds.scale + 1;
        timelines.push({
          inside_node: inside, aggregates: (node.sdvgBlocks || []).map((b) => b?.aggregate ?? null),
          node: node.id, type: node.type, blocks: Number(canvas.dataset.blocks), total: Number(canvas.dataset.total),
          width: r.width, height: r.height, covered, probes, covered_by: [...by],
        });
      }
      const BADGE_ROW = 26;
      const boxes = graph.nodes.map((n) => {
        const r = n.boundingRect;
        return { id: n.id, type: n.type, box: r ? [r[0], r[1] - BADGE_ROW, r[2], r[3] + BADGE_ROW] : null };
      });
      const meets = (a, b) => a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
      const overlaps = [];
      for (let i = 0; i < boxes.length; i++)
        for (let j = i + 1; j < boxes.length; j++)
          if (boxes[i].box && boxes[j].box && meets(boxes[i].box, boxes[j].box))
            overlaps.push([`${boxes[i].type}#${boxes[i].id}`, `${boxes[j].type}#${boxes[j].id}`]);
      const titles = [];
      for (const group of graph._groups || graph.groups || []) {
        const bar = [group.pos[0], group.pos[1], group.size[0], group.titleHeight ?? 34];
        for (const b of boxes) if (b.box && meets(bar, b.box)) titles.push([group.title, `${b.type}#${b.id}`]);
      }
      return { timelines, overlaps, group_titles_covered: titles };
    });
    await page.screenshot({ path: path.join(outDir, `${name}.${step}.png`) });
    report.steps[step] = result;
  }

  // Each timeline node at 125% zoom, for the README and the template thumbnails, in a viewport
  // tall enough for the whole node (the Sampler with its preview is over 1000 px at this zoom).
  async function closeups() {
    const scale = 1.25, margin = 40;
    await page.setViewport({ width: 1920, height: 1800 });
    const ids = await page.evaluate(() => window.comfyAPI.app.app.graph.nodes.filter((n) => n.sdvgCanvas).map((n) => n.id));
    for (const id of ids) {
      const clip = await page.evaluate((id, scale, margin) => {
        const app = window.comfyAPI.app.app;
        const node = app.graph.getNodeById(id);
        const [x, y, w, h] = node.boundingRect;
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [margin / scale - x, margin / scale - y];
        app.canvas.setDirty(true, true);
        const r = app.canvas.canvas.getBoundingClientRect();
        return { x: r.left + margin - 8, y: r.top + margin - 8, width: w * scale + 16, height: h * scale + 16 };
      }, id, scale, margin);
      await new Promise((r) => setTimeout(r, 800));
      await page.screenshot({ path: path.join(outDir, `${name}.node${id}.png`), clip });
    }
    await page.setViewport({ width: 1920, height: 1080 });
    await new Promise((r) => setTimeout(r, 500)); // the canvas follows the window's resize first
    await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Comfy.Canvas.FitView"));
    await new Promise((r) => setTimeout(r, 500));
  }

  async function runQueued() {
    await page.evaluate(() => new Promise((resolve, reject) => {
      const { api } = window.comfyAPI.api;
      const done = (e) => { off(); resolve(e.type); };
      const failed = (e) => { off(); reject(new Error(JSON.stringify(e.detail).slice(0, 2000))); };
      const off = () => {
        api.removeEventListener("execution_success", done);
        api.removeEventListener("execution_error", failed);
      };
      api.addEventListener("execution_success", done);
      api.addEventListener("execution_error", failed);
      window.comfyAPI.app.app.queuePrompt(0, 1); // as the Run button does
    }));
    await new Promise((r) => setTimeout(r, 1500)); // the last redraws
  }

  await page.goto(url, { waitUntil: "networkidle2" });
  await ready();
  // The workflow as a user drags it in, then made CPU-sized; the umT5 CLIPLoader, whose model
  // cannot be shrunk, becomes the test's stand-in CLIP (as in the API-format end-to-end tests).
  await page.evaluate(async (workflow, settings, name) => {
    const app = window.comfyAPI.app.app;
    await app.loadGraphData(workflow, true, true, null);
    const graph = app.graph;
    for (const node of [...graph.nodes]) {
      if (node.type === "CLIPLoader") {
        const stand_in = window.LiteGraph.createNode("SDVGE2ETinyCLIP");
        stand_in.pos = [...node.pos];
        graph.add(stand_in);
        for (const id of [...(node.outputs[0].links || [])]) {
          const link = graph.links.get ? graph.links.get(id) : graph.links[id];
          stand_in.connect(0, graph.getNodeById(link.target_id), link.target_slot);
        }
        graph.remove(node);
      }
      for (const w of node.widgets || []) {
        if (w.name in settings) w.value = settings[w.name];
        if (node.type === "SaveVideo" && w.name === "filename_prefix") w.value = "browser/" + name;
      }
    }
    app.canvas.setDirty(true, true);
  }, JSON.parse(fs.readFileSync(workflowPath, "utf8")), settings, name);
  await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Comfy.Canvas.FitView"));
  await new Promise((r) => setTimeout(r, 1000));
  await inspect("before");
  await runQueued();
  await inspect("after_run");
  await closeups();
  await runQueued(); // nothing changed: ComfyUI serves it from its cache
  await inspect("after_cached_requeue");
  await page.goto(url, { waitUntil: "domcontentloaded" }); // the same tab, as F5 does
  await ready();
  await new Promise((r) => setTimeout(r, 2000));
  await inspect("after_reload");
} catch (error) {
  report.error = String(error.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
