"""The memory plan (sdvg_core/memory.py): byte counts against real-size models built on the meta
device and against what a streamed decode really holds; refusals before anything loads."""

import pytest
import torch

from sdvg_core import memory
from sdvg_core.__main__ import main
from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError
from sdvg_core.memory import GiB, memory_plan, session_plan, vae_decode_bytes, wan_weight_bytes
from sdvg_core.random_models import RouterSize, random_router, random_vae
from sdvg_core.speculative import SDVGSession
from sdvg_core.tiny import build_tiny_system
from sdvg_core.vae import wan21_autoencoder
from sdvg_core.wan import CausalWanModel, WanConfig
from sdvg_core.wan.model import WanLinear

FP8 = torch.float8_e4m3fn


def meta_wan_bytes(cfg: WanConfig, dtype: torch.dtype, linear_dtype: torch.dtype | None = None) -> int:
    """Parameter bytes of the real model class built on meta, stored as load_wan stores a file:
    every tensor in ``dtype``, the Linear layers' weights in ``linear_dtype`` (fp8 files keep them fp8)."""
    with torch.device("meta"):
        model = CausalWanModel(cfg, compute_dtype=dtype)
    linear_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, WanLinear)}
    size = {name: torch.empty((), dtype=linear_dtype if linear_dtype is not None and name in linear_weights
                              else dtype).element_size() for name, _ in model.named_parameters()}
    return sum(p.numel() * size[name] for name, p in model.named_parameters())


@pytest.mark.parametrize("cfg", [WanConfig.wan_1_3b(), WanConfig.wan_14b()], ids=["1.3B", "14B"])
@pytest.mark.parametrize("linear", [None, FP8], ids=["bf16", "fp8"])
def test_dit_weight_bytes_equal_the_real_size_model(cfg, linear):
    assert wan_weight_bytes(cfg, torch.bfloat16, linear) == meta_wan_bytes(cfg, torch.bfloat16, linear)


def test_the_fixed_architectures_parameter_counts():
    vae = random_vae(device="meta").vae
    assert sum(p.numel() for p in vae.parameters()) == memory.WAN21_VAE_PARAMS
    scorer = random_router(RouterSize(), device="meta")
    counted = sum(p.numel() for m in (scorer.vision, scorer.text, scorer.head) for p in m.parameters())
    assert counted == memory.ROUTER_PARAMS


def test_vae_cache_equals_what_a_streamed_decode_holds():
    """The per-pixel cache traced once through the real decoder scales to any size: a 3-block decode
    at two sizes holds exactly half the planned bytes (the other half is the rollback snapshot)."""
    vae = random_vae(4)
    for hw in ((6, 8), (10, 12)):
        vae.reset()
        for _ in range(3):
            vae.decode(torch.randn(1, 3, 16, *hw))
        held = sum(t.numel() * t.element_size() for t in vae._state.feat_cache if isinstance(t, torch.Tensor))
        assert 2 * held == vae_decode_bytes(8 * hw[0], 8 * hw[1], torch.float32, base_dim=4)[0]


def real_plan(**kw):
    args = dict(device="cuda", width=832, height=480, compute_dtype=torch.bfloat16, drafter=WanConfig.wan_1_3b(),
                target=WanConfig.wan_14b(), router_dtype=torch.float32)
    return memory_plan(**{**args, **kw})


def test_the_real_plan_adds_up():
    plan = real_plan()
    lines = {line.what: line.bytes for line in plan.lines}
    assert lines["target weights"] == wan_weight_bytes(WanConfig.wan_14b(), torch.bfloat16)
    # The 14B's window: 6 frames of 30x52 latents in 2x2 patches = 2340 tokens; K and V, 40 layers, 5120 wide.
    assert lines["target KV window (6 frames) + text"] == 2 * 40 * (6 * 1560 + 512) * 5120 * 2
    assert plan.resident == sum(b for w, b in lines.items() if "one at a time" not in w and
                                next(line for line in plan.lines if line.what == w).resident)
    assert plan.total == int((plan.resident + plan.transient) * 1.1)
    assert plan.bytes_of("target weights") - real_plan(target_weights=FP8).bytes_of("target weights") == \
        wan_weight_bytes(WanConfig.wan_14b(), torch.bfloat16) - wan_weight_bytes(WanConfig.wan_14b(), torch.bfloat16, FP8)
    two = real_plan(prompts=2)
    assert two.total > plan.total  # a second prompt's text K/V per model


def test_a_plan_that_does_not_fit_names_the_numbers_and_the_ways_out():
    plan = real_plan()
    plan.check(None)                 # unknown free memory (a CPU): nothing to check
    plan.check(80 * GiB)             # an 80 GB card
    with pytest.raises(InputError) as error:
        plan.check(24 * GiB, what="this batch")
    text = str(error.value)
    assert "this batch needs about 49.0 GiB on cuda, and 24.0 GiB is free" in text
    assert "target weights" in text and "26.61 GiB" in text and "target KV window" in text
    assert "an fp8 target" in text and "drafter on a second GPU" in text and "416x240" in text
    assert "all of these together" in text and "partial loading" in text
    fp8 = real_plan(target_weights=FP8)
    # Each way out is a whole plan recomputed: the fp8 option's total is the fp8 plan's.
    assert dict(plan.options)[next(w for w, _ in plan.options if w.startswith("an fp8 target"))] == fp8.total
    assert "fits with 416x240" in fp8.verdict(24 * GiB)
    assert fp8.verdict(48 * GiB).startswith("fits")
    assert not any("fp8" in what for what, _ in fp8.options)  # it already is


def test_the_plan_command_reads_out_each_card(capsys):
    assert main(["plan", "--fp8-target", "--cards", "24", "80"]) == 0
    out = capsys.readouterr().out
    assert "fp8 target" in out and "24 GiB card: needs 34.3 GiB" in out and "80 GiB card: fits" in out


def test_free_memory_is_unknown_on_the_cpu():
    assert memory.free_bytes("cpu") is None


def test_a_session_whose_caches_do_not_fit_is_refused_before_any_model_call(monkeypatch):
    system = build_tiny_system()
    calls = []
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    monkeypatch.setattr(type(system.target), "forward", lambda *a, **k: calls.append(1))
    config = SDVGConfig(width=64, height=48, num_blocks=2)
    with pytest.raises(InputError, match=r"caches and activations.*GiB is free"):
        SDVGSession(**system.session_kwargs(), config=config)
    assert not calls
    monkeypatch.setattr(memory, "free_bytes", lambda device: 64 * GiB)
    SDVGSession(**system.session_kwargs(), config=config)  # enough: no error


def test_session_plan_holds_only_the_models_a_mode_calls():
    cfgs = dict(drafter=WanConfig.wan_1_3b(), target=WanConfig.wan_14b())
    whats = {mode: {line.what for line in session_plan(SDVGConfig(mode=mode), device="cuda",
                                                       compute_dtype=torch.bfloat16, **cfgs).lines}
             for mode in ("sdvg", "target_only", "draft_only")}
    assert {"drafter weights", "target weights", "router weights"} <= whats["sdvg"]
    assert "drafter weights" not in whats["target_only"] and "router weights" not in whats["target_only"]
    assert "target weights" not in whats["draft_only"]


def test_generate_refuses_a_batch_that_does_not_fit_before_loading(tmp_path, monkeypatch, capsys):
    from sdvg_core.tiny import write_tiny_model_files, write_tiny_text_encoder
    from sdvg_core.worker import Worker

    files = write_tiny_model_files(tmp_path / "models")
    encoder = write_tiny_text_encoder(tmp_path / "models" / "umt5")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    for step in ("encode", "load"):
        monkeypatch.setattr(Worker, step, lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    argv = ["generate", "--drafter", str(files["drafter"]), "--target", str(files["target"]),
            "--vae", str(files["vae"]), "--router", str(files["router"]), "--text-encoder", str(encoder),
            "--width", "64", "--height", "48", "--blocks", "2", "--prompt", "a fox", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "this batch needs about" in err and "GiB is free" in err and "drafter weights" in err
    assert not out.exists()  # nothing written
