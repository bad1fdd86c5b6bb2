"""What a benchmark runs: sizes, devices, run lists (docs/bench-derivation.md says why)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..costmodel import reference_ratios
from ..errors import InputError
from ..random_models import RouterSize
from ..vae import WAN21_BASE_DIM
from ..wan import WanConfig


@dataclass(frozen=True)
class Calibration:
    """Pick the DiTs' layer counts so the MEASURED times keep the real proportions.

    The VAE and router of a tiny preset cost what the resolution makes them cost (their CPU
    kernels are overhead-bound at tiny sizes), so the target is sized from the VAE: its 5-pass
    block should cost ``vae_decode_block / vae_ratio``, within ``target_block_range`` seconds so
    the benchmark fits its time budget. The drafter is then sized to ``drafter_ratio`` of the
    target block. After building, the proportions are measured again; depths are corrected
    until drafter : target and VAE : target are within ``tolerance`` of the goals (at most
    ``rounds`` times). Widths stay as in the preset; only layers change.
    """

    vae_ratio: float          # real vae_decode_block / target_block
    drafter_ratio: float      # real drafter_block / target_block
    target_block_range: tuple[float, float]
    max_layers: int = 64
    tolerance: float = 0.10
    rounds: int = 4


@dataclass(frozen=True)
class Preset:
    name: str
    device: str
    dtype: torch.dtype
    width: int
    height: int
    drafter: WanConfig
    target: WanConfig
    vae_base_dim: int
    router: RouterSize
    text_tokens: int = 24          # prompt length before the model's zero padding to text_len
    num_blocks: int = 9
    repeats: int = 5
    component_samples: int = 2     # timings of every component per repeat
    accept_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.73, 0.9, 1.0)
    hybrid_ks: tuple[int, ...] = (0, 3)
    skip_rates: tuple[float, ...] = (0.73, 1.0)  # extra sdvg runs (k = 0) with uniform skipping
    calibrate: Calibration | None = None
    threads: int | None = None     # torch threads for the run (None: torch's default)
    exact_preprocess: bool | None = None  # the router's preprocessing path (None: by device, as SDVGConfig)
    # GPU extras (bench/gpu.py): SDVG with an fp8 target at these sizes under this cap, the plan
    # against each run's peak, and the router's two preprocessing paths.
    memory_cap_gib: float | None = None
    capped_sizes: tuple[tuple[int, int], ...] = ()
    gpu_checks: bool = False
    note: str = ""

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8


def _cpu_preset() -> Preset:
    # Widths keep the real head size (128) and the real models' width:ffn shapes; layer counts
    # are calibrated at bench start (docs/bench-derivation.md); the JSON reports the ratios.
    ratios = reference_ratios()
    return Preset(
        name="cpu", device="cpu", dtype=torch.float32, width=64, height=48,
        drafter=WanConfig(dim=256, ffn_dim=1536, num_heads=2, num_layers=4, text_len=32),
        target=WanConfig(dim=1024, ffn_dim=2816, num_heads=8, num_layers=8, text_len=32),
        vae_base_dim=4, repeats=6,
        router=RouterSize(vision_hidden=32, vision_layers=1, vision_heads=1, vision_mlp=64,
                          text_hidden=32, text_layers=1, text_heads=1, text_mlp=64),
        calibrate=Calibration(vae_ratio=ratios["vae_decode_block"], drafter_ratio=ratios["drafter_block"],
                              target_block_range=(0.4, 2.4)),
        threads=1,
        note="tiny models of the real architectures; DiT depths calibrated so measured cost ratios follow 1.3B/14B at 832x480",
    )


# The GPU benchmark's run list: the two baselines and SDVG at the paper's operating point and at
# full acceptance, each with hybrid k = 0 and 3 (with the cap run and the checks, minutes on an H100).
GPU_RUNS = dict(accept_rates=(0.73, 1.0), hybrid_ks=(0, 3), skip_rates=(), repeats=2, component_samples=1,
                gpu_checks=True)


def _gpu_preset() -> Preset:
    return Preset(
        name="gpu", device="cuda", dtype=torch.bfloat16, width=832, height=480,
        drafter=WanConfig.wan_1_3b(), target=WanConfig.wan_14b(), vae_base_dim=WAN21_BASE_DIM,
        router=RouterSize(), memory_cap_gib=24.0, capped_sizes=((832, 480), (416, 240)), **GPU_RUNS,
        note="the real 1.3B and 14B Wan DiTs, Wan 2.1 VAE and ImageReward (BLIP ViT-L/16) with random weights, bf16",
    )


def _gpu_smoke_preset() -> Preset:
    """``gpu``'s code at the smoke preset's sizes on the CPU; the cap sits between the plans of its
    two capped sizes, so one is refused by the plan and the other runs."""
    from ..config import SDVGConfig
    from ..memory import GiB, session_plan

    smoke = _smoke_preset()
    sizes = ((64, 48), (32, 32))
    totals = [session_plan(SDVGConfig(width=w, height=h), device="cpu", compute_dtype=smoke.dtype,
                           drafter=smoke.drafter, target=smoke.target, target_weights=torch.float8_e4m3fn).total
              for w, h in sizes]
    return replace(smoke, name="gpu-smoke", **{**GPU_RUNS, "repeats": 1}, memory_cap_gib=sum(totals) / 2 / GiB,
                   capped_sizes=sizes, note="the gpu preset's code path on tiny models on the CPU: schema check only")


def _smoke_preset() -> Preset:
    """For the test suite: every code path of the benchmark in seconds. Its numbers mean nothing."""
    tiny = WanConfig.tiny(dim=32, num_heads=2, num_layers=1, ffn_dim=32, text_dim=16, text_len=8)
    return Preset(
        name="smoke", device="cpu", dtype=torch.float32, width=32, height=32,
        drafter=tiny, target=replace(tiny, num_layers=2), vae_base_dim=4,
        router=RouterSize(vision_hidden=16, vision_layers=1, vision_heads=1, vision_mlp=16,
                          text_hidden=16, text_layers=1, text_heads=1, text_mlp=16),
        text_tokens=4, num_blocks=3, repeats=2, component_samples=1,
        accept_rates=(0.75,), hybrid_ks=(0, 3), skip_rates=(1.0,), threads=1, note="schema check only",
    )


PRESETS: dict[str, Callable[[], Preset]] = {"cpu": _cpu_preset, "gpu": _gpu_preset, "smoke": _smoke_preset,
                                            "gpu-smoke": _gpu_smoke_preset}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"--preset {name!r} is not one of {', '.join(PRESETS)}.")
    return PRESETS[name]()
