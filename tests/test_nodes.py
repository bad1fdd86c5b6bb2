"""The ComfyUI node pack, without ComfyUI: contracts, loaders, sampler, modular chain, loop.

Every node function runs on tiny real-architecture model files written to a temporary
models folder (sdvg_core.tiny). Tests that need both router decisions in a known order use a
scripted scorer (decisions follow a script, scores still move with the frames, so routing the
wrong frames would show in the stats); the real ImageReward router runs in the composite test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import support
from sdvg_core.errors import CheckpointError, IncompatibleModelsError, InputError, MissingFileError, SDVGError
from sdvg_core.timeline import DECISION_COLOURS, render_timeline, timeline_layout
from sdvg_core.tiny import tiny_text
from sdvg_core.vae import StreamingVAE

ROOT = support.ROOT
PACK = support.load_pack()
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
DISPLAY = PACK.NODE_DISPLAY_NAME_MAPPINGS
from sdvg_pack_under_test.nodes import host, session as node_session  # noqa: E402
from sdvg_pack_under_test.nodes.models import RouterModel, wan_network  # noqa: E402
from sdvg_pack_under_test.nodes.loop import expand_loop, loop_body  # noqa: E402

PROMPT = "a red fox running through fresh snow"
VIDEO = dict(width=32, height=16, num_blocks=3, seed=7, tau=0.0, aggregation="min", hybrid_k=0,
             skip="none", drop_first_frames=True)
FRAMES = 9 + 12 * (VIDEO["num_blocks"] - 1) - 3
MODULAR = ("SDVGBegin", "SDVGLoopStart", "SDVGDraftBlock", "SDVGRouteBlock", "SDVGRegenerateBlock",
           "SDVGCommitBlock", "SDVGLoopEnd", "SDVGFinish")


def node(name):
    return MAPPINGS[name]()


def call(name, *args, **kwargs):
    cls = MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(*args, **kwargs)


def scripted_router(offsets=(5.0, -5.0)):
    return RouterModel(support.ScriptedScorer(offsets), "scripted-router")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from sdvg_core.tiny import write_tiny_model_files

    root = tmp_path_factory.mktemp("models")
    info = write_tiny_model_files(root)
    host.set_models_dir(root)
    yield root, info
    host.set_models_dir(None)


@pytest.fixture(scope="module")
def models(models_dir):
    root, info = models_dir
    return {
        "drafter": call("SDVGLoadDrafter", info["drafter"].name, "ema", "default")[0],
        "target": call("SDVGLoadTarget", info["target"].name, "ema", "default")[0],
        "vae": StreamingVAE.from_single_file(info["vae"]),  # what core's Load VAE stands for here
        "router": call("SDVGLoadRouter", "ImageReward.pt", "fp32")[0],
    }


@pytest.fixture(scope="module")
def positive(models_dir):
    return [[tiny_text(PROMPT, models_dir[1]["text_dim"]), {"pooled_output": None}]]


@pytest.fixture(scope="module")
def composite_real(models, positive):
    """The composite sampler with the real router; records what it tells the host."""
    record = {"sent": [], "progress": [], "load_models": [], "released_cache_bytes": []}
    release = node_session.SDVGSession.release

    def spy_release(session):
        for runner in (session.drafter, session.target):
            if runner is not None and runner._kv is not None:
                record["released_cache_bytes"].append(
                    runner._kv.nbytes() + sum(t.numel() * t.element_size() for cache in runner._text_caches.values()
                                              for t in (*cache.k, *cache.v)))
        release(session)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(host, "send", lambda event, data: record["sent"].append((event, data)))
        mp.setattr(host, "progress", lambda v, t, preview=None: record["progress"].append((v, t, preview)))
        mp.setattr(host, "load_models", lambda p, memory_required=0: record["load_models"].append((list(p), memory_required)))
        mp.setattr(node_session.SDVGSession, "release", spy_release)
        out = call("SDVGSampler", models["drafter"], models["target"], models["vae"], models["router"],
                   positive, PROMPT, unique_id="12", **{**VIDEO, "tau": -100.0})
    return out, record


@pytest.fixture(scope="module")
def composite_scripted(models, positive):
    return call("SDVGSampler", models["drafter"], models["target"], models["vae"], scripted_router(),
                positive, PROMPT, unique_id="3", **VIDEO)


# ----------------------------------------------------------------------------- import & contracts


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_node_contract(name):
    cls = MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for group in ("required", "optional"):
        for input_name, s in spec.get(group, {}).items():
            assert isinstance(s, tuple) and 1 <= len(s) <= 2, input_name
            assert isinstance(s[0], (str, list)), input_name
            if len(s) == 2:
                assert isinstance(s[1], dict), input_name
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    for attr in ("RETURN_NAMES", "OUTPUT_TOOLTIPS"):
        if hasattr(cls, attr):
            assert len(getattr(cls, attr)) == len(cls.RETURN_TYPES), attr
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY == "SDVG" or cls.CATEGORY.startswith("SDVG/")
    assert DISPLAY[name] and getattr(cls, "DESCRIPTION", ""), "every node has a description"


def test_categories_and_display_names():
    for name in MODULAR:
        assert MAPPINGS[name].CATEGORY == "SDVG/modular"
    for name in ("SDVGLoadDrafter", "SDVGLoadTarget", "SDVGLoadRouter"):
        assert MAPPINGS[name].CATEGORY == "SDVG/loaders"
    titles = set(DISPLAY.values())
    for title in ("SDVG Load Drafter", "SDVG Load Target", "SDVG Load ImageReward Router", "SDVG Sampler",
                  "SDVG Begin", "SDVG Finish"):
        assert title in titles
    assert "SDVG Verify Draft" in titles, "not to be confused with the router's loader"
    for name in MAPPINGS:  # every node comes up when a user searches "SDVG"
        assert DISPLAY[name].startswith("SDVG ")


def test_sampler_takes_comfyuis_own_model_types():
    required = MAPPINGS["SDVGSampler"].INPUT_TYPES()["required"]
    assert [required[k][0] for k in ("drafter", "target", "vae", "positive")] == ["MODEL", "MODEL", "VAE", "CONDITIONING"]
    assert MAPPINGS["SDVGFinish"].RETURN_TYPES == MAPPINGS["SDVGSampler"].RETURN_TYPES
    assert MAPPINGS["SDVGBegin"].INPUT_TYPES()["required"].keys() == required.keys()
    for loader in ("SDVGLoadDrafter", "SDVGLoadTarget"):  # LoRA and GGUF loaders take and give MODEL
        assert MAPPINGS[loader].RETURN_TYPES == ("MODEL",)
        assert MAPPINGS[loader].INPUT_TYPES()["required"]["weight_dtype"][0] == list(host.WEIGHT_DTYPES)


@pytest.mark.parametrize("name", ["SDVGSampler", "SDVGBegin"])
def test_tau_is_a_slider_and_seed_has_its_control(name):
    required = MAPPINGS[name].INPUT_TYPES()["required"]
    kind, tau = required["tau"]
    assert kind == "FLOAT" and tau["display"] == "slider"
    assert tau["min"] <= -2.5 and tau["max"] >= 0 and tau["min"] <= tau["default"] <= tau["max"]
    assert 0 < tau["step"] <= 0.1 and "score" in tau["tooltip"]
    assert required["seed"][1]["control_after_generate"] is True
    assert required["seed"][1]["max"] == 2 ** 64 - 1


def test_stateful_nodes_are_never_served_from_cache():
    for name in MODULAR:
        cls = MAPPINGS[name]
        fingerprint = cls.IS_CHANGED()
        assert fingerprint != fingerprint  # NaN: never equal to a cached signature
        assert cls.NOT_IDEMPOTENT is True
    for name in ("SDVGSampler", "SDVGLoadDrafter", "SDVGLoadTarget", "SDVGLoadRouter"):
        assert not hasattr(MAPPINGS[name], "IS_CHANGED"), f"{name} is a pure function of its inputs: cacheable"
    loop_end = MAPPINGS["SDVGLoopEnd"].INPUT_TYPES()
    assert loop_end["required"]["loop"][1]["rawLink"] is True
    assert loop_end["hidden"] == {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}


# ----------------------------------------------------------------------------- loaders


def test_loaders_list_the_model_folders(models_dir):
    _, info = models_dir
    listed = MAPPINGS["SDVGLoadDrafter"].INPUT_TYPES()["required"]["model_name"][0]
    assert info["drafter"].name in listed and info["target"].name in listed
    assert MAPPINGS["SDVGLoadRouter"].INPUT_TYPES()["required"]["router"][0] == ["ImageReward.pt"]


def test_loaders_load_the_files(models, models_dir):
    _, info = models_dir
    assert models["target"].compute_dtype == torch.float32  # outside ComfyUI a MODEL is the engine's DiT
    assert models["router"].path == str(info["router"])
    # the variant widget picks the Self-Forcing weights: compare with the file itself
    raw = torch.load(info["drafter"], map_location="cpu", weights_only=True)
    key = "patch_embedding.weight"
    ema = call("SDVGLoadDrafter", info["drafter"].name, "ema", "default")[0]
    plain = call("SDVGLoadDrafter", info["drafter"].name, "plain", "fp8_e4m3fn")[0]
    assert torch.equal(ema.state_dict()[key], raw["generator_ema"]["model." + key])
    assert torch.equal(plain.state_dict()[key], raw["generator"]["model." + key])
    q = "blocks.0.self_attn.q.weight"  # fp8 weight dtype: the Linear weights are stored in fp8
    assert plain.state_dict()[q].dtype == torch.float8_e4m3fn
    assert torch.equal(plain.state_dict()[q], raw["generator"]["model." + q].to(torch.float8_e4m3fn))


def test_the_model_adapter_reads_a_comfyui_model_patcher():
    """A MODEL from ComfyUI is a ModelPatcher: the engine runs on model.model.diffusion_model
    at the patcher's load device, computing in manual_cast_dtype (or the weights' dtype)."""
    from sdvg_core.tiny import TARGET, tiny_wan

    engine = tiny_wan(TARGET, 0)
    for cast, weights, expected in ((torch.float32, torch.float8_e4m3fn, torch.float32),
                                    (None, torch.float32, torch.float32)):
        base = types.SimpleNamespace(diffusion_model=engine, manual_cast_dtype=cast, get_dtype=lambda w=weights: w)
        patcher = types.SimpleNamespace(model=base, load_device=torch.device("cpu"))
        network = wan_network(patcher, "target")
        assert network.tree is engine and network.cfg == engine.cfg
        assert network.compute_dtype == expected and network.device == torch.device("cpu")
        assert network.exact_dtype == (torch.float32 if cast is not None else expected)
    with pytest.raises(InputError, match="target: expected a MODEL"):
        wan_network(object(), "target")


def test_router_folder_can_be_a_subfolder(models_dir):
    root, info = models_dir
    shutil.copytree(info["router"], root / "image_reward" / "v1", ignore=shutil.ignore_patterns("v1"))
    try:
        assert "v1/ImageReward.pt" in host.router_choices()
        loaded = call("SDVGLoadRouter", "v1/ImageReward.pt", "fp32")[0]
        assert loaded.path == str(root / "image_reward" / "v1")
    finally:
        shutil.rmtree(root / "image_reward" / "v1")


def test_loader_errors_name_the_file(models_dir):
    root, info = models_dir
    with pytest.raises(MissingFileError, match="no_such_model.safetensors"):
        call("SDVGLoadDrafter", "no_such_model.safetensors", "ema", "default")
    broken = root / "diffusion_models" / "broken_download.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    wrong = root / "diffusion_models" / "a_vae_not_a_dit.safetensors"
    shutil.copyfile(info["vae"], wrong)
    bad_router = root / "image_reward" / "incomplete"
    bad_router.mkdir()
    shutil.copyfile(info["router"] / "ImageReward.pt", bad_router / "ImageReward.pt")
    try:
        with pytest.raises(CheckpointError, match="broken_download.safetensors"):
            call("SDVGLoadTarget", broken.name, "ema", "default")
        with pytest.raises(CheckpointError, match="a_vae_not_a_dit.safetensors"):
            call("SDVGLoadTarget", wrong.name, "ema", "default")
        with pytest.raises(MissingFileError, match="med_config.json") as missing:
            call("SDVGLoadRouter", "incomplete/ImageReward.pt", "fp32")
        assert f"in {bad_router}{os.sep}." in str(missing.value), "the fix names the chosen sub-folder"
    finally:
        for path in (broken, wrong):
            path.unlink()
        shutil.rmtree(bad_router)


# ----------------------------------------------------------------------------- composite sampler


def test_sampler_outputs(composite_real, models):
    out, _ = composite_real
    frames, latent, stats_text, timeline = out["result"]
    assert frames.shape == (FRAMES, VIDEO["height"], VIDEO["width"], 3) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    stats = json.loads(stats_text)
    assert [b["block"] for b in stats["blocks"]] == list(range(VIDEO["num_blocks"]))
    assert stats["blocks"][0]["decision"] == "target"
    assert all(b["decision"] == "accepted" and len(b["scores"]) == 12 for b in stats["blocks"][1:])
    assert stats["config"]["seed"] == VIDEO["seed"] and stats["prompt"] == PROMPT
    assert timeline.shape == (1, 256, 768, 3) and 0.0 <= timeline.min() and timeline.max() <= 1.0
    picture = (timeline[0].numpy() * 255).round().astype(np.uint8)
    layout = timeline_layout(stats["blocks"], stats["config"]["tau"], 768, 256)
    strip_y = (layout.strip_box[1] + layout.strip_box[3]) // 2
    for b, block in enumerate(stats["blocks"]):  # each column's strip shows the block's decision
        x = sum(layout.column(b)) // 2
        assert tuple(picture[strip_y, x]) == DECISION_COLOURS[block["decision"]]
    assert [b["decision"] for b in out["ui"]["sdvg_blocks"]] == [b["decision"] for b in stats["blocks"]]


def test_latent_output_decodes_to_the_frames_with_diffusers(composite_real, models):
    """The Wan LATENT is raw VAE latents [B, 16, F, h, w]: diffusers' one-shot decode of it
    (no SDVG code involved) reproduces the IMAGE output."""
    out, _ = composite_real
    frames, latent = out["result"][:2]
    samples = latent["samples"]
    assert samples.shape == (1, 16, 3 * VIDEO["num_blocks"], VIDEO["height"] // 8, VIDEO["width"] // 8)
    vae = models["vae"].vae
    with torch.no_grad():
        video = vae.decode(samples.to(vae.dtype)).sample.float()  # [1, 3, T, H, W] in [-1, 1]
    decoded = video[0].permute(1, 2, 3, 0).add(1).div(2).clamp(0, 1)[3:]  # drop_first_frames
    torch.testing.assert_close(decoded, frames, atol=1e-5, rtol=0)


def test_sampler_reports_each_block(composite_real):
    out, record = composite_real
    frames = out["result"][0]
    messages = [data for event, data in record["sent"]]
    assert [event for event, _ in record["sent"]] == ["sdvg.block"] * VIDEO["num_blocks"]
    assert [m["block"] for m in messages] == list(range(VIDEO["num_blocks"]))
    assert all(m["node"] == "12" and m["num_blocks"] == VIDEO["num_blocks"] for m in messages)
    stats = json.loads(out["result"][2])["blocks"]
    assert [m["aggregate"] for m in messages] == [b["aggregate"] for b in stats]
    assert [m["scores"] for m in messages] == [b["scores"] for b in stats]
    json.dumps(messages)  # the websocket sends JSON
    # progress over blocks; the preview is the block's last committed frame
    assert [(v, t) for v, t, _ in record["progress"]] == [(b + 1, VIDEO["num_blocks"]) for b in range(VIDEO["num_blocks"])]
    last_frame = np.cumsum([9] + [12] * (VIDEO["num_blocks"] - 1)) - 1 - 3
    for (_, _, preview), index in zip(record["progress"], last_frame):
        expected = (frames[index] * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(np.asarray(preview), expected)


@pytest.mark.parametrize("mode, unused", [("target_only", ("drafter", "router")), ("draft_only", ("target", "router"))])
def test_sampler_baseline_modes_run_and_load_only_their_model(models, positive, monkeypatch, mode, unused):
    loaded = []
    monkeypatch.setattr(host, "load_models", lambda p, memory_required=0: loaded.extend(p))
    monkeypatch.setattr(host, "send", lambda event, data: None)
    monkeypatch.setattr(host, "progress", lambda *a, **k: None)
    frames, _, stats_json, _ = call("SDVGSampler", models["drafter"], models["target"], models["vae"],
                                    models["router"], positive, PROMPT, **{**VIDEO, "mode": mode})["result"]
    stats = json.loads(stats_json)
    assert frames.shape[0] == FRAMES
    for component in unused:
        assert stats["summary"]["model_calls"][component] == 0
    assert len(loaded) == 2  # the one generating model and the VAE


def test_sampler_reserves_memory_for_the_caches(composite_real, models):
    """load_models gets every model and room for both runners' caches, computed here from the
    configs; the caches the session really allocated (measured before release) fit in it."""
    _, record = composite_real
    ((patchers, memory),) = record["load_models"]
    assert len(patchers) == 4  # one per model (None outside ComfyUI)
    tokens = (VIDEO["height"] // 16) * (VIDEO["width"] // 16)
    expected = 0
    for m in (models["drafter"], models["target"]):
        per_token = 2 * m.cfg.num_layers * m.cfg.dim * torch.finfo(m.compute_dtype).bits // 8
        expected += per_token * (6 * tokens + 512)
    allocated = sum(record["released_cache_bytes"])
    assert allocated == expected  # the estimate is exact for the caches ...
    assert memory >= allocated    # ... and the reservation keeps headroom on top
    assert len(record["released_cache_bytes"]) == 2, "the sampler frees both runners' caches"


def test_caches_that_cannot_fit_the_gpu_are_refused_before_loading(models, positive, monkeypatch):
    """The plan's caches and activations must fit even with every weight streamed: a card too small
    for them is refused with the plan, before ComfyUI loads anything."""
    monkeypatch.setattr(host, "total_memory", lambda device: 1024)
    monkeypatch.setattr(host, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match=r"SDVG beside its models needs about .* GiB is free(.|\n)*KV window"):
        call("SDVGSampler", models["drafter"], models["target"], models["vae"], models["router"],
             positive, PROMPT, **VIDEO)


def test_bad_size_fails_before_any_model_runs(monkeypatch):
    monkeypatch.setattr(host, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    not_a_model = object()
    for field, value in (("width", 100), ("height", 50)):
        with pytest.raises(InputError, match=rf"{field} {value} is not divisible by 16"):
            call("SDVGSampler", not_a_model, not_a_model, not_a_model, not_a_model, None, PROMPT,
                 **{**VIDEO, field: value})
        with pytest.raises(InputError, match=rf"{field} {value}"):
            call("SDVGBegin", not_a_model, not_a_model, not_a_model, not_a_model, None, PROMPT,
                 **{**VIDEO, field: value})


def test_empty_prompt_and_wrong_wiring_are_explained(models, positive):
    m = models
    with pytest.raises(InputError, match="prompt is empty"):
        call("SDVGSampler", m["drafter"], m["target"], m["vae"], m["router"], positive, "  ", **VIDEO)
    with pytest.raises(IncompatibleModelsError, match="drafter and target are swapped"):
        call("SDVGSampler", m["target"], m["drafter"], m["vae"], m["router"], positive, PROMPT, **VIDEO)
    with pytest.raises(InputError, match="vae: expected a VAE"):
        call("SDVGSampler", m["drafter"], m["target"], m["drafter"], m["router"], positive, PROMPT, **VIDEO)
    with pytest.raises(InputError, match="router: expected"):
        call("SDVGSampler", m["drafter"], m["target"], m["vae"], m["vae"], positive, PROMPT, **VIDEO)


def test_interrupt_stops_between_model_calls_and_the_next_run_works(models, positive, composite_scripted, monkeypatch):
    class Interrupted(Exception):
        pass

    state = {"cancelled": False, "calls_after_cancel": 0}

    def check_interrupt():
        if state["cancelled"]:
            raise Interrupted()

    def progress(value, total, preview=None):  # the user presses Cancel while block 0 is shown
        state["cancelled"] = True

    forward = type(models["drafter"]).forward

    def counting_forward(self, *args, **kwargs):
        if state["cancelled"]:
            state["calls_after_cancel"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(host, "check_interrupt", check_interrupt)
    monkeypatch.setattr(host, "progress", progress)
    monkeypatch.setattr(type(models["drafter"]), "forward", counting_forward)
    m = models
    with pytest.raises(Interrupted):
        call("SDVGSampler", m["drafter"], m["target"], m["vae"], scripted_router(), positive, PROMPT, **VIDEO)
    assert state["calls_after_cancel"] == 0
    monkeypatch.setattr(host, "check_interrupt", lambda: None)
    # a shorter video is a prefix of the longer one (the loop is causal): cheap to compare
    again = call("SDVGSampler", m["drafter"], m["target"], m["vae"], scripted_router(), positive, PROMPT,
                 **{**VIDEO, "num_blocks": 2})
    frames = again["result"][0]
    assert frames.shape[0] == 9 + 12 - 3
    assert torch.equal(frames, composite_scripted["result"][0][: frames.shape[0]])


# ----------------------------------------------------------------------------- modular nodes


def begin(models, positive, router=None, **video):
    return call("SDVGBegin", models["drafter"], models["target"], models["vae"], router or scripted_router(),
                positive, PROMPT, unique_id="20", **{**VIDEO, **video})[0]


def test_a_session_output_cannot_feed_two_steps(models, positive):
    session = begin(models, positive, num_blocks=1)
    call("SDVGDraftBlock", session)
    with pytest.raises(SDVGError, match="stale"):
        call("SDVGDraftBlock", session)
    with pytest.raises(SDVGError, match="stale"):
        call("SDVGRouteBlock", session)


def test_finish_refuses_an_unfinished_session(models, positive):
    session = begin(models, positive, num_blocks=2)
    with pytest.raises(SDVGError, match="0 of 2 blocks"):
        call("SDVGFinish", session)
    with pytest.raises(SDVGError, match="SDVG Begin"):
        call("SDVGDraftBlock", "not a session")


def test_out_of_order_steps_are_refused(models, positive):
    session = begin(models, positive, num_blocks=1)
    with pytest.raises(SDVGError, match="out of order"):
        call("SDVGCommitBlock", session)


def modular_prompt(models, positive, router) -> dict:
    """The modular graph in API format, the loaders' outputs given as constants."""
    begin_inputs = dict(drafter=models["drafter"], target=models["target"], vae=models["vae"],
                        router=router, positive=positive, prompt=PROMPT, **VIDEO)
    return {
        "1": {"class_type": "SDVGBegin", "inputs": begin_inputs},
        "2": {"class_type": "SDVGLoopStart", "inputs": {"session": ["1", 0]}},
        "3": {"class_type": "SDVGDraftBlock", "inputs": {"session": ["2", 1]}},
        "4": {"class_type": "SDVGRouteBlock", "inputs": {"session": ["3", 0]}},
        "5": {"class_type": "SDVGRegenerateBlock", "inputs": {"session": ["4", 0]}},
        "6": {"class_type": "SDVGCommitBlock", "inputs": {"session": ["5", 0]}},
        "7": {"class_type": "SDVGLoopEnd", "inputs": {"loop": ["2", 0], "session": ["6", 0]}},
        "8": {"class_type": "SDVGFinish", "inputs": {"session": ["7", 0]}},
    }


def test_loop_expansion_runs_every_block(models, positive):
    executor = support.MiniExecutor(modular_prompt(models, positive, scripted_router()), MAPPINGS)
    stats = json.loads(executor.value("8")[2])
    assert [b["decision"] for b in stats["blocks"]] == ["target", "accepted", "rejected"]  # both outcomes
    assert len(executor.expansions) == VIDEO["num_blocks"] - 1
    display = {k: n["override_display_id"] for e in executor.expansions for k, n in e.items()}

    def shown_as(node_id):  # how ComfyUI resolves a copy's display id (DynamicPrompt)
        while node_id in display:
            node_id = display[node_id]
        return node_id

    for expansion in executor.expansions:  # each copy shows as its original node in the UI
        assert sorted(shown_as(k) for k in expansion) == ["2", "3", "4", "5", "6", "7"]
    steps = [executor.nodes[n]["class_type"] for n in executor.executed]
    assert steps.count("SDVGDraftBlock") == steps.count("SDVGCommitBlock") == VIDEO["num_blocks"]
    assert steps.count("SDVGBegin") == steps.count("SDVGFinish") == 1


def test_loop_end_refuses_a_body_that_commits_nothing(models, positive):
    prompt = {
        "1": {"class_type": "SDVGBegin", "inputs": dict(drafter=models["drafter"], target=models["target"],
              vae=models["vae"], router=scripted_router(), positive=positive, prompt=PROMPT, **VIDEO)},
        "2": {"class_type": "SDVGLoopStart", "inputs": {"session": ["1", 0]}},
        "3": {"class_type": "SDVGLoopEnd", "inputs": {"loop": ["2", 0], "session": ["2", 1]}},
    }
    with pytest.raises(SDVGError, match="committed no block"):
        support.MiniExecutor(prompt, MAPPINGS).value("3")


class DictGraph:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node(self, node_id):
        return self.nodes[node_id]


def test_expand_loop_structure():
    """Only the nodes between Start and End are copied; outside inputs stay linked to the
    originals; the copied Start takes End's session; End's copy is the result."""
    g = DictGraph({
        "1": {"class_type": "SDVGBegin", "inputs": {"seed": 1}},
        "2": {"class_type": "SDVGLoopStart", "inputs": {"session": ["1", 0]}},
        "3": {"class_type": "SDVGDraftBlock", "inputs": {"session": ["2", 1]}},
        "4": {"class_type": "SDVGRouteBlock", "inputs": {"session": ["3", 0]}},
        "5": {"class_type": "SideEffect", "inputs": {"x": ["4", 1], "y": ["1", 0]}},  # not upstream of End
        "6": {"class_type": "SDVGRegenerateBlock", "inputs": {"session": ["4", 0], "extra": ["1", 0]}},
        "7": {"class_type": "SDVGCommitBlock", "inputs": {"session": ["6", 0]}},
        "9": {"class_type": "SDVGLoopEnd", "inputs": {"loop": ["2", 0], "session": ["7", 0]}},
        "10": {"class_type": "SDVGFinish", "inputs": {"session": ["9", 0]}},
    })
    assert sorted(loop_body(g, "2", "9")) == ["2", "3", "4", "6", "7", "9"]
    nodes, result = expand_loop(g, "2", "9")
    assert result == ["9.Recurse", 0]
    assert set(nodes) == {"9.2", "9.3", "9.4", "9.6", "9.7", "9.Recurse"}
    assert nodes["9.2"]["inputs"] == {"session": ["7", 0]}       # this iteration's commit
    assert nodes["9.3"]["inputs"] == {"session": ["9.2", 1]}
    assert nodes["9.6"]["inputs"] == {"session": ["9.4", 0], "extra": ["1", 0]}
    assert nodes["9.Recurse"]["inputs"] == {"loop": ["9.2", 0], "session": ["9.7", 0]}
    assert {k: n["override_display_id"] for k, n in nodes.items()}["9.Recurse"] == "9"
    assert g.nodes["2"]["inputs"] == {"session": ["1", 0]}, "the original graph is not modified"
    json.dumps(nodes)  # plain API-format data


def test_encode_prompt_node_gives_conditioning_and_the_same_text():
    class Clip:
        def tokenize(self, text):
            return ("tokens", text)

        def encode_from_tokens_scheduled(self, tokens):
            return [[tiny_text(tokens[1], 8), {"pooled_output": None}]]

    conditioning, text = call("SDVGEncodePrompt", PROMPT, Clip())
    assert text == PROMPT and torch.equal(conditioning[0][0], tiny_text(PROMPT, 8))


# ----------------------------------------------------------------------------- host adapter


def test_host_inside_a_fake_comfyui(tmp_path, monkeypatch):
    """host.py against stand-ins with the signatures of ComfyUI's folder_paths, model
    management, ModelPatcher, ProgressBar and PromptServer (the e2e test uses the real ones)."""
    calls = []
    (tmp_path / "image_reward" / "v1").mkdir(parents=True)
    for name in ("image_reward/ImageReward.pt", "image_reward/med_config.json", "image_reward/v1/ImageReward.pt"):
        (tmp_path / name).write_bytes(b"")

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path)
    fp.folder_names_and_paths = {}
    fp.add_model_folder_path = lambda name, path, is_default=False: fp.folder_names_and_paths[name][0].append(path)
    fp.get_folder_paths = lambda name: fp.folder_names_and_paths[name][0][:]

    def get_filename_list(name):
        paths, exts = fp.folder_names_and_paths[name]
        found = [p.relative_to(paths[0]).as_posix() for p in Path(paths[0]).rglob("*") if p.is_file()]
        return sorted(f for f in found if not exts or Path(f).suffix in exts)

    fp.get_filename_list = get_filename_list
    fp.get_full_path = lambda name, f: str(Path(fp.folder_names_and_paths[name][0][0]) / f)
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.load_models_gpu = lambda models, memory_required=0, **kw: calls.append(("load", models, memory_required, kw))
    mm.throw_exception_if_processing_interrupted = lambda: calls.append(("interrupt?",))
    mp_ = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            model.device = offload_device  # what ComfyUI's ModelPatcher does to the module it wraps

    mp_.ModelPatcher = ModelPatcher
    cu = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("progress", value, total, preview))

    cu.ProgressBar = ProgressBar
    sd_ = types.ModuleType("comfy.sd")
    sd_.load_diffusion_model_state_dict = lambda sd, model_options={}: calls.append(("unet", sd, model_options)) or "MODEL"
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher, comfy.utils, comfy.sd = mm, mp_, cu, sd_
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(
        client_id="browser-1", send_sync=lambda event, data, sid=None: calls.append(("send", event, data, sid))))
    for name, module in (("folder_paths", fp), ("comfy", comfy), ("comfy.model_management", mm),
                         ("comfy.model_patcher", mp_), ("comfy.utils", cu), ("comfy.sd", sd_), ("server", server)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("host_in_fake_comfyui", ROOT / "nodes" / "host.py")
    fake_host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_host)

    assert fake_host.IN_COMFYUI
    fake_host.register_router_folder()
    assert fp.folder_names_and_paths["image_reward"] == ([str(tmp_path / "image_reward")], {".pt"})
    assert fake_host.router_choices() == ["ImageReward.pt", "v1/ImageReward.pt"]
    module = torch.nn.Linear(2, 2)
    patcher = fake_host.manage(module)
    assert patcher.model.inner is module and patcher.load_device == torch.device("cpu")
    fake_host.load_models([patcher, None], memory_required=1234)
    assert calls[-1] == ("load", [patcher], 1234, {"minimum_memory_required": 1234})  # partial loading allowed
    fake_host.check_interrupt()
    assert calls[-1] == ("interrupt?",)
    picture = render_timeline([], 0.0, 160, 120)
    fake_host.progress(2, 5, picture)
    assert calls[-1] == ("progress", 2, 5, ("JPEG", picture, 512))
    fake_host.send("sdvg.block", {"block": 1})
    assert calls[-1] == ("send", "sdvg.block", {"block": 1}, "browser-1")
    # Load Drafter inside ComfyUI: ComfyUI's own loader gets the file's tensors under Wan's names
    # (the Self-Forcing variant picked, the prefix stripped) and core's weight dtype options.
    from sdvg_core.tiny import DRAFTER, tiny_wan

    drafter = tmp_path / "drafter.pt"
    weights = {f"model.{k}": v for k, v in tiny_wan(DRAFTER, 1).state_dict().items()}
    torch.save({"generator_ema": weights, "generator": {}}, drafter)
    assert fake_host.load_wan_model(str(drafter), variant="ema", weight_dtype="fp8_e4m3fn", role="drafter") == "MODEL"
    _, state_dict, options = calls[-1]
    assert options == {"dtype": torch.float8_e4m3fn}
    assert set(state_dict) == {k[len("model."):] for k in weights}


# ----------------------------------------------------------------------------- prompt travel, video-to-video


def test_the_prompt_schedule_node_drives_the_sampler_block_by_block(models):
    clip = support.FakeUMT5Clip(models["drafter"].cfg.text_dim)
    positive, schedule = call("SDVGPromptSchedule", "0: a red fox in snow\n 2 : the fox leaps\n", clip)
    assert schedule == "0: a red fox in snow\n2: the fox leaps"
    assert [entry[1]["sdvg_first_block"] for entry in positive] == [0, 2]
    out = call("SDVGSampler", models["drafter"], models["target"], models["vae"], scripted_router(), positive,
               schedule, **VIDEO)
    blocks = json.loads(out["result"][2])["blocks"]
    assert [b["prompt"] for b in blocks] == ["a red fox in snow"] * 2 + ["the fox leaps"]
    with pytest.raises(InputError, match="prompt does not match the prompt schedule"):
        call("SDVGSampler", models["drafter"], models["target"], models["vae"], scripted_router(), positive,
             "a red fox in snow", **VIDEO)
    with pytest.raises(InputError, match="line 1"):
        call("SDVGPromptSchedule", "a fox without a block", clip)


def test_the_sampler_takes_an_input_video_and_a_strength(models, positive, composite_scripted):
    frames = composite_scripted["result"][0]  # 30 frames: block 0's first 3 were dropped
    inputs = (models["drafter"], models["target"], models["vae"], scripted_router(), positive, PROMPT)
    with pytest.raises(InputError, match="has 30 frames; 3 blocks need 33"):
        call("SDVGSampler", *inputs, video=frames, **{**VIDEO, "strength": 0.5})
    out = call("SDVGSampler", *inputs, video=torch.cat([frames[:3], frames]), **{**VIDEO, "strength": 0.5})
    blocks = json.loads(out["result"][2])["blocks"]
    assert [b["decision"] for b in blocks] == ["target", "accepted", "rejected"]
    assert [b["model_calls"]["drafter"] for b in blocks] == [0, 1 + 3, 1 + 3]  # strength 0.5: 3 passes a block
    assert [b["model_calls"]["target"] for b in blocks] == [3, 0, 1 + 3]
