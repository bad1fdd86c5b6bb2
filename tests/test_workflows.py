"""The shipped workflows (example_workflows/*.json, ComfyUI's UI format) are valid and run.

Checked without ComfyUI: every node type is the pack's or a named core node; widget values
match INPUT_TYPES (seed widgets carry an extra control value); every link's type matches the
output it leaves and the input it enters; the modular graph's loop body is the four step
nodes. Then each workflow is converted to API format (as the browser does before queueing)
and executed on tiny model files by a minimal executor with ComfyUI's semantics (links,
rawLink inputs, hidden inputs, node expansion), with stand-ins for the core nodes; the
modular graph must give the composite graph's frames.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdvg_core.schedule import NUM_STEPS, start_step_for
from support import (SEED_CONTROL_VALUES, TINY_SETTINGS, VIRTUAL_NODES, WORKFLOWS, MiniExecutor, core_stand_ins,
                     is_link, load, load_pack, node_schema, tiny_models_for_workflows, to_api,
                     widget_names_with_controls)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def mappings(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def workflow_models(tmp_path_factory, pack):
    from sdvg_pack_under_test.nodes import host

    models = tmp_path_factory.mktemp("models")
    info = tiny_models_for_workflows(models)
    host.set_models_dir(models)
    yield info
    host.set_models_dir(None)


# ----------------------------------------------------------------------------- structure


def test_there_is_a_composite_and_a_modular_workflow(mappings):
    types = {p.name: {n["type"] for n in load(p)["nodes"]} for p in WORKFLOWS}
    assert any("SDVGSampler" in t for t in types.values()), types
    loop = {"SDVGBegin", "SDVGLoopStart", "SDVGDraftBlock", "SDVGRouteBlock", "SDVGRegenerateBlock",
            "SDVGCommitBlock", "SDVGLoopEnd", "SDVGFinish"}
    assert any(loop <= t for t in types.values()), types


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ui_format_and_node_types(path, mappings):
    wf = load(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, f"{path.name}: missing top-level key {key!r}"
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for node in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            assert key in node, f"{path.name}: node {node.get('id')} lacks {key!r}"
        node_schema(node["type"], mappings)  # raises for an unknown type
    orders = sorted(n["order"] for n in wf["nodes"])
    assert orders == list(range(len(ids)))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_template_has_a_thumbnail_and_ships_no_run(path):
    """ComfyUI's template browser titles a pack's template by its file name and shows
    <name>.jpg beside it (made from the browser test's screenshots: tests/browser/pictures.py);
    a shipped workflow carries no timeline of a past run."""
    from PIL import Image

    assert path.stem[0].isupper() and "_" not in path.stem, "the file name is the template's title"
    with Image.open(path.with_suffix(".jpg")) as picture:
        assert picture.format == "JPEG" and picture.size == (512, 384)
        assert len(np.unique(np.asarray(picture.convert("L")))) > 50, "a screenshot, not a blank"
    assert all("sdvg_timeline" not in node for node in load(path)["nodes"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_widget_values_match_input_types(path, mappings, workflow_models):
    for node in load(path)["nodes"]:
        schema = node_schema(node["type"], mappings)
        names = widget_names_with_controls(schema)
        values = node.get("widgets_values") or []
        assert len(values) == len(names), (
            f"{path.name}: node {node['id']} ({node['type']}) has {len(values)} widget values, "
            f"its inputs declare {len(names)} ({names})")
        widgets = iter(schema["widgets"])
        for name, value in zip(names, values):
            if name is None:
                assert value in SEED_CONTROL_VALUES, f"{node['type']}: seed control {value!r}"
                continue
            _, kind, options = next(widgets)
            where = f"{path.name}: {node['type']}.{name} = {value!r}"
            if kind == "COMBO" and isinstance(options, list):
                assert value in options, where
            elif kind == "COMBO":
                assert isinstance(value, str), where
            elif kind == "STRING":
                assert isinstance(value, str), where
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), where
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                if kind == "INT":
                    assert float(value).is_integer(), where
                bounds = options if isinstance(options, tuple) else (options.get("min", -math.inf),
                                                                     options.get("max", math.inf))
                assert bounds[0] <= value <= bounds[1], where


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_links_match_types_at_both_ends(path, mappings):
    wf = load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"link {link_id} is not recorded at both ends"
        assert out["type"] == kind == inp["type"], f"link {link_id}: {out['type']} -> {kind} -> {inp['type']}"
        declared_out = node_schema(nodes[src]["type"], mappings)["outputs"][src_slot]
        assert declared_out == kind, f"link {link_id}: {nodes[src]['type']} output {src_slot} is {declared_out}"
        schema = node_schema(nodes[dst]["type"], mappings)
        declared_in = dict(schema["inputs"]).get(inp["name"])
        if declared_in is None:  # a widget fed by a link
            assert "widget" in inp, f"link {link_id}: {nodes[dst]['type']} has no input {inp['name']!r}"
            widget_kind = {n: k for n, k, _ in schema["widgets"]}[inp["widget"]["name"]]
            declared_in = widget_kind
        assert declared_in == kind, f"link {link_id}: {nodes[dst]['type']}.{inp['name']} takes {declared_in}"
    for node in wf["nodes"]:  # every link a node records exists
        for slot in node.get("inputs", []):
            assert slot["link"] is None or any(l[0] == slot["link"] for l in wf["links"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_note_explains_tau_and_model_files(path):
    notes = [n["widgets_values"][0] for n in load(path)["nodes"] if n["type"] in VIRTUAL_NODES]
    assert notes, f"{path.name} has no note"
    text = "\n".join(notes)
    assert "tau" in text
    for name in ("self_forcing_dmd.pt", "krea-realtime-video-14b.safetensors", "wan_2.1_vae.safetensors",
                 "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "ImageReward.pt", "med_config.json",
                 "bert-base-uncased"):
        assert name in text, f"{path.name}: the note does not name {name}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_one_prompt_feeds_encoder_and_router(path, mappings):
    """The router's prompt and the text the models are conditioned on come from one node: a String
    node feeding both CLIPTextEncode and the sampler, or SDVG Prompt Schedule's two outputs."""
    api = to_api(load(path), mappings)
    (sdvg,) = [n for n in api.values() if n["class_type"] in ("SDVGSampler", "SDVGBegin")]
    positive, prompt = sdvg["inputs"]["positive"], sdvg["inputs"]["prompt"]
    encoder = api[positive[0]]
    if encoder["class_type"] == "SDVGPromptSchedule":
        assert prompt == [positive[0], 1], "the schedule's prompt output feeds the sampler's prompt"
    else:
        assert encoder["class_type"] == "CLIPTextEncode" and is_link(prompt) and prompt == encoder["inputs"]["text"]
    assert api[encoder["inputs"]["clip"][0]]["inputs"]["type"] == "wan"


def test_modular_loop_body_is_the_four_steps(mappings):
    from sdvg_pack_under_test.nodes.loop import loop_body

    path = next(p for p in WORKFLOWS if "SDVGLoopEnd" in {n["type"] for n in load(p)["nodes"]})
    api = to_api(load(path), mappings)
    graph = MiniExecutor(api, mappings)
    end = next(k for k, n in api.items() if n["class_type"] == "SDVGLoopEnd")
    start = api[end]["inputs"]["loop"][0]
    body = [api[n]["class_type"] for n in loop_body(graph, start, end)]
    assert sorted(body) == sorted(["SDVGLoopStart", "SDVGDraftBlock", "SDVGRouteBlock",
                                   "SDVGRegenerateBlock", "SDVGCommitBlock", "SDVGLoopEnd"])


# ----------------------------------------------------------------------------- execution


def run_workflow(path: Path, mappings: dict, text_dim: int) -> tuple[dict, MiniExecutor, dict]:
    """A workflow at the tests' size (a schedule squeezed into its blocks); (saved outputs, executor, its API)."""
    api = to_api(load(path), mappings)
    for node in api.values():
        if node["class_type"] in ("SDVGSampler", "SDVGBegin"):
            node["inputs"].update(TINY_SETTINGS)
        if node["class_type"] == "SDVGPromptSchedule":
            node["inputs"]["schedule"] = "0: a red fox trots through snow\n1: the fox leaps into a snowdrift"
    saved: dict = {}
    executor = MiniExecutor(api, {**mappings, **core_stand_ins(text_dim, saved)})
    executor.run_outputs()
    return saved, executor, api


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_runs(path, mappings, workflow_models):
    saved, executor, api = run_workflow(path, mappings, workflow_models["text_dim"])
    (video,) = saved["videos"]
    (timeline,) = saved["previews"]
    frames = video["images"]
    assert frames.shape[1:] == (TINY_SETTINGS["height"], TINY_SETTINGS["width"], 3)
    # block 0 gives 9 pixel frames, each later block 12; the first 3 are dropped
    assert frames.shape[0] == 9 + 12 * (TINY_SETTINGS["num_blocks"] - 1) - 3
    assert timeline.shape[0] == 1 and timeline.shape[-1] == 3
    (sdvg,) = [k for k, n in api.items() if n["class_type"] in ("SDVGSampler", "SDVGFinish")]
    blocks = json.loads(executor.outputs[sdvg][2])["blocks"]
    if any(n["class_type"] == "SDVGPromptSchedule" for n in api.values()):
        assert [b["prompt"] for b in blocks] == ["a red fox trots through snow", "the fox leaps into a snowdrift"]
    strength = next(n["inputs"]["strength"] for n in api.values() if n["class_type"] in ("SDVGSampler", "SDVGBegin"))
    if strength < 1:  # video-to-video: fewer passes a block
        assert "video" in next(n for n in api.values() if n["class_type"] == "SDVGSampler")["inputs"]
        assert blocks[0]["model_calls"]["target"] == NUM_STEPS - start_step_for(strength) < NUM_STEPS


def test_the_modular_loop_gives_the_composite_video(mappings, workflow_models):
    def frames(node_type):
        path = next(p for p in WORKFLOWS if node_type in {n["type"] for n in load(p)["nodes"]}
                    and "SDVGPromptSchedule" not in {n["type"] for n in load(p)["nodes"]}
                    and "LoadVideo" not in {n["type"] for n in load(p)["nodes"]})
        saved, executor, _ = run_workflow(path, mappings, workflow_models["text_dim"])
        return saved["videos"][0]["images"], executor

    composite, _ = frames("SDVGSampler")
    modular, executor = frames("SDVGLoopEnd")
    assert len(executor.expansions) == TINY_SETTINGS["num_blocks"] - 1
    assert torch.equal(composite, modular), "the modular loop must give the composite sampler's frames"


TITLE_BAR, BADGE_ROW, GROUP_TITLE = 30, 26, 34  # the frontend's title bar, node-source badge row, group title


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_shipped_layout_leaves_room_for_titles_and_badges(path):
    """As saved, no node (title bar and the badge row above it included) touches another, and no
    node sits on a group's title; the browser test checks the same after a run, with real sizes."""
    workflow = json.loads(path.read_text())

    def box(node):
        (x, y), (w, h) = node["pos"], node["size"]
        return x, y - TITLE_BAR - BADGE_ROW, w, h + TITLE_BAR + BADGE_ROW

    def meets(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    nodes = workflow["nodes"]
    touching = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if meets(box(a), box(b))]
    assert touching == []
    for group in workflow.get("groups", []):
        x, y, w, _ = group["bounding"]
        assert [n["type"] for n in nodes if meets((x, y, w, GROUP_TITLE), box(n))] == [], group["title"]
