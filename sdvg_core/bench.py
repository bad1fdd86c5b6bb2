"""Benchmark: SDVG against target-only and draft-only, next to the cost model's bound.

In ONE process, interleaved (every repeat runs every configuration once, in a rotating
order, so machine drift hits all of them alike), it times whole videos of

* ``target_only`` and ``draft_only`` (each running only the model calls it needs);
* ``sdvg`` at several accept rates, each with hybrid k = 0 and k = 3.

Accept rates are forced by ``SDVGConfig.accept_pattern`` while the router still scores
every drafted block (and costs what it costs). A video has N-1 scored blocks (8 for the
paper's 9 blocks), so a rate like 0.73 is not a whole number of blocks per video: the
decisions are spread evenly over all repeats together (error diffusion), and the JSON
gives the rate actually run (``accept_rate``) next to the one asked for
(``accept_rate_nominal``). With the cpu preset's 6 repeats (48 decisions) 0, 0.25, 0.5
and 1 are exact, 0.73 runs as 35/48 = 0.729 and 0.9 as 43/48 = 0.896.
``seconds_per_video`` is the median over the repeats; when the repeats of a run differ in
their number of accepted blocks it is the median of each group, weighted by how many
videos the group has (the time at the pooled rate: a video's cost is linear in that number).
The target-only baseline, which divides every speedup, runs twice per repeat.

Each component is also timed alone, its samples taken at their own place in the same
rotation (``ComponentTimer``); the cost model (sdvg_core/costmodel.py) turns the medians
into the ``bound`` of every run. Presets and how their sizes were chosen:
docs/bench-derivation.md.

Writes ``<out>/<preset>.json``, ``<out>/<preset>.md`` and ``<out>/<preset>.png``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .costmodel import PAPER_POINTS, ComponentSeconds, predicted_speedup, reference_ratios, video_seconds
from .errors import InputError, SDVGError
from .schedule import FRAMES_PER_BLOCK, NoisePlan, denoise_block
from .stats import COMPONENTS, synchronize
from .wan import WanConfig

TARGET_BOUND_FRACTION = 0.9
SPEEDUP_TARGETS = {0: 1.7, 3: 2.1}     # hybrid k -> speedup required at accept rate 0.73
TARGET_ACCEPT_RATE = 0.73
PROMPT = "a red fox running through fresh snow at golden hour, cinematic"


# ---------------------------------------------------------------------- presets

@dataclass(frozen=True)
class RouterSize:
    """BLIP vision + BERT text sizes of the ImageReward router (the real one is ViT-L/16 + BERT-base)."""

    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    vocab_size: int = 30524   # bert-base-uncased + BLIP's [DEC] and [ENC]


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
    calibrate: "Calibration | None" = None
    threads: int | None = None     # torch threads for the run (None: torch's default)
    note: str = ""


@dataclass(frozen=True)
class Calibration:
    """Pick the DiTs' layer counts at bench start so MEASURED times keep the real proportions.

    The VAE and router of a tiny preset cost what the resolution makes them cost (their CPU
    kernels are overhead-bound at tiny sizes), so the target is sized from the VAE: its 5-pass
    block should cost ``vae_decode_block / vae_ratio``, clamped to ``target_block_range``
    seconds so the benchmark fits its time budget. The drafter is then sized to
    ``drafter_ratio`` of the target block. Widths stay as in the preset; only layers change.
    """

    vae_ratio: float          # real vae_decode_block / target_block
    drafter_ratio: float      # real drafter_block / target_block
    target_block_range: tuple[float, float]
    max_layers: int = 64


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
                              target_block_range=(0.4, 1.0)),
        threads=1,
        note="tiny models of the real architectures; DiT depths calibrated so measured cost ratios follow 1.3B/14B at 832x480",
    )


def _gpu_preset() -> Preset:
    return Preset(
        name="gpu", device="cuda", dtype=torch.bfloat16, width=832, height=480,
        drafter=WanConfig.wan_1_3b(), target=WanConfig.wan_14b(), vae_base_dim=96, router=RouterSize(),
        repeats=3,
        note="the real 1.3B and 14B Wan DiTs, Wan 2.1 VAE and ImageReward (BLIP ViT-L/16) with random weights",
    )


def _smoke_preset() -> Preset:
    """For the test suite: every code path of the benchmark in seconds. Its numbers mean nothing."""
    tiny = WanConfig.tiny(dim=32, num_heads=2, num_layers=1, ffn_dim=32, text_dim=16, text_len=8)
    return Preset(
        name="smoke", device="cpu", dtype=torch.float32, width=32, height=32,
        drafter=tiny, target=replace(tiny, num_layers=2), vae_base_dim=4,
        router=RouterSize(vision_hidden=16, vision_layers=1, vision_heads=1, vision_mlp=16,
                          text_hidden=16, text_layers=1, text_heads=1, text_mlp=16),
        text_tokens=4, num_blocks=3, repeats=2, component_samples=1,
        accept_rates=(0.0, 0.75), hybrid_ks=(0, 3), threads=1, note="schema check only",
    )


PRESETS: dict[str, Callable[[], Preset]] = {"cpu": _cpu_preset, "gpu": _gpu_preset, "smoke": _smoke_preset}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"--preset {name!r} is not one of {', '.join(PRESETS)}.")
    return PRESETS[name]()


# ---------------------------------------------------------------------- models

@dataclass
class System:
    """Everything a session needs, built once and shared by every run."""

    drafter: torch.nn.Module
    target: torch.nn.Module
    vae: object          # StreamingVAE
    scorer: torch.nn.Module
    text: torch.Tensor   # [1, L, text_dim]
    prompt: str


def build_system(preset: Preset, *, device: str | None = None, seed: int = 0) -> System:
    """The preset's models with random weights. ``device="meta"`` builds shapes only (no memory)."""
    device = device or preset.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SDVGError(f"preset {preset.name!r} needs a CUDA GPU and torch sees none; "
                        "run `--preset cpu` on this machine.")
    gen = torch.Generator().manual_seed(seed + 1)
    text = 0.1 * torch.randn(1, preset.text_tokens, preset.target.text_dim, generator=gen)
    return System(build_dit(preset.drafter, preset.dtype, device, seed),
                  build_dit(preset.target, preset.dtype, device, seed + 2),
                  build_vae(preset.vae_base_dim, preset.dtype, device, seed + 3),
                  build_scorer(preset.router, device, seed + 4), text, PROMPT)


def build_dit(cfg: WanConfig, dtype: torch.dtype, device: str, seed: int = 0):
    """Our CausalWanModel of this shape, random weights (``device="meta"``: shapes only)."""
    from .wan import CausalWanModel

    with torch.device("meta"):
        model = CausalWanModel(cfg, compute_dtype=dtype)
    return _random_weights(model, device, dtype, seed)


def build_vae(base_dim: int, dtype: torch.dtype, device: str, seed: int = 0):
    """A StreamingVAE over a Wan 2.1 AutoencoderKLWan of the real structure and this width."""
    from diffusers import AutoencoderKLWan

    from .vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN21_VAE_STRUCTURE, StreamingVAE

    with torch.device("meta"):
        vae = AutoencoderKLWan(base_dim=base_dim, latents_mean=list(WAN21_LATENTS_MEAN),
                               latents_std=list(WAN21_LATENTS_STD), **WAN21_VAE_STRUCTURE)
    return StreamingVAE(_random_weights(vae, device, dtype, seed))


def build_scorer(size: RouterSize, device: str, seed: int = 0):
    """ImageReward's architecture (BLIP ViT + BERT with cross-attention + MLP head) in float32."""
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    from .router import ImageRewardScorer, RewardHead

    vision_config = BlipVisionConfig(hidden_size=size.vision_hidden, intermediate_size=size.vision_mlp,
                                     num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                                     image_size=224, patch_size=16, layer_norm_eps=1e-6)
    text_config = BlipTextConfig(vocab_size=size.vocab_size, hidden_size=size.text_hidden,
                                 encoder_hidden_size=size.vision_hidden, intermediate_size=size.text_mlp,
                                 num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 is_decoder=True, use_cache=False)
    with torch.device("meta"):
        vision = BlipVisionModel(vision_config)
        text = BlipTextModel(text_config, add_pooling_layer=False)
        head = RewardHead(size.text_hidden)
    for offset, module in enumerate((vision, text, head)):
        _random_weights(module, device, torch.float32, seed + offset)
    # The tokenizer only has to turn the prompt into ids (its cost is nil): a vocabulary of the
    # prompt's words stands in for bert-base-uncased, whose files the benchmark does not need.
    words = sorted(set(re.findall(r"[a-z]+", PROMPT.lower())))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    return ImageRewardScorer(vision, text, head, BertTokenizer(vocab=vocab))


@torch.no_grad()
def _random_weights(module: torch.nn.Module, device: str, dtype: torch.dtype, seed: int):
    """Allocate a meta-built module on ``device`` in ``dtype`` and fill it at a trained scale.

    Matrices ~ N(0, 1/fan_in), norm scales 1, biases 0: activations stay O(1) through any
    depth, and a random network costs exactly what a trained one costs. The dtype is set
    while still on meta, so a 14B model is allocated once, in bfloat16 (28 GB, not 56 + 28).
    Meta stays meta.
    """
    torch.nn.Module.to(module, dtype=dtype)  # nn.Module's own: diffusers' .to() warns needlessly
    if device == "meta":
        return module.eval().requires_grad_(False)
    generator = torch.Generator(device=device).manual_seed(seed)
    module.to_empty(device=device)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
        elif "norm" in name or name.endswith(("gamma", "weight")):
            p.fill_(1.0)
        else:
            p.zero_()
    for name, b in module.named_buffers():
        if name.endswith("position_ids"):
            b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
        else:
            b.zero_()
    return module.eval().requires_grad_(False)


# ---------------------------------------------------------------------- timing helpers

def _samples(fn: Callable[[], object], device, n: int) -> list[float]:
    """Wall-clock seconds of ``n`` calls, each waited for on a GPU."""
    samples = []
    for _ in range(n):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def _median_seconds(fn: Callable[[], object], device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_samples(fn, device, repeats))


class PeakMemory:
    """Peak memory of one run, in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` (reset before the run): every tensor the process
    holds on the GPU, model weights included. CPU: the process's peak resident set (VmHWM)
    during the run, reset before it through /proc/self/clear_refs after returning freed heap
    to the OS (malloc_trim); it includes the weights of every model loaded, as on the GPU.
    """

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self._libc = None
        if not self.cuda:
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None


def describe_device(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__}, threads: {torch.get_num_threads()}"


# ---------------------------------------------------------------------- calibration

def calibrate(preset: Preset, log: Callable[[str], None] = print) -> tuple[Preset, dict]:
    """The preset with DiT depths chosen from measured times (see ``Calibration``)."""
    c = preset.calibrate
    hw = (preset.height // 8, preset.width // 8)
    vae = build_vae(preset.vae_base_dim, preset.dtype, preset.device)
    vae_seconds = _vae_decode_seconds(vae, hw, repeats=3)
    low, high = c.target_block_range
    goal = min(max(vae_seconds / c.vae_ratio, low), high)
    text = torch.zeros(1, preset.text_tokens, preset.target.text_dim)
    target_layers, target_block = _layers_for(preset.target, goal, preset, text, c.max_layers)
    drafter_goal = c.drafter_ratio * target_block
    drafter_layers, drafter_block = _layers_for(preset.drafter, drafter_goal, preset, text, c.max_layers)
    info = {"vae_decode_block": vae_seconds, "target_block_goal": goal, "target_layers": target_layers,
            "target_block_predicted": target_block, "drafter_block_goal": drafter_goal,
            "drafter_layers": drafter_layers, "drafter_block_predicted": drafter_block}
    log(f"  VAE decode {vae_seconds:.3f} s/block -> target {target_layers} layers "
        f"(~{target_block:.3f} s/block), drafter {drafter_layers} layers (~{drafter_block:.3f} s/block)")
    return replace(preset, target=replace(preset.target, num_layers=target_layers),
                   drafter=replace(preset.drafter, num_layers=drafter_layers)), info


def _layers_for(cfg: WanConfig, goal: float, preset: Preset, text: torch.Tensor,
                max_layers: int) -> tuple[int, float]:
    """Layers whose 5-pass block costs ``goal`` seconds: time 1 and 3 layers, fit a + b * layers."""
    hw = (preset.height // 8, preset.width // 8)
    one, three = (_block_seconds(build_dit(replace(cfg, num_layers=n), preset.dtype, preset.device),
                                 text, hw, repeats=3) for n in (1, 3))
    per_layer = max((three - one) / 2, 1e-9)
    fixed = one - per_layer
    layers = min(max(round((goal - fixed) / per_layer), 1), max_layers)
    return layers, fixed + per_layer * layers


# ---------------------------------------------------------------------- component timings

class ComponentTimer:
    """Times each component alone, a few samples at a time, so the samples can be taken
    between the videos of every repeat (drift then hits the bound as it hits the runs).

    Keys are those of ComponentSeconds. Every component is warmed up once at construction.
    """

    def __init__(self, system: System, preset: Preset):
        from .router import FixedTau, Router

        hw = (preset.height // 8, preset.width // 8)
        self.device = system.vae.device
        drafter, target = (_DiTPasses(m, system.text, hw) for m in (system.drafter, system.target))
        vae = system.vae
        gen = torch.Generator().manual_seed(3)
        latents = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=gen)
        vae.reset()
        fresh = vae.snapshot()
        vae.decode(latents)
        started = vae.snapshot()
        pixels = vae.decode(latents).float()
        vae.reset()
        router = Router(system.scorer, FixedTau(0.0))

        def decode(state):
            def call():
                vae.restore(state)
                return vae.decode(latents)
            return call

        self._calls: dict[str, Callable[[], object]] = {}
        for role, passes in (("drafter", drafter), ("target", target)):
            self._calls[f"{role}_context"] = passes.context_pass
            self._calls[f"{role}_block"] = passes.block  # after the context pass filled slots 0-2
            self._calls[f"{role}_block_first"] = lambda p=passes: p.block(first=True)
        self._calls["vae_decode_first"] = decode(fresh)
        self._calls["vae_decode_block"] = decode(started)
        self._calls["vae_encode_anchor"] = lambda: vae.encode_frame(pixels[:, -1])
        self._calls["router_block"] = lambda: router.route(pixels[0], system.prompt)
        self._vae = vae
        self.samples: dict[str, list[float]] = {k: [] for k in self._calls}
        self.sample(1)
        self.samples = {k: [] for k in self._calls}  # the warm-up does not count

    def sample(self, n: int = 1) -> None:
        """``n`` more timings of every component (the context pass first: it fills the cache)."""
        for key, call in self._calls.items():
            self.samples[key] += _samples(call, self.device, n)
        self._vae.reset()

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items()}


def time_components(system: System, preset: Preset, samples: int | None = None) -> dict[str, float]:
    """Median seconds of each component for one block, timed alone (keys of ComponentSeconds)."""
    timer = ComponentTimer(system, preset)
    timer.sample(samples or preset.component_samples)
    return timer.medians()


def _vae_decode_seconds(vae, hw: tuple[int, int], repeats: int, first: bool = False) -> float:
    """One block's decode: the video's first (3 latent -> 9 pixel frames) or a later one (-> 12)."""
    latents = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=torch.Generator().manual_seed(3))
    vae.reset()
    if not first:
        vae.decode(latents)
    state = vae.snapshot()

    def decode():
        vae.restore(state)
        return vae.decode(latents)

    return _median_seconds(decode, vae.device, repeats)


class _DiTPasses:
    """A model's context pass and denoising passes, called as BlockRunner calls them."""

    def __init__(self, model, text: torch.Tensor, hw: tuple[int, int]):
        self.model, self.device, self.dtype = model, model.device, model.compute_dtype
        self.text = model.encode_text(text.to(self.device, self.dtype))
        self.cache = model.new_cache(1, 2 * FRAMES_PER_BLOCK, model.cfg.frame_tokens(*hw))
        plan = NoisePlan(seed=1, num_blocks=2, latent_shape=(16,) + hw)
        self.noises, self.x_start = plan.step_noises(1), plan.block_noise(1).to(self.device)
        self.context = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=torch.Generator().manual_seed(2))

    def flow(self, slot: int):
        def call(x, t):
            timestep = torch.full(x.shape[:2], float(t), device=self.device)
            return self.model(x.to(self.device, self.dtype), timestep, self.text, self.cache,
                              slot=slot, rope_start=slot).float()
        return call

    def context_pass(self):
        return self.flow(0)(self.context, 0.0)

    def block(self, first: bool = False):
        """The denoising passes; after a context pass (slots 0-2 filled) unless ``first``."""
        return denoise_block(self.flow(0 if first else FRAMES_PER_BLOCK), self.noises, self.x_start)


def _block_seconds(model, text: torch.Tensor, hw: tuple[int, int], repeats: int) -> float:
    passes = _DiTPasses(model, text, hw)
    passes.context_pass()
    return _median_seconds(passes.block, passes.device, repeats)


# ---------------------------------------------------------------------- runs

@dataclass(frozen=True)
class RunSpec:
    mode: str
    accept_rate: float | None = None   # nominal; None for the baselines
    hybrid_k: int = 0
    skip: str = "none"                 # verification skipping policy (uniform: every 2nd block)

    @property
    def key(self) -> str:
        if self.mode != "sdvg":
            return self.mode
        return f"sdvg a={self.accept_rate:g} k={self.hybrid_k}" + ("" if self.skip == "none" else f" {self.skip}")


def run_specs(preset: Preset, accept_rates=None, hybrid_ks=None, skip_rates=None) -> list[RunSpec]:
    rates = preset.accept_rates if accept_rates is None else accept_rates
    ks = preset.hybrid_ks if hybrid_ks is None else hybrid_ks
    skips = preset.skip_rates if skip_rates is None else skip_rates
    return ([RunSpec("target_only"), RunSpec("draft_only")] +
            [RunSpec("sdvg", float(a), int(k)) for a in rates for k in ks] +
            [RunSpec("sdvg", float(a), 0, "uniform") for a in skips])


def accept_patterns(rate: float, scored_blocks: int, videos: int) -> list[tuple[bool, ...]]:
    """Per-video decisions whose pooled accept rate is round(rate * all decisions) / all decisions.

    Decisions are spread evenly over the concatenation of all videos (error diffusion), so
    no video is more than one accepted block away from any other.
    """
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"accept rate {rate} is outside [0, 1].")
    total = scored_blocks * videos
    accepted = round(rate * total)
    flat = [(j + 1) * accepted // total > j * accepted // total for j in range(total)]
    return [tuple(flat[v * scored_blocks:(v + 1) * scored_blocks]) for v in range(videos)]


@dataclass
class VideoTiming:
    seconds: float
    accepted: int
    scored: int
    model_calls: dict
    stage_seconds: dict
    peak_memory_mb: float | None
    skipped: int = 0


def run_video(system: System, preset: Preset, spec: RunSpec, pattern: tuple[bool, ...] | None,
              memory: PeakMemory, seed: int = 42) -> VideoTiming:
    """One whole video of a configuration, timed from the first model call to the frames."""
    from .speculative import SDVGConfig, SDVGSession

    config = SDVGConfig(mode=spec.mode, tau=0.0, width=preset.width, height=preset.height,
                        num_blocks=preset.num_blocks, seed=seed, hybrid_k=spec.hybrid_k,
                        skip=spec.skip, accept_pattern=pattern)
    models = config.models  # baselines run only their own model
    session = SDVGSession(
        drafter=system.drafter if "drafter" in models else None,
        target=system.target if "target" in models else None,
        vae=system.vae, scorer=system.scorer if "router" in models else None,
        text=system.text, prompt=system.prompt, config=config)
    device = system.vae.device
    memory.reset()
    synchronize(device)
    start = time.perf_counter()
    result = session.run()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = memory.peak_mb()
    session.release()
    summary = result.summary
    return VideoTiming(seconds, summary["decisions"]["accepted"], summary["scored_blocks"],
                       summary["model_calls"], summary["seconds"], peak, summary["decisions"]["skipped"])


def pooled_seconds(videos: list[VideoTiming]) -> float:
    """Median per accepted-block count, weighted by the count's share of the videos."""
    groups: dict[int, list[float]] = {}
    for v in videos:
        groups.setdefault(v.accepted, []).append(v.seconds)
    return sum(len(s) / len(videos) * statistics.median(s) for s in groups.values())


def run_all(system: System, preset: Preset, specs: list[RunSpec], repeats: int,
            timer: ComponentTimer | None = None, component_samples: int = 1,
            log: Callable[[str], None] = print) -> dict[RunSpec, list[VideoTiming]]:
    """Every spec once per repeat (target-only twice), in an order rotated by one each
    repeat; the component timer, if given, takes its samples at its place in the rotation."""
    scored = preset.num_blocks - 1
    patterns = {s: accept_patterns(s.accept_rate, scored, repeats) if s.mode == "sdvg" else [None] * repeats
                for s in specs}
    memory = PeakMemory(system.vae.device)
    # Warm-up video (not recorded): first calls allocate caches and pick kernels.
    warm = next((s for s in specs if s.mode == "sdvg"), specs[0])
    run_video(system, preset, warm, patterns[warm][0], memory)
    timings: dict[RunSpec, list[VideoTiming]] = {s: [] for s in specs}
    slots = list(specs) + ([None] if timer is not None else [])
    # The target-only baseline divides every speedup: it runs twice per repeat, half a rotation
    # apart, so one slow phase of the machine cannot skew all speedups at once.
    baseline = next((s for s in specs if s.mode == "target_only"), None)
    if baseline is not None:
        slots.insert(len(slots) // 2 + 1, baseline)
    for r in range(repeats):
        order = slots[r % len(slots):] + slots[:r % len(slots)]
        for spec in order:
            if spec is None:
                timer.sample(component_samples)
                log(f"  repeat {r + 1}/{repeats}  components sampled")
                continue
            v = run_video(system, preset, spec, patterns[spec][r], memory)
            timings[spec].append(v)
            log(f"  repeat {r + 1}/{repeats}  {spec.key:<18} {v.seconds:8.3f} s")
    return timings


def summarize_runs(timings: dict[RunSpec, list[VideoTiming]], components: ComponentSeconds,
                   num_blocks: int) -> list[dict]:
    """The JSON ``runs``: measured seconds and speedup next to the cost model's prediction."""
    baseline = next(pooled_seconds(v) for s, v in timings.items() if s.mode == "target_only")
    runs = []
    for spec, videos in timings.items():
        seconds = pooled_seconds(videos)
        scored = sum(v.scored for v in videos)
        skipped = statistics.fmean(v.skipped for v in videos)
        # Over the scored blocks (the pattern decides those); skipped blocks are counted apart.
        rate = (sum(v.accepted for v in videos) / scored
                if spec.mode == "sdvg" and scored else None)
        predicted = video_seconds(components, spec.mode, num_blocks=num_blocks, accept_rate=rate,
                                  hybrid_k=spec.hybrid_k, skipped=skipped)
        bound = predicted_speedup(components, spec.mode, num_blocks=num_blocks, accept_rate=rate,
                                  hybrid_k=spec.hybrid_k, skipped=skipped)
        speedup = baseline / seconds
        stages = {k: statistics.fmean(v.stage_seconds.get(k, 0.0) for v in videos) for k in COMPONENTS}
        peaks = [v.peak_memory_mb for v in videos if v.peak_memory_mb is not None]
        runs.append({
            "mode": spec.mode,
            "accept_rate": rate,
            "accept_rate_nominal": spec.accept_rate,
            "hybrid_k": spec.hybrid_k,
            "skip": spec.skip,
            "skipped_blocks": skipped,
            "seconds_per_video": seconds,
            "seconds_each": [v.seconds for v in videos],
            "speedup": speedup,
            "bound": bound,
            "fraction_of_bound": speedup / bound,
            "predicted_seconds": predicted,
            "model_calls": {k: statistics.fmean(v.model_calls.get(k, 0) for v in videos) for k in COMPONENTS},
            "stage_seconds": stages,
            "overhead_seconds": statistics.fmean(v.seconds for v in videos) - sum(stages.values()),
            "peak_memory_mb": max(peaks) if peaks else None,
        })
    return runs


def check_targets(runs: list[dict]) -> dict:
    """The issue's targets: every sdvg run >= 0.9 of its bound; 1.7x (k=0) / 2.1x (k=3) at 0.73."""
    sdvg = [r for r in runs if r["mode"] == "sdvg"]
    below = [f"a={r['accept_rate']:.3f} k={r['hybrid_k']}: {r['fraction_of_bound']:.2f}"
             for r in sdvg if r["fraction_of_bound"] < TARGET_BOUND_FRACTION]
    result = {"bound_fraction_required": TARGET_BOUND_FRACTION,
              "all_within_bound_fraction": not below, "below_bound_fraction": below, "speedup_at_0.73": {}}
    for k, required in SPEEDUP_TARGETS.items():
        run = next((r for r in sdvg if r["hybrid_k"] == k and r["accept_rate_nominal"] == TARGET_ACCEPT_RATE
                    and r.get("skip", "none") == "none"),
                   None)
        if run is not None:
            result["speedup_at_0.73"][f"k={k}"] = {"required": required, "measured": run["speedup"],
                                                    "accept_rate_run": run["accept_rate"],
                                                    "met": run["speedup"] >= required}
    return result


# ---------------------------------------------------------------------- outputs

def write_markdown(result: dict, path: Path) -> None:
    lines = [f"# SDVG benchmark, preset `{result['preset']}`", "",
             f"{result['device']}; {result['date']}; {result['width']}x{result['height']}, "
             f"{result['num_blocks']} blocks per video, {result['repeats']} interleaved repeats.", "",
             "| mode | accept rate (asked) | k | s / video | speedup | bound | of bound | "
             "drafter / target / decode / router calls | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rate = "-" if r["accept_rate"] is None else f"{r['accept_rate']:.3f} ({r['accept_rate_nominal']:g})"
        c = r["model_calls"]
        calls = f"{c['drafter']:g} / {c['target']:g} / {c['vae_decode']:g} / {c['router']:g}"
        peak = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        mode = r["mode"] + (f" + skip {r['skip']} ({r['skipped_blocks']:g} blocks)" if r.get("skip", "none") != "none" else "")
        lines.append(f"| {mode} | {rate} | {r['hybrid_k'] if r['mode'] == 'sdvg' else '-'} | "
                     f"{r['seconds_per_video']:.3f} | {r['speedup']:.2f}x | {r['bound']:.2f}x | "
                     f"{r['fraction_of_bound']:.0%} | {calls} | {peak} |")
    lines += ["", "Paper (2x RTX A6000, real weights): 1.59x at 73.1% accepted, 2.05x at 87.5%.", "",
              "## Components (median seconds per block)", "",
              "| component | seconds | / target block | real system (FLOPs) |", "|---|---|---|---|"]
    ratios = result["component_ratios"]
    for k, v in result["component_seconds"].items():
        lines.append(f"| {k} | {v:.4f} | {ratios['measured'][k]:.4f} | {ratios['real_flops'][k]:.4f} |")
    t = result["targets"]
    lines += ["", "## Targets", "",
              f"- every sdvg run >= {t['bound_fraction_required']:.0%} of its bound: "
              f"{'yes' if t['all_within_bound_fraction'] else 'no: ' + ', '.join(t['below_bound_fraction'])}"]
    for k, v in t["speedup_at_0.73"].items():
        lines.append(f"- {k} at accept rate 0.73 (run at {v['accept_rate_run']:.3f}): {v['measured']:.2f}x, "
                     f"required {v['required']}x: {'met' if v['met'] else 'MISSED'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_speedups(result: dict, path: Path) -> None:
    """Speedup vs accept rate: the bound's curves, the measured points, the paper's points."""
    components = ComponentSeconds.from_dict(result["component_seconds"])
    n = result["num_blocks"]
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    grid = [i / 50 for i in range(51)]
    series = []
    ks = sorted({r["hybrid_k"] for r in result["runs"] if r["mode"] == "sdvg"})
    for colour, k in zip(colours, ks):
        curve = [(a, predicted_speedup(components, num_blocks=n, accept_rate=a, hybrid_k=k)) for a in grid]
        series.append(Series(f"bound, k={k}", curve, colour=colour))
        points = [(r["accept_rate"], r["speedup"]) for r in result["runs"]
                  if r["mode"] == "sdvg" and r["hybrid_k"] == k and r.get("skip", "none") == "none"]
        series.append(Series(f"measured, k={k}", points, colour=colour, line=False, marker="o"))
    series.append(Series("paper (2x A6000, real weights, reference code)", [(a, s) for a, s in PAPER_POINTS],
                         colour=(0, 0, 0), line=False, marker="s",
                         notes=[f"{s:.2f}x at {a:.1%}" for a, s in PAPER_POINTS]))
    hlines = [(1.0, "target-only")]
    draft = next((r for r in result["runs"] if r["mode"] == "draft_only"), None)
    if draft:
        hlines.append((draft["speedup"], f"draft-only {draft['speedup']:.2f}x"))
    panel = Panel(f"speedup over target-only ({result['preset']} preset)", series, hlines=hlines)
    draw_chart([panel], xlabel="accept rate (scored blocks)", x_range=(0.0, 1.0),
               title=f"{result['device']}").save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default="bench-results", help="output folder")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: the preset's)")
    parser.add_argument("--component-samples", type=int, default=None,
                        help="timings of every component per repeat (default: the preset's)")
    parser.add_argument("--accept-rates", type=float, nargs="+", default=None)
    parser.add_argument("--hybrid-k", type=int, nargs="+", default=None)
    parser.add_argument("--blocks", type=int, default=None, help="blocks per video (default: the preset's, 9)")


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preset = get_preset(args.preset)
    threads = torch.get_num_threads()
    if preset.threads:
        torch.set_num_threads(preset.threads)
    try:
        return _run(args, preset)
    finally:
        torch.set_num_threads(threads)


def _run(args, preset: Preset) -> int:
    if args.blocks:
        preset = replace(preset, num_blocks=args.blocks)
    repeats = args.repeats or preset.repeats
    if repeats < 1 or preset.num_blocks < 2:
        raise InputError("--repeats must be >= 1 and --blocks >= 2 (block 0 is never scored).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    calibration = None
    if preset.calibrate is not None:
        print("[bench] calibrating model depths")
        preset, calibration = calibrate(preset)
    print(f"[bench] preset {preset.name}: building models on {preset.device}")
    system = build_system(preset)
    print("[bench] warming up components")
    timer = ComponentTimer(system, preset)
    specs = run_specs(preset, args.accept_rates, args.hybrid_k)
    print(f"[bench] {len(specs)} configurations + component timings x {repeats} repeats, interleaved")
    timings = run_all(system, preset, specs, repeats, timer, args.component_samples or preset.component_samples)
    measured = timer.medians()
    components = ComponentSeconds.from_dict(measured)
    for k, v in measured.items():
        print(f"  {k:<20} {v:.4f} s")
    runs = summarize_runs(timings, components, preset.num_blocks)
    reference = reference_ratios()
    result = {
        "preset": preset.name,
        "device": describe_device(preset.device),
        "date": datetime.date.today().isoformat(),
        "note": preset.note,
        "width": preset.width, "height": preset.height, "num_blocks": preset.num_blocks,
        "dtype": str(preset.dtype).replace("torch.", ""), "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "models": {"drafter": asdict(preset.drafter), "target": asdict(preset.target),
                   "vae_base_dim": preset.vae_base_dim, "router": asdict(preset.router)},
        "calibration": calibration,
        "component_seconds": measured,
        "component_seconds_samples": timer.samples,
        "component_ratios": {
            "measured": {k: v / measured["target_block"] for k, v in measured.items()},
            "real_flops": {k: reference[k] for k in measured},
        },
        "runs": runs,
        "targets": check_targets(runs),
        "paper_points": [{"accept_rate": a, "speedup": s} for a, s in PAPER_POINTS],
        "bench_seconds": None,
    }
    result["bench_seconds"] = time.perf_counter() - started
    json_path, md_path, png_path = (out / f"{preset.name}.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_markdown(result, md_path)
    plot_speedups(result, png_path)
    print(md_path.read_text(encoding="utf-8"))
    print(f"[bench] {result['bench_seconds']:.0f} s; wrote {json_path}, {md_path}, {png_path}")
    return 0


# ---------------------------------------------------------------------- a small Pillow chart

@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: tuple[int, int, int] = (31, 119, 180)
    line: bool = True
    marker: str | None = None      # "o" (disc) or "s" (square)
    notes: list[str] | None = None  # a text beside each point, in the order of ``points``


@dataclass
class Panel:
    title: str
    series: list[Series]
    y_range: tuple[float, float] | None = None
    hlines: list[tuple[float, str]] = field(default_factory=list)
    vlines: list[tuple[float, str]] = field(default_factory=list)
    legend: str = "left"           # corner of the legend: "left" or "right" (top)


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_chart(panels: list[Panel], xlabel: str, title: str = "", width: int = 960,
               panel_height: int = 420, x_range: tuple[float, float] | None = None):
    """Line/marker panels stacked over a shared x axis, as a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:
            return ImageFont.load_default()

    small, regular = font(13), font(15)
    top, left, right, gap = (34 if title else 10), 70, 20, 48
    height = top + len(panels) * (panel_height + gap) + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((left, 8), title, fill=(30, 30, 30), font=regular)
    xs = [x for p in panels for s in p.series for x, _ in s.points] + [x for p in panels for x, _ in p.vlines]
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    for index, panel in enumerate(panels):
        box_top = top + index * (panel_height + gap) + 22
        box = (left, box_top, width - right, box_top + panel_height - 40)
        ys = [y for s in panel.series for _, y in s.points] + [y for y, _ in panel.hlines]
        y0, y1 = panel.y_range or (min(ys + [0.0]), max(ys) * 1.08 if ys else 1.0)
        if y1 <= y0:
            y1 = y0 + 1.0

        def px(x, y):
            return (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
                    box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))

        draw.text((left, box_top - 20), panel.title, fill=(30, 30, 30), font=regular)
        for ty in _nice_ticks(y0, y1):
            _, yy = px(x0, ty)
            draw.line([(box[0], yy), (box[2], yy)], fill=(232, 232, 232))
            draw.text((box[0] - 8, yy), f"{ty:g}", fill=(60, 60, 60), font=small, anchor="rm")
        for tx in _nice_ticks(x0, x1, 10):
            xx, _ = px(tx, y0)
            draw.line([(xx, box[1]), (xx, box[3])], fill=(240, 240, 240))
            draw.text((xx, box[3] + 6), f"{tx:g}", fill=(60, 60, 60), font=small, anchor="mt")
        draw.rectangle(box, outline=(90, 90, 90))
        for y, label in panel.hlines:
            if y0 <= y <= y1:
                _, yy = px(x0, y)
                draw.line([(box[0], yy), (box[2], yy)], fill=(120, 120, 120), width=1)
                draw.text((box[2] - 4, yy - 3), label, fill=(90, 90, 90), font=small, anchor="rb")
        for x, label in panel.vlines:
            if x0 <= x <= x1:
                xx, _ = px(x, y0)
                draw.line([(xx, box[1]), (xx, box[3])], fill=(120, 120, 120), width=1)
                draw.text((xx + 4, box[1] + 4), label, fill=(90, 90, 90), font=small)
        legend_y = box[1] + 8
        legend_x = box[0] if panel.legend == "left" else box[2] - 40 - max(
            (draw.textlength(s.label, font=small) for s in panel.series), default=0)
        for s in panel.series:
            for (x, y), note in zip(s.points, s.notes or ()):
                if x0 <= x <= x1 and y0 <= y <= y1:
                    draw.text((px(x, y)[0] + 8, px(x, y)[1] + 2), note, fill=s.colour, font=small, anchor="lt")
            points = [px(x, y) for x, y in sorted(s.points) if x0 <= x <= x1 and y0 <= y <= y1]
            if s.line and len(points) > 1:
                draw.line(points, fill=s.colour, width=2)
            for x, y in points if s.marker else ():
                shape = draw.ellipse if s.marker == "o" else draw.rectangle
                shape([x - 4, y - 4, x + 4, y + 4], fill=s.colour, outline="white")
            if s.line:
                draw.line([(legend_x + 10, legend_y + 7), (legend_x + 30, legend_y + 7)], fill=s.colour, width=2)
            if s.marker:
                shape = draw.ellipse if s.marker == "o" else draw.rectangle
                shape([legend_x + 16, legend_y + 3, legend_x + 24, legend_y + 11], fill=s.colour)
            draw.text((legend_x + 36, legend_y), s.label, fill=(30, 30, 30), font=small)
            legend_y += 18
        draw.text(((box[0] + box[2]) / 2, box[3] + 24), xlabel, fill=(30, 30, 30), font=small, anchor="mt")
    return image
