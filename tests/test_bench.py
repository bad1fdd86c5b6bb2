"""The cost model, the benchmark's bookkeeping and a reduced benchmark run (no timing asserted)."""

import json
import math
from argparse import Namespace

import pytest
import torch
from PIL import Image

from sdvg_core import bench, costmodel
from sdvg_core.costmodel import ComponentSeconds
from sdvg_core.errors import InputError
from sdvg_core.schedule import NUM_STEPS

SECONDS = ComponentSeconds(target_context=1.0, target_block=10.0, drafter_context=0.1, drafter_block=1.0,
                           vae_decode_block=2.0, router_block=0.5, target_block_first=8.0,
                           drafter_block_first=0.75, vae_decode_first=1.5, vae_encode_anchor=0.25)


def simulate(c: ComponentSeconds, mode: str, num_blocks: int, decisions: list[bool], k: int,
             skipped: frozenset = frozenset()) -> float:
    """The loop of docs/algorithm.md walked block by block, charging each model call as it happens;
    blocks in ``skipped`` are accepted without the router."""
    total, pass_t, pass_d = 0.0, c.target_block / NUM_STEPS, c.drafter_block / NUM_STEPS
    for b in range(num_blocks):
        if b >= 2:
            total += c.vae_encode_anchor                     # the anchor of block b
        if b == 0 and mode != "draft_only":
            total += c.target_block_first + c.vae_decode_first
            continue
        if mode == "target_only":
            total += c.target_context + NUM_STEPS * pass_t + c.vae_decode_block
            continue
        if b == 0:                                           # draft-only's first block
            total += c.drafter_block_first + c.vae_decode_first
            continue
        total += c.drafter_context + NUM_STEPS * pass_d + c.vae_decode_block
        if mode == "draft_only" or b in skipped:
            continue
        total += c.router_block
        if not decisions[b - 1]:                             # rejected: the target redoes it
            total += c.target_context + (NUM_STEPS - k) * pass_t + c.vae_decode_block
    return total


@pytest.mark.parametrize("num_blocks", [1, 2, 9, 13])
@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_cost_model_equals_a_block_by_block_walk(num_blocks, k):
    scored = num_blocks - 1
    for accepted in range(scored + 1):
        decisions = [i < accepted for i in range(scored)]
        rate = accepted / scored if scored else 0.0
        for mode in ("target_only", "draft_only", "sdvg"):
            expected = simulate(SECONDS, mode, num_blocks, decisions, k)
            got = costmodel.video_seconds(SECONDS, mode, num_blocks=num_blocks,
                                          accept_rate=rate if mode == "sdvg" else None, hybrid_k=k)
            assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k", [0, 3])
def test_cost_model_with_skipped_blocks_equals_the_walk(k):
    skipped = frozenset({2, 4, 6, 8})                 # uniform skipping, every 2nd block
    scored = [b for b in range(1, 9) if b not in skipped]
    for accepted in range(len(scored) + 1):
        decisions = [True] * 8
        for b in scored[accepted:]:
            decisions[b - 1] = False
        expected = simulate(SECONDS, "sdvg", 9, decisions, k, skipped)
        got = costmodel.video_seconds(SECONDS, "sdvg", num_blocks=9, accept_rate=accepted / len(scored),
                                      hybrid_k=k, skipped=len(skipped))
        assert got == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match="skipped"):
        costmodel.video_seconds(SECONDS, "sdvg", num_blocks=9, accept_rate=1.0, skipped=9)


def test_cost_model_hand_computed():
    # 9 blocks, 6 of 8 accepted, k = 3. Block 0: 8 + 1.5. Blocks 1-8: drafter 0.1 + 1, decode 2,
    # router 0.5 -> 3.6 each; 2 rejects: target 1 + 10 * 2/5 + decode 2 = 7 each. Anchors 7 * 0.25.
    assert costmodel.video_seconds(SECONDS, "sdvg", num_blocks=9, accept_rate=0.75, hybrid_k=3) == \
        pytest.approx(9.5 + 8 * 3.6 + 2 * 7 + 1.75)
    # Target-only: 9.5 + 8 * (1 + 10 + 2) + 1.75 = 115.25.
    assert costmodel.video_seconds(SECONDS, "target_only", num_blocks=9) == pytest.approx(115.25)
    assert costmodel.predicted_speedup(SECONDS, num_blocks=9, accept_rate=0.75, hybrid_k=3) == \
        pytest.approx(115.25 / (9.5 + 28.8 + 14 + 1.75))


def test_first_block_costs_default_to_the_later_blocks():
    c = ComponentSeconds(1, 10, 0.1, 1, 2, 0.5)
    assert c.first_target == 10 and c.first_drafter == 1 and c.first_decode == 2
    assert costmodel.video_seconds(c, "target_only", num_blocks=2) == pytest.approx(12 + 13)


def test_component_seconds_from_dict_errors_name_the_key():
    with pytest.raises(InputError, match="router_block"):
        ComponentSeconds.from_dict({k: 1.0 for k in costmodel.REQUIRED_KEYS if k != "router_block"})
    with pytest.raises(InputError, match="vae_decode_block"):
        ComponentSeconds.from_dict({**{k: 1.0 for k in costmodel.REQUIRED_KEYS}, "vae_decode_block": -1})
    with pytest.raises(InputError, match="accept_rate"):
        costmodel.video_seconds(SECONDS, "sdvg", num_blocks=9)


def test_reference_flops_recount_and_match_a_hand_count():
    counted = costmodel.count_reference_flops()
    assert {k: int(v) for k, v in counted.items()} == costmodel.REFERENCE_FLOPS
    # Independent hand count of one 14B denoising pass: 4680 query tokens, 9360 keys, 40 layers,
    # 2 FLOPs per multiply-add. Linear layers dominate; the small embeddings/head are left out.
    n, kv, d, f, layers, text = 4680, 9360, 5120, 13824, 40, 512
    per_layer = 2 * n * (4 * d * d + 2 * d * f + 2 * d * d) + 4 * n * kv * d + 4 * n * text * d
    assert costmodel.REFERENCE_FLOPS["target_block"] / NUM_STEPS == pytest.approx(layers * per_layer, rel=0.01)
    ratio = costmodel.REFERENCE_FLOPS["target_block"] / costmodel.REFERENCE_FLOPS["drafter_block"]
    assert 7.0 < ratio < 8.0  # 1.3B : 14B


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.73, 0.9, 1.0])
@pytest.mark.parametrize("videos", [1, 3, 5])
def test_accept_patterns_pool_to_the_rounded_rate(rate, videos):
    patterns = bench.accept_patterns(rate, 8, videos)
    assert len(patterns) == videos and all(len(p) == 8 for p in patterns)
    accepted = sum(map(sum, patterns))
    assert accepted == round(rate * 8 * videos)
    counts = [sum(p) for p in patterns]
    assert max(counts) - min(counts) <= 1
    assert patterns == bench.accept_patterns(rate, 8, videos)


def test_pooled_seconds_weights_each_accept_count_by_its_share():
    def video(seconds, accepted):
        return bench.VideoTiming(seconds, accepted, 8, {}, {}, None)

    videos = [video(10, 6), video(12, 6), video(11, 6), video(20, 5)]
    assert bench.pooled_seconds(videos) == pytest.approx(0.75 * 11 + 0.25 * 20)
    assert bench.pooled_seconds([video(3, 2), video(1, 2), video(2, 2)]) == 2


def test_check_targets_reports_misses():
    runs = [{"mode": "sdvg", "accept_rate": 0.725, "accept_rate_nominal": 0.73, "hybrid_k": 0,
             "speedup": 1.6, "fraction_of_bound": 0.95},
            {"mode": "sdvg", "accept_rate": 0.725, "accept_rate_nominal": 0.73, "hybrid_k": 3,
             "speedup": 2.2, "fraction_of_bound": 0.85}]
    t = bench.check_targets(runs)
    assert not t["all_within_bound_fraction"] and len(t["below_bound_fraction"]) == 1
    assert t["speedup_at_0.73"]["k=0"]["met"] is False and t["speedup_at_0.73"]["k=3"]["met"] is True


def test_gpu_preset_is_the_real_architectures():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from sdvg_core.wan import WanConfig

    preset = bench.get_preset("gpu")
    assert (preset.device, preset.dtype, preset.width, preset.height) == ("cuda", torch.bfloat16, 832, 480)
    system = bench.build_system(preset, device="meta")  # shapes only: nothing is allocated
    assert system.drafter.cfg == WanConfig.wan_1_3b() and system.target.cfg == WanConfig.wan_14b()

    def params(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        reference = {"drafter": WanTransformer3DModel(num_attention_heads=12, ffn_dim=8960, num_layers=30),
                     "target": WanTransformer3DModel(num_attention_heads=40, ffn_dim=13824, num_layers=40),
                     "vae": AutoencoderKLWan()}  # diffusers' defaults are Wan 2.1's VAE
    assert params(system.drafter) == params(reference["drafter"])
    assert params(system.target) == params(reference["target"])
    assert params(system.vae.vae) == params(reference["vae"])
    vision = system.scorer.vision.config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (1024, 24, 16, 224)
    text = system.scorer.text.config
    assert (text.hidden_size, text.num_hidden_layers, text.encoder_hidden_size, text.vocab_size) == (768, 12, 1024, 30524)
    assert all(p.device.type == "meta" for p in system.target.parameters())


def bench_run(tmp_path_factory, preset: str):
    """The folder `python -m sdvg_core bench --preset <preset>` wrote, with the preset's defaults."""
    out = tmp_path_factory.mktemp(preset)
    args = Namespace(preset=preset, out=str(out), repeats=None, component_samples=None,
                     accept_rates=None, hybrid_k=None, blocks=None)
    assert bench.main(args) == 0
    return out


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    return bench_run(tmp_path_factory, "smoke")


def test_reduced_bench_writes_the_three_files_with_the_schema(smoke_result):
    data = json.loads((smoke_result / "smoke.json").read_text())
    assert data["preset"] == "smoke" and isinstance(data["device"], str) and data["device"]
    assert set(costmodel.REQUIRED_KEYS) <= set(data["component_seconds"])
    assert all(isinstance(v, float) and v > 0 for v in data["component_seconds"].values())
    preset = bench.get_preset("smoke")
    expected = {("target_only", None, 0, "none"), ("draft_only", None, 0, "none")} | {
        ("sdvg", a, k, "none") for a in preset.accept_rates for k in preset.hybrid_ks} | {
        ("sdvg", a, 0, "uniform") for a in preset.skip_rates}
    assert {(r["mode"], r["accept_rate_nominal"], r["hybrid_k"], r["skip"]) for r in data["runs"]} == expected
    assert all(r["skipped_blocks"] > 0 for r in data["runs"] if r["skip"] == "uniform")
    for run in data["runs"]:
        for key in ("mode", "accept_rate", "hybrid_k", "seconds_per_video", "speedup", "bound",
                    "model_calls", "peak_memory_mb"):
            assert key in run, key
        assert (run["accept_rate"] is None) == (run["mode"] != "sdvg")
        assert len(run["seconds_each"]) == preset.repeats * (2 if run["mode"] == "target_only" else 1)
        assert math.isfinite(run["speedup"]) and math.isfinite(run["bound"])
    baseline = next(r for r in data["runs"] if r["mode"] == "target_only")
    assert baseline["speedup"] == 1.0 and baseline["bound"] == pytest.approx(1.0)
    assert "speedup_at_0.73" in data["targets"]
    table = (smoke_result / "smoke.md").read_text()
    assert "| sdvg |" in table and "| target_only |" in table
    with Image.open(smoke_result / "smoke.png") as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_measured_model_calls_are_what_the_cost_model_counts(smoke_result):
    """Charging one 'second' per call, the cost model must count the calls the engine made."""
    data = json.loads((smoke_result / "smoke.json").read_text())
    per_call = ComponentSeconds(target_context=1, target_block=NUM_STEPS, drafter_context=1,
                                drafter_block=NUM_STEPS, vae_decode_block=1, router_block=1,
                                vae_encode_anchor=1)
    for run in data["runs"]:
        predicted = costmodel.video_breakdown(per_call, run["mode"], num_blocks=data["num_blocks"],
                                              accept_rate=run["accept_rate"], hybrid_k=run["hybrid_k"],
                                              skipped=run["skipped_blocks"])
        assert run["model_calls"] == pytest.approx(predicted), run["mode"]


def test_peak_memory_reads_a_positive_number():
    memory = bench.PeakMemory("cpu")
    memory.reset()
    block = torch.ones(4_000_000)
    assert memory.peak_mb() > block.numel() * 4 / 2**20


# ----------------------------------------------------------------------------- the GPU benchmark's code, on the CPU


def test_gpu_preset_runs_what_the_gpu_check_needs():
    preset = bench.get_preset("gpu")
    specs = {(s.mode, s.accept_rate, s.hybrid_k, s.skip) for s in bench.run_specs(preset)}
    assert specs == {("target_only", None, 0, "none"), ("draft_only", None, 0, "none")} | {
        ("sdvg", a, k, "none") for a in (0.73, 1.0) for k in (0, 3)}
    assert preset.memory_cap_gib == 24 and preset.capped_sizes[0] == (832, 480) and preset.gpu_checks
    assert preset.exact_preprocess is None  # the by-device default: on-device preprocessing on the GPU


@pytest.fixture(scope="module")
def gpu_smoke_result(tmp_path_factory):
    return bench_run(tmp_path_factory, "gpu-smoke")


def test_gpu_smoke_writes_plans_capped_runs_and_preprocessing(gpu_smoke_result):
    data = json.loads((gpu_smoke_result / "gpu-smoke.json").read_text())
    assert all(r["planned_peak_mb"] > 0 and r["peak_memory_mb"] > 0 for r in data["runs"])
    outcomes = {(c["width"], c["height"]): c for c in data["capped_runs"]}
    refused, completed = outcomes[(64, 48)], outcomes[(32, 32)]
    assert refused["outcome"] == "refused by the memory plan" and "Ways to a smaller run" in refused["message"]
    assert "build_seconds" not in refused  # nothing was built for a refused size
    assert completed["outcome"] == "completed" and completed["seconds"] > 0 and completed["scored"] == 2
    pre = data["router_preprocessing"]
    assert set(pre["blocks"]) == {"smooth scene", "textured scene", "noisy scene"}
    assert 0 <= pre["max_score_difference"] < 0.05 and all(v > 0 for v in pre["seconds"].values())
    table = (gpu_smoke_result / "gpu-smoke.md").read_text()
    for section in ("the plan against the measured peak", "fp8 target under a memory cap", "Router preprocessing"):
        assert section in table
    with Image.open(gpu_smoke_result / "gpu-smoke.png") as image:
        assert image.format == "PNG"


def test_a_gpu_run_at_832x480_with_an_fp8_target_is_refused_under_24_gib_and_416x240_fits():
    from sdvg_core.config import SDVGConfig
    from sdvg_core.memory import GiB, session_plan

    preset = bench.get_preset("gpu")
    totals = {(w, h): session_plan(SDVGConfig(width=w, height=h), device="cuda", compute_dtype=torch.bfloat16,
                                   drafter=preset.drafter, target=preset.target,
                                   target_weights=torch.float8_e4m3fn).total / GiB
              for w, h in preset.capped_sizes}
    assert totals[(832, 480)] > 24 > totals[(416, 240)]


def test_projections_are_the_real_proportions_bound_at_the_runs_median_efficiency():
    runs = [{"mode": "target_only", "fraction_of_bound": 1.0, "bound_real_proportions": 1.0},
            {"mode": "draft_only", "fraction_of_bound": 0.99, "bound_real_proportions": 5.5},
            {"mode": "sdvg", "fraction_of_bound": 0.95, "bound_real_proportions": 2.0},
            {"mode": "sdvg", "fraction_of_bound": 1.03, "bound_real_proportions": 4.0}]
    assert bench.add_projections(runs) == 0.99
    assert [r["projected_speedup"] for r in runs] == pytest.approx([1.0, 5.445, 1.98, 3.96])
    assert [r["projected_speedup_this_run"] for r in runs] == pytest.approx([1.0, 5.445, 1.9, 4.12])
