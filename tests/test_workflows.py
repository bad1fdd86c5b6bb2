"""The shipped workflows (workflows/*.json, ComfyUI's UI format) are valid and run.

Checked without ComfyUI: every node type is the pack's or a named core node; widget values
match INPUT_TYPES (seed widgets carry an extra control value); every link's type matches the
output it leaves and the input it enters; the modular graph's loop body is the four step
nodes. Then each workflow is converted to API format (as the browser does before queueing)
and executed on tiny model files by a minimal executor with ComfyUI's semantics (links,
rawLink inputs, hidden inputs, node expansion), with stand-ins for the core nodes; the
modular graph must give the composite graph's frames.

This module also provides the helpers test_nodes.py and test_comfyui_e2e.py use
(``load_pack``, ``to_api``, ``MiniExecutor``, ``tiny_models_for_workflows``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PACK_NAME = "sdvg_pack_under_test"

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
VIRTUAL_NODES = ("Note", "MarkdownNote")  # frontend-only: never sent to the backend

# Core nodes the workflows use, as ComfyUI declares them (nodes.py, comfy_extras/nodes_video.py,
# nodes_primitive.py): socket inputs, widgets (name, type, choices or None), output types.
CORE_NODES = {
    "Note": {"inputs": [], "widgets": [("text", "STRING", None)], "outputs": []},
    "MarkdownNote": {"inputs": [], "widgets": [("text", "STRING", None)], "outputs": []},
    "PrimitiveStringMultiline": {"inputs": [], "widgets": [("value", "STRING", None)], "outputs": ["STRING"]},
    "CLIPLoader": {"inputs": [], "widgets": [
        ("clip_name", "COMBO", None),  # a file of models/text_encoders/
        ("type", "COMBO", ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv",
                           "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2",
                           "qwen_image", "hunyuan_image"]),
        ("device", "COMBO", ["default", "cpu"])], "outputs": ["CLIP"]},
    "CLIPTextEncode": {"inputs": [("clip", "CLIP")], "widgets": [("text", "STRING", None)],
                       "outputs": ["CONDITIONING"]},
    "CreateVideo": {"inputs": [("images", "IMAGE"), ("audio", "AUDIO")],
                    "widgets": [("fps", "FLOAT", (1.0, 120.0))], "outputs": ["VIDEO"]},
    "SaveVideo": {"inputs": [("video", "VIDEO")], "widgets": [
        ("filename_prefix", "STRING", None), ("format", "COMBO", ["auto", "mp4"]),
        ("codec", "COMBO", ["auto", "h264"])], "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE")], "widgets": [], "outputs": []},
}
# The model files the workflows name, and the tiny files that stand in for them.
WORKFLOW_MODEL_FILES = {
    "diffusion_models/self_forcing_dmd.pt": "drafter",
    "diffusion_models/krea-realtime-video-14b.safetensors": "target",
    "vae/wan_2.1_vae.safetensors": "vae",
}
TINY_SETTINGS = {"width": 64, "height": 48, "num_blocks": 2}  # CPU-sized override of 832x480x9


# ----------------------------------------------------------------------------- helpers


def load_pack():
    """Import the repository's __init__.py the way ComfyUI imports a custom node folder."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def input_specs(cls) -> list[tuple[str, object, dict]]:
    """(name, type, options) of required then optional inputs: the frontend's widget order."""
    spec = cls.INPUT_TYPES()
    out = []
    for group in ("required", "optional"):
        for name, s in spec.get(group, {}).items():
            out.append((name, s[0], s[1] if len(s) > 1 else {}))
    return out


def is_widget(kind, options) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def node_schema(node_type: str, mappings: dict) -> dict:
    """Sockets, widgets and outputs of a node type, for the pack's or a core node."""
    if node_type in mappings:
        cls = mappings[node_type]
        specs = input_specs(cls)
        return {
            "inputs": [(n, k) for n, k, o in specs if not is_widget(k, o)],
            "widgets": [(n, "COMBO" if isinstance(k, list) else k, k if isinstance(k, list) else o)
                        for n, k, o in specs if is_widget(k, o)],
            "outputs": list(cls.RETURN_TYPES),
        }
    if node_type in CORE_NODES:
        return CORE_NODES[node_type]
    raise AssertionError(f"node type {node_type!r} is neither the pack's nor a known core node")


def widget_names_with_controls(schema: dict) -> list[str | None]:
    """One entry per widgets_values slot: the widget's name, or None for a seed control value."""
    names = []
    for name, kind, options in schema["widgets"]:
        names.append(name)
        if kind == "INT" and isinstance(options, dict) and options.get("control_after_generate"):
            names.append(None)
    return names


def to_api(workflow: dict, mappings: dict) -> dict:
    """UI-format workflow -> API-format prompt, as the browser's graphToPrompt builds it."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        schema = node_schema(node["type"], mappings)
        inputs = {}
        for name, value in zip(widget_names_with_controls(schema), node.get("widgets_values") or []):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


class MiniExecutor:
    """Just enough of ComfyUI's executor to run a prompt: demand-driven evaluation, links,
    ``rawLink`` inputs passed unresolved, hidden DYNPROMPT / UNIQUE_ID, ``{"result", "expand"}``
    node expansion (new nodes join the graph; the result links are then evaluated)."""

    def __init__(self, prompt: dict, mappings: dict):
        self.nodes = {k: dict(v) for k, v in prompt.items()}
        self.mappings = mappings
        self.outputs: dict[str, tuple] = {}
        self.expansions: list[dict] = []
        self.executed: list[str] = []

    # DynamicPrompt's interface, as nodes see it
    def get_node(self, node_id):
        return self.nodes[node_id]

    def has_node(self, node_id):
        return node_id in self.nodes

    def run_outputs(self) -> None:
        for node_id, node in list(self.nodes.items()):
            if getattr(self.mappings[node["class_type"]], "OUTPUT_NODE", False):
                self.value(node_id)

    def value(self, node_id: str) -> tuple:
        if node_id in self.outputs:
            return self.outputs[node_id]
        node = self.nodes[node_id]
        cls = self.mappings[node["class_type"]]
        spec = cls.INPUT_TYPES()
        raw = {n for g in ("required", "optional") for n, s in spec.get(g, {}).items()
               if len(s) > 1 and s[1].get("rawLink")}
        kwargs = {k: (self.value(v[0])[v[1]] if is_link(v) and k not in raw else v)
                  for k, v in node["inputs"].items()}
        for name, kind in spec.get("hidden", {}).items():
            kwargs[name] = {"DYNPROMPT": self, "UNIQUE_ID": node_id}.get(kind)
        self.executed.append(node_id)
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict) and "expand" in out:
            for new_id, info in out["expand"].items():
                assert new_id not in self.nodes, f"expansion reuses node id {new_id}"
                self.nodes[new_id] = info
            self.expansions.append(out["expand"])
            out = tuple(self.value(r[0])[r[1]] if is_link(r) else r for r in out["result"])
        elif isinstance(out, dict):
            out = out.get("result", ())
        self.outputs[node_id] = tuple(out)
        return self.outputs[node_id]


def tiny_models_for_workflows(models_dir: Path) -> dict:
    """A models folder where the tiny files carry the names the workflows expect."""
    from sdvg_core.tiny import write_tiny_model_files

    info = write_tiny_model_files(models_dir)
    for name, role in WORKFLOW_MODEL_FILES.items():
        shutil.copyfile(info[role], models_dir / name)
    return info


# Stand-ins for the core nodes (ComfyUI is not installed in CI); the SDVG nodes are real.


class FakeUMT5Clip:
    """A CLIP object with ComfyUI's encode interface, embedding with sdvg_core.tiny.tiny_text."""

    def __init__(self, text_dim: int):
        self.text_dim = text_dim

    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens):
        from sdvg_core.tiny import tiny_text

        return [[tiny_text(tokens["text"], self.text_dim), {"pooled_output": None}]]


def core_stand_ins(text_dim: int, saved: dict) -> dict:
    class PrimitiveStringMultiline:
        FUNCTION = "run"
        RETURN_TYPES = ("STRING",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {"value": ("STRING", {})}})
        def run(self, value):
            return (value,)

    class CLIPLoader:
        FUNCTION = "run"
        RETURN_TYPES = ("CLIP",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, clip_name, type, device="default"):
            assert type == "wan", "the umT5 text encoder is loaded with type 'wan'"
            return (FakeUMT5Clip(text_dim),)

    class CLIPTextEncode:
        FUNCTION = "run"
        RETURN_TYPES = ("CONDITIONING",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, clip, text):
            return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)

    class CreateVideo:
        FUNCTION = "run"
        RETURN_TYPES = ("VIDEO",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, images, fps, audio=None):
            return ({"images": images, "fps": fps},)

    class SaveVideo:
        FUNCTION = "run"
        OUTPUT_NODE = True
        RETURN_TYPES = ()
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, video, filename_prefix, format, codec):
            saved.setdefault("videos", []).append(video)
            return ()

    class PreviewImage:
        FUNCTION = "run"
        OUTPUT_NODE = True
        RETURN_TYPES = ()
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, images):
            saved.setdefault("previews", []).append(images)
            return ()

    return {c.__name__: c for c in (PrimitiveStringMultiline, CLIPLoader, CLIPTextEncode,
                                    CreateVideo, SaveVideo, PreviewImage)}


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


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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
    """The router's prompt and CLIPTextEncode's text come from the same String node."""
    api = to_api(load(path), mappings)
    sdvg = [n for n in api.values() if n["class_type"] in ("SDVGSampler", "SDVGBegin")]
    encoders = [n for n in api.values() if n["class_type"] == "CLIPTextEncode"]
    assert len(sdvg) == 1 and len(encoders) == 1
    assert is_link(sdvg[0]["inputs"]["prompt"]) and sdvg[0]["inputs"]["prompt"] == encoders[0]["inputs"]["text"]
    clip = api[sdvg[0]["inputs"]["positive"][0]]
    assert clip["class_type"] == "CLIPTextEncode"
    assert api[clip["inputs"]["clip"][0]]["inputs"]["type"] == "wan"


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


def run_workflow(path: Path, mappings: dict, text_dim: int) -> tuple[dict, MiniExecutor]:
    api = to_api(load(path), mappings)
    for node in api.values():
        if node["class_type"] in ("SDVGSampler", "SDVGBegin"):
            node["inputs"].update(TINY_SETTINGS)
    saved: dict = {}
    executor = MiniExecutor(api, {**mappings, **core_stand_ins(text_dim, saved)})
    executor.run_outputs()
    return saved, executor


def test_both_workflows_run_and_agree(mappings, workflow_models):
    results = {}
    for path in WORKFLOWS:
        saved, executor = run_workflow(path, mappings, workflow_models["text_dim"])
        (video,) = saved["videos"]
        (timeline,) = saved["previews"]
        frames = video["images"]
        assert frames.ndim == 4 and frames.shape[-1] == 3
        assert frames.shape[1:3] == (TINY_SETTINGS["height"], TINY_SETTINGS["width"])
        # block 0 gives 9 pixel frames, each later block 12; the first 3 are dropped
        assert frames.shape[0] == 9 + 12 * (TINY_SETTINGS["num_blocks"] - 1) - 3
        assert timeline.shape[0] == 1 and timeline.shape[-1] == 3
        results[path.name] = (frames, executor)
    (a, _), (b, modular) = sorted(results.values(), key=lambda r: len(r[1].expansions))
    assert len(modular.expansions) == TINY_SETTINGS["num_blocks"] - 1
    assert torch.equal(a, b), "the modular loop must give the composite sampler's frames"
