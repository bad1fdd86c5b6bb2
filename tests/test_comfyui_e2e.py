"""End to end in a real ComfyUI: headless on the CPU, the pack in custom_nodes/, tiny model files.

Skipped unless SDVG_COMFYUI_DIR points at a ComfyUI checkout (tests/comfyui.py says what else).
Two parts:

- the shipped workflows, converted to API format and queued over HTTP: they run, the modular loop
  gives the composite sampler's video, the websocket carries one sdvg.block message per block,
  stateful nodes are never served from ComfyUI's cache, an interrupt is honoured;
- ComfyUI's own model stack feeding the sampler: core's Load Diffusion Model (default and fp8
  weight dtypes), a LoRA loader at strength 0 and 1, core's Load VAE with a full-size Wan 2.1 VAE
  (our streamed frames against core's own VAE Decode), city96's GGUF loader with a Q8_0 file; and
  the MODEL path against the pack's standalone engine on the same files. Each comparison prints
  what it measured (run with -s to see it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import comfyui
import support

pytestmark = pytest.mark.skipif(not comfyui.COMFYUI, reason="set SDVG_COMFYUI_DIR to a ComfyUI checkout to run it")

SETTINGS = {**support.TINY_SETTINGS, "num_blocks": 3}  # block 2 is the first with an anchor frame
PROMPT = "a red fox running through fresh snow"
VIDEO = dict(SETTINGS, seed=7, tau=0.0, aggregation="min", hybrid_k=0, skip="none", drop_first_frames=True,
             strength=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = comfyui.start_server(tmp_path_factory.mktemp("comfyui"))
    yield srv
    srv.stop()


def api_prompt(path, **settings) -> dict:
    """A shipped workflow in API format, sized for the CPU, the umT5 CLIP swapped for the stand-in."""
    api = support.to_api(support.load(path), support.load_pack().NODE_CLASS_MAPPINGS)
    for node_id, node in list(api.items()):
        if node["class_type"] == "CLIPLoader":
            api[node_id] = {"class_type": "SDVGE2ETinyCLIP", "inputs": {}}
        elif node["class_type"] in ("SDVGSampler", "SDVGBegin"):
            node["inputs"].update({**SETTINGS, **settings})
        elif node["class_type"] == "SDVGPromptSchedule":
            node["inputs"]["schedule"] = "0: a red fox trots through snow\n2: the fox leaps into a snowdrift"
        elif node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"e2e/{path.stem}"
    return api


def decode_video(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def images(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ----------------------------------------------------------------------------- the shipped workflows


def test_comfyui_registers_the_pack(server):
    info = server.get("/object_info")
    pack = support.load_pack()
    for name, title in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert name in info, f"{name} is not registered:\n{server.log_tail()}"
        assert info[name]["display_name"] == title
    tau = info["SDVGSampler"]["input"]["required"]["tau"]
    assert tau[0] == "FLOAT" and tau[1]["display"] == "slider"
    assert info["SDVGSampler"]["input"]["required"]["drafter"][0] == "MODEL"
    assert "ImageReward.pt" in info["SDVGLoadRouter"]["input"]["required"]["router"][0]
    assert any(url.endswith(f"/{comfyui.PACK_FOLDER}/sdvg_timeline.js") for url in server.get("/extensions"))
    templates = server.get("/workflow_templates").get(comfyui.PACK_FOLDER, [])
    assert sorted(templates) == sorted(p.stem for p in support.WORKFLOWS)
    for path in support.WORKFLOWS:  # the thumbnail the template browser asks for
        url = server.url(f"/api/workflow_templates/{comfyui.PACK_FOLDER}/{urllib.parse.quote(path.stem)}.jpg")
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.read() == path.with_suffix(".jpg").read_bytes()


@pytest.fixture(scope="module")
def workflow_videos(server):
    """Every shipped workflow queued once: its decoded video and its events, by file name."""
    runs = {}
    for path in support.WORKFLOWS:
        prompt = api_prompt(path)
        events, status, stream, prompt_id = server.run(prompt)
        assert status == "success", f"{path.name}: {events[-1]}\n{server.log_tail()}"
        (video,) = server.output_files(prompt_id, "images") + server.output_files(prompt_id, "videos")
        runs[path.name] = (prompt, events, stream, decode_video(video))
    return runs


@pytest.mark.parametrize("path", support.WORKFLOWS, ids=lambda p: p.name)
def test_every_shipped_workflow_runs(workflow_videos, path):
    prompt, events, stream, frames = workflow_videos[path.name]
    blocks = [e["data"] for e in events if e["type"] == "sdvg.block"]
    assert [b["block"] for b in blocks] == list(range(SETTINGS["num_blocks"]))
    owner = next(k for k, n in prompt.items() if n["class_type"] in ("SDVGSampler", "SDVGBegin"))
    assert {b["node"] for b in blocks} == {owner}, "the timeline messages name the node that draws it"
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert any(p["max"] == SETTINGS["num_blocks"] for p in progress)
    assert stream.previews >= SETTINGS["num_blocks"], "a preview per committed block"
    assert frames.shape == (9 + 12 * (SETTINGS["num_blocks"] - 1) - 3, SETTINGS["height"], SETTINGS["width"], 3)
    if any(n["class_type"] == "SDVGPromptSchedule" for n in prompt.values()):
        assert [b["prompt"] for b in blocks] == ["a red fox trots through snow"] * 2 + ["the fox leaps into a snowdrift"]


def test_the_modular_loop_gives_the_composite_video(workflow_videos):
    composite = workflow_videos["SDVG text to video.json"][3].astype(np.int16)
    modular = workflow_videos["SDVG modular block loop.json"][3].astype(np.int16)
    # The same frames, through a lossy h264 encode each: allow its rounding (the loop itself is
    # bit-identical modular vs composite: tests/test_speculative.py and tests/test_workflows.py).
    assert np.abs(composite - modular).mean() < 0.5


def test_a_requeued_modular_graph_is_not_served_from_cache(server):
    path = next(p for p in support.WORKFLOWS if "SDVGLoopEnd" in {n["type"] for n in support.load(p)["nodes"]})
    prompt = api_prompt(path)
    for _ in range(2):
        events, status, _, _ = server.run(prompt)
        assert status == "success", events[-1]
    cached = {n for e in events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}
    stateful = {k for k, n in prompt.items() if n["class_type"].startswith("SDVG")
                and not n["class_type"].startswith(("SDVGLoad", "SDVGE2E"))}
    loaders = {k for k, n in prompt.items() if n["class_type"].startswith("SDVGLoad")}
    assert loaders <= cached, "loaders are cached between runs"
    assert not stateful & cached, f"stateful nodes served from cache: {stateful & cached}"
    blocks = [e for e in events if e["type"] == "sdvg.block"]
    assert len(blocks) == SETTINGS["num_blocks"], "the second run generated every block again"


def test_interrupt_is_honoured_and_the_next_run_works(server):
    path = next(p for p in support.WORKFLOWS if "SDVGSampler" in {n["type"] for n in support.load(p)["nodes"]})
    prompt = api_prompt(path, num_blocks=5, seed=123)

    def cancel_after_first_block(event):
        if event["type"] == "sdvg.block" and event["data"]["block"] == 0:
            server.post("/interrupt")

    events, status, _, _ = server.run(prompt, cancel_after_first_block)
    blocks = [e for e in events if e["type"] == "sdvg.block"]
    assert status == "interrupted", events[-1]
    assert len(blocks) < 5, "the sampler stopped before the last block"
    events, status, _, _ = server.run(prompt)
    assert status == "success", events[-1]
    assert len([e for e in events if e["type"] == "sdvg.block"]) == 5


# ----------------------------------------------------------------------------- ComfyUI's model stack


def stack_prompt(server, target: dict, *, lora: float | None = None, decode: bool = False, **video) -> dict:
    """Text -> SDVG Sampler <- Load Drafter, ``target`` (a loader node), core's Load VAE, the router;
    the LATENT saved, the frames saved as PNG; optionally core's VAE Decode of the LATENT saved too."""
    files = server.files
    prompt = {
        "1": {"class_type": "SDVGE2ETinyText", "inputs": {"text": PROMPT}},
        "2": {"class_type": "SDVGLoadDrafter", "inputs": {"model_name": files["drafter"].name, "variant": "ema",
                                                           "weight_dtype": "default"}},
        "3": target,
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"].name}},
        "5": {"class_type": "SDVGLoadRouter", "inputs": {"router": "ImageReward.pt", "dtype": "fp32"}},
        "7": {"class_type": "SDVGSampler", "inputs": {
            "drafter": ["2", 0], "target": ["6" if lora is not None else "3", 0], "vae": ["4", 0],
            "router": ["5", 0], "positive": ["1", 0], "prompt": PROMPT, **{**VIDEO, **video}}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 1], "filename_prefix": "e2e/stack"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "e2e/frames"}},
    }
    if lora is not None:
        prompt["6"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["3", 0], "lora_name": files["lora"].name, "strength_model": lora}}
    if decode:
        prompt["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 1], "vae": ["4", 0]}}
        prompt["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "e2e/core"}}
    return prompt


def unet(server, weight_dtype="default") -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": server.files["target"].name, "weight_dtype": weight_dtype}}


def run_stack(server, prompt) -> tuple[torch.Tensor, str, dict]:
    """Run a stack prompt; (its raw LATENT [1, 16, F, h, w], prompt id, the sdvg.block messages)."""
    events, status, _, prompt_id = server.run(prompt)
    assert status == "success", f"{events[-1]}\n{server.log_tail()}"
    (latent,) = server.output_files(prompt_id, "latents")
    blocks = [e["data"] for e in events if e["type"] == "sdvg.block"]
    return load_file(str(latent))["latent_tensor"].float(), prompt_id, blocks


@pytest.fixture(scope="module")
def reference_latents(server):
    """The target-only video through core's Load Diffusion Model, default weight dtype."""
    latents, prompt_id, _ = run_stack(server, stack_prompt(server, unet(server), mode="target_only", decode=True))
    return latents, prompt_id


def test_core_loader_drives_the_sampler_and_the_stream_equals_core_vae_decode(server, reference_latents):
    latents, prompt_id = reference_latents
    assert latents.shape == (1, 16, 3 * SETTINGS["num_blocks"], SETTINGS["height"] // 8, SETTINGS["width"] // 8)
    ours = [p for p in server.output_files(prompt_id, "images") if p.name.startswith("frames")]
    core = [p for p in server.output_files(prompt_id, "images") if p.name.startswith("core")]
    streamed, one_shot = images(ours), images(core)[3:]  # drop_first_frames
    assert streamed.shape == one_shot.shape and streamed.std() > 5
    diff = np.abs(streamed - one_shot)
    print(f"\nstreamed decode through core's WanVAE vs core's VAE Decode: max {diff.max()} / 255, "
          f"{(diff > 0).mean():.4%} of values differ")
    assert diff.max() <= 1, "the block-by-block decode equals ComfyUI's one-shot decode (to 8-bit rounding)"


def test_the_model_path_equals_the_standalone_engine(server, reference_latents):
    from sdvg_core.config import SDVGConfig
    from sdvg_core.speculative import SDVGSession
    from sdvg_core.tiny import COMFY_TEXT_DIM, tiny_text
    from sdvg_core.vae import StreamingVAE, to_raw_latents
    from sdvg_core.wan import load_wan

    files = server.files
    config = SDVGConfig(mode="target_only", **{k: v for k, v in VIDEO.items()})
    session = SDVGSession(drafter=None, target=load_wan(files["target"]), vae=StreamingVAE.from_single_file(files["vae"]),
                          scorer=None, text=tiny_text(PROMPT, COMFY_TEXT_DIM), prompt=PROMPT, config=config)
    standalone = to_raw_latents(session.run().latents).permute(0, 2, 1, 3, 4)
    latents, _ = reference_latents
    error = rel_err(latents, standalone)
    print(f"\nMODEL path (core Load Diffusion Model, core VAE) vs standalone engine (load_wan, diffusers VAE): "
          f"relative error {error:.2e}, max |diff| {float((latents - standalone).abs().max()):.2e}")
    assert error < 1e-4, "float32 tolerance"


def test_a_lora_at_strength_zero_changes_nothing_and_at_one_changes_the_video(server, reference_latents):
    latents, _ = reference_latents
    zero, _, _ = run_stack(server, stack_prompt(server, unet(server), lora=0.0, mode="target_only"))
    one, _, _ = run_stack(server, stack_prompt(server, unet(server), lora=1.0, mode="target_only"))
    print(f"\nLoRA strength 0 vs none: max |diff| {float((zero - latents).abs().max())}; "
          f"strength 1 vs none: relative difference {rel_err(one, latents):.3f}")
    assert torch.equal(zero, latents), "strength 0 is the model itself, bit for bit"
    assert rel_err(one, latents) > 1e-3, "strength 1 changes the video"


def test_an_fp8_weight_dtype_stays_within_the_fp8_tolerance(server, reference_latents):
    latents, _ = reference_latents
    fp8, _, _ = run_stack(server, stack_prompt(server, unet(server, "fp8_e4m3fn"), mode="target_only"))
    error = rel_err(fp8, latents)
    print(f"\nfp8_e4m3fn weight dtype vs default: relative error {error:.3e}")
    assert 0 < error < 5e-2, "fp8 is lossy, within the documented 5e-2"


def test_the_speculative_loop_runs_on_comfyuis_models(server):
    prompt = stack_prompt(server, unet(server), mode="sdvg", tau=-3.0)  # the slider's lowest
    latents, _, blocks = run_stack(server, prompt)
    decisions = [b["decision"] for b in blocks]
    assert decisions[0] == "target" and set(decisions[1:]) <= {"accepted", "rejected"}
    assert all(len(b["scores"]) == 12 for b in blocks[1:]), "every draft was scored"
    assert torch.isfinite(latents).all()


PARTIAL_LOAD = r"""
import importlib.util, sys
sys.argv = ["main.py", "--cpu"]
sys.path.insert(0, {comfyui!r})
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd, comfy.utils, torch
spec = importlib.util.spec_from_file_location("sdvg_pack", {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["sdvg_pack"] = pack
spec.loader.exec_module(pack)  # as ComfyUI imports a custom node folder
from sdvg_pack.nodes.models import wan_network
from sdvg_core.tiny import COMFY_TEXT_DIM, tiny_text

model = comfy.sd.load_diffusion_model({target!r})
model = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file({lora!r}), 1.0, 0)[0]
x = torch.randn(1, 3, 16, 6, 8, generator=torch.Generator().manual_seed(0))
t, text = torch.full((1, 3), 625.0), tiny_text("a fox", COMFY_TEXT_DIM)

def forward():
    net = wan_network(model, "target")
    return net(x, t, net.encode_text(text))

model.patch_model(device_to=torch.device("cpu"))  # fully loaded: the LoRA merged into the weights
full = forward()
model.unpatch_model()
model.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)  # nothing fits: every layer streams
streamed = [m for m in model.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
partial = forward()
print(len(streamed), float((partial - full).norm() / full.norm()))
"""


def test_partial_loading_streams_every_layer_and_gives_the_same_output(server, tmp_path):
    """ComfyUI's lowvram mode, driven directly (a CPU has no VRAM to run short of): with a weight
    budget of one byte every layer keeps its weights offloaded and casts them, LoRA patch included,
    in its own call; the engine's forward gives the fully loaded model's output."""
    script = tmp_path / "partial_load.py"
    script.write_text(PARTIAL_LOAD.format(comfyui=comfyui.COMFYUI, root=str(support.ROOT),
                                          init=str(support.ROOT / "__init__.py"),
                                          target=str(server.files["target"]), lora=str(server.files["lora"])))
    python = os.environ.get("SDVG_COMFYUI_PYTHON", sys.executable)
    done = subprocess.run([python, str(script)], cwd=comfyui.COMFYUI, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    streamed, error = done.stdout.split()[-2:]
    print(f"\npartial loading: {streamed} layers streamed, relative error vs fully loaded {float(error):.2e}")
    assert int(streamed) > 10 and float(error) < 1e-6


@pytest.mark.skipif(not comfyui.GGUF_PACK, reason="set SDVG_COMFYUI_GGUF_DIR to city96's ComfyUI-GGUF to run it")
def test_a_gguf_q8_target_runs_through_its_loader(server, reference_latents):
    latents, _ = reference_latents
    target = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": comfyui.GGUF_TARGET}}
    gguf, _, _ = run_stack(server, stack_prompt(server, target, mode="target_only"))
    error = rel_err(gguf, latents)
    print(f"\nGGUF Q8_0 target vs the float32 file: relative error {error:.3e}")
    assert 0 < error < 5e-2
