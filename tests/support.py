"""Helpers the tests share: importing the pack as ComfyUI does, workflows in both formats, a
minimal executor with ComfyUI's semantics, tiny model files under the workflows' names, stand-ins
for the core nodes, and a scripted router."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))  # ComfyUI lists them as templates
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
    "VAELoader": {"inputs": [], "widgets": [("vae_name", "COMBO", None)], "outputs": ["VAE"]},
    "LoadVideo": {"inputs": [], "widgets": [("file", "COMBO", None)], "outputs": ["VIDEO"]},
    "GetVideoComponents": {"inputs": [("video", "VIDEO")], "widgets": [], "outputs": ["IMAGE", "AUDIO", "FLOAT"]},
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

    class VAELoader:  # outside ComfyUI a VAE is the engine's StreamingVAE
        FUNCTION = "run"
        RETURN_TYPES = ("VAE",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, vae_name):
            from sdvg_core.vae import StreamingVAE
            from sdvg_pack_under_test.nodes import host

            return (StreamingVAE.from_single_file(host.full_path("vae", vae_name)),)

    class LoadVideo:  # a clip of the tests' size, long enough for their blocks
        FUNCTION = "run"
        RETURN_TYPES = ("VIDEO",)
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, file):
            frames = 12 * TINY_SETTINGS["num_blocks"] - 3
            images = torch.rand(frames, TINY_SETTINGS["height"], TINY_SETTINGS["width"], 3,
                                generator=torch.Generator().manual_seed(0))
            return ({"images": images, "fps": 16.0},)

    class GetVideoComponents:
        FUNCTION = "run"
        RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
        INPUT_TYPES = classmethod(lambda cls: {"required": {}})
        def run(self, video):
            return (video["images"], None, video["fps"])

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

    return {c.__name__: c for c in (PrimitiveStringMultiline, CLIPLoader, CLIPTextEncode, VAELoader, LoadVideo,
                                    GetVideoComponents, CreateVideo, SaveVideo, PreviewImage)}


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)




class ScriptedScorer:
    """Router stand-in: call i scores offset[i] + the frame's mean pixel, so the decisions follow
    the script while the scores (and stats) still depend on exactly which frames were routed."""

    def __init__(self, offsets=(5.0, -5.0)):
        self.offsets, self.calls = list(offsets), 0

    def score(self, frames, prompt):
        offset = self.offsets[self.calls % len(self.offsets)]
        self.calls += 1
        return offset + frames.float().mean(dim=(1, 2, 3)).cpu()
