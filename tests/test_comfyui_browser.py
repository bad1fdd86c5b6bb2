"""The pack in ComfyUI's real frontend, in headless Chromium (tests/browser/run_workflow.mjs).

Skipped unless SDVG_COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui.py), Chromium is
installed (CHROMIUM, default /usr/bin/chromium) and SDVG_PUPPETEER_DIR names a node_modules
folder holding puppeteer-core (npm install puppeteer-core). Each shipped workflow is loaded as a
user drags it in, run, re-queued (ComfyUI serves it from its cache) and the page reloaded; after
each step the page itself says whether every SDVG timeline shows every block, lies inside its
node, and is hit-tested clear of any other element, and whether any nodes or group titles
overlap. The screenshots (SDVG_SCREENSHOT_DIR, default a temporary folder) are the ones the
README and the template thumbnails are made from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import comfyui
import support

PUPPETEER = os.environ.get("SDVG_PUPPETEER_DIR")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BLOCKS = 5
pytestmark = [
    pytest.mark.skipif(not comfyui.COMFYUI, reason="set SDVG_COMFYUI_DIR to a ComfyUI checkout to run it"),
    pytest.mark.skipif(not (PUPPETEER and (Path(PUPPETEER) / "puppeteer-core").is_dir()),
                       reason="set SDVG_PUPPETEER_DIR to a node_modules folder holding puppeteer-core"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) or shutil.which("node") is None,
                       reason="needs Chromium and node.js"),
]
STEPS_AFTER_A_RUN = ("after_run", "after_cached_requeue", "after_reload")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = comfyui.start_server(tmp_path_factory.mktemp("comfyui"))
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", support.WORKFLOWS, ids=lambda p: p.stem)
def test_the_timeline_is_seen_whole_during_after_and_across_a_reload(server, path, tmp_path):
    shots = Path(os.environ.get("SDVG_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    # CPU-sized; tau where the tiny random router accepts about half the drafts, so every colour shows.
    settings = {**support.TINY_SETTINGS, "num_blocks": BLOCKS, "tau": -1.0,
                "seed": 1000 + support.WORKFLOWS.index(path)}
    done = subprocess.run(
        ["node", str(support.ROOT / "tests" / "browser" / "run_workflow.mjs"), server.url(""), str(path),
         json.dumps(settings), str(shots)],
        capture_output=True, text=True, timeout=comfyui.RUN_SECONDS, env={**os.environ, "NODE_PATH": PUPPETEER})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in report, f"{report['error']}\n{server.log_tail()}"
    print(f"\n{path.stem}: screenshots in {shots}")
    assert not [e for e in report["console_errors"] if "sdvg" in e.lower()], report["console_errors"]
    kinds = {n["type"] for n in support.load(path)["nodes"]}
    expected = {"SDVGSampler"} if "SDVGSampler" in kinds else {"SDVGBegin", "SDVGFinish"}
    for step, seen in report["steps"].items():
        assert {t["type"] for t in seen["timelines"]} == expected, step
        for timeline in seen["timelines"]:
            where = f"{step}, {timeline['type']}"
            assert timeline["covered"] == 0, f"{where}: covered by {timeline['covered_by']}"
            assert timeline["inside_node"], f"{where}: the timeline runs out of its node"
            assert timeline["height"] > 20 and timeline["width"] > 100, where
            shown = BLOCKS if step in STEPS_AFTER_A_RUN else 0
            assert timeline["blocks"] == timeline["total"] == shown, f"{where}: {timeline}"
        assert seen["overlaps"] == [], f"{step}: nodes overlap"
        assert seen["group_titles_covered"] == [], f"{step}: a node sits on a group's title"
