"""Timing each component alone, peak memory, and the CPU preset's depth calibration.

Components are called exactly as the block loop calls them: DiT passes through
``BlockRunner`` (context pass, denoising passes), the decode and anchor encode through the
streaming VAE, the router's scorer with its preprocessing. Keys are those of
``costmodel.ComponentSeconds``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from ..costmodel import reference_ratios
from ..random_models import System, random_system, random_vae, random_wan
from ..runner import BlockRunner
from ..schedule import FRAMES_PER_BLOCK, NoisePlan
from ..stats import Meter, synchronize
from ..wan import WanConfig
from .presets import Preset

PROMPT = "a red fox running through fresh snow at golden hour, cinematic"
CALIBRATED = ("drafter_block", "vae_decode_block")  # the proportions calibration holds to the real ones


def build_system(preset: Preset, *, device: str | None = None, seed: int = 0,
                 target_linear_dtype: torch.dtype | None = None) -> System:
    """The preset's models with random weights. ``device="meta"`` builds shapes only (no memory);
    ``target_linear_dtype`` (float8_e4m3fn) gives an fp8 target."""
    from ..errors import SDVGError

    device = device or preset.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SDVGError(f"preset {preset.name!r} needs a CUDA GPU and torch sees none; "
                        "run `--preset cpu` on this machine.")
    text = 0.1 * torch.randn(1, preset.text_tokens, preset.target.text_dim,
                             generator=torch.Generator().manual_seed(seed + 1))
    return random_system(preset.drafter, preset.target, vae_base_dim=preset.vae_base_dim, router=preset.router,
                         text=text, prompt=PROMPT, dtype=preset.dtype, device=device, seed=seed,
                         target_linear_dtype=target_linear_dtype)


def samples(fn: Callable[[], object], device, n: int) -> list[float]:
    """Wall-clock seconds of ``n`` calls, each waited for on a GPU."""
    out = []
    for _ in range(n):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out


def median_seconds(fn: Callable[[], object], device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(samples(fn, device, repeats))


class DiTPasses:
    """A model's context pass and denoising passes, through the runner the block loop uses."""

    def __init__(self, role: str, model, text: torch.Tensor, hw: tuple[int, int]):
        self.runner = BlockRunner(role, model, [text], hw)
        self.device = model.device
        self.meter = Meter()
        plan = NoisePlan(seed=1, num_blocks=2, latent_shape=(16,) + hw)
        self.noises, self.x_start = plan.step_noises(1), plan.block_noise(1)
        self.context = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=torch.Generator().manual_seed(2))

    def context_pass(self):
        return self.runner.context_pass(1, self.context, self.meter)

    def block(self, first: bool = False):
        """The 5 denoising passes; after a context pass (slots 0-2 filled) unless ``first``."""
        return self.runner.denoise(0 if first else 1, 0 if first else FRAMES_PER_BLOCK, self.noises,
                                   self.x_start, self.meter)


class ComponentTimer:
    """Times each component alone, a few samples at a time, so the samples can be taken
    between the videos of every repeat (drift then hits the bound as it hits the runs).
    Every component is warmed up once at construction."""

    def __init__(self, system: System, preset: Preset):
        hw = preset.latent_hw
        self.device = system.vae.device
        vae = system.vae
        latents = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=torch.Generator().manual_seed(3))
        vae.reset()
        fresh = vae.snapshot()
        vae.decode(latents)
        started = vae.snapshot()
        pixels = vae.decode(latents).float()
        vae.reset()

        def decode(state):
            def call():
                vae.restore(state)
                return vae.decode(latents)
            return call

        self._calls: dict[str, Callable[[], object]] = {}
        for role in ("drafter", "target"):
            passes = DiTPasses(role, getattr(system, role), system.text, hw)
            self._calls[f"{role}_context"] = passes.context_pass  # fills slots 0-2 for the next
            self._calls[f"{role}_block"] = passes.block
            self._calls[f"{role}_block_first"] = lambda p=passes: p.block(first=True)
        self._calls["vae_decode_first"] = decode(fresh)
        self._calls["vae_decode_block"] = decode(started)
        self._calls["vae_encode_anchor"] = lambda: vae.encode_frame(pixels[:, -1])
        self._calls["router_block"] = lambda: system.scorer.score(pixels[0], system.prompt,
                                                                  exact_preprocess=preset.exact_preprocess)
        self._vae = vae
        self.samples: dict[str, list[float]] = {k: [] for k in self._calls}
        self.sample(1)
        self.samples = {k: [] for k in self._calls}  # the warm-up does not count

    def sample(self, n: int = 1) -> None:
        """``n`` more timings of every component (the context pass first: it fills the cache)."""
        for key, call in self._calls.items():
            self.samples[key] += samples(call, self.device, n)
        self._vae.reset()

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items()}


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    """Each component over the target's 5-pass block."""
    return {k: v / seconds["target_block"] for k, v in seconds.items()}


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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__}, threads: "
            f"{torch.get_num_threads()}, load average {load:.2f} at start")


# ---------------------------------------------------------------------- calibration

def calibrate(preset: Preset, log: Callable[[str], None] = print) -> tuple[Preset, dict]:
    """The preset with DiT depths whose measured proportions match the real system's (see
    ``Calibration``): first sized from single-model timings, then corrected on the built system."""
    c = preset.calibrate
    text = torch.zeros(1, preset.text_tokens, preset.target.text_dim)
    vae_seconds = _vae_decode_seconds(random_vae(preset.vae_base_dim, dtype=preset.dtype, device=preset.device),
                                      preset.latent_hw, repeats=3)
    low, high = c.target_block_range
    goal = min(max(vae_seconds / c.vae_ratio, low), high)
    target_layers, target_seconds = _layers_for(preset.target, goal, preset, text, c.max_layers)
    drafter_layers, _ = _layers_for(preset.drafter, c.drafter_ratio * target_seconds, preset, text, c.max_layers)
    log(f"  VAE decode {vae_seconds:.3f} s/block -> target {target_layers} layers, drafter {drafter_layers} layers")
    rounds = []
    for _ in range(c.rounds):
        trial = replace(preset, target=replace(preset.target, num_layers=target_layers),
                        drafter=replace(preset.drafter, num_layers=drafter_layers))
        timer = ComponentTimer(build_system(trial), trial)
        timer.sample(3)
        seconds = timer.medians()
        measured = ratios(seconds)
        rounds.append({"target_layers": target_layers, "drafter_layers": drafter_layers,
                       "deviation": _deviation(measured), **{k: measured[k] for k in CALIBRATED}})
        log(f"  target {target_layers} layers, drafter {drafter_layers}: drafter/target "
            f"{measured['drafter_block']:.3f}, vae/target {measured['vae_decode_block']:.3f} "
            f"(goals {c.drafter_ratio:.3f}, {c.vae_ratio:.3f})")
        if rounds[-1]["deviation"] <= c.tolerance:
            break
        # A block's cost is close to linear in depth: rescale each depth by how far it is off.
        per_target_layer = seconds["target_block"] / target_layers
        target_layers = _clamp(min(round(seconds["vae_decode_block"] / c.vae_ratio / per_target_layer),
                                   int(high / per_target_layer)), c.max_layers)
        per_drafter_layer = seconds["drafter_block"] / drafter_layers
        drafter_layers = _clamp(round(c.drafter_ratio * target_layers * per_target_layer / per_drafter_layer),
                                c.max_layers)
    best = min(rounds, key=lambda r: r["deviation"])
    info = {"vae_decode_block": vae_seconds, "target_block_goal": goal, "rounds": rounds,
            "target_layers": best["target_layers"], "drafter_layers": best["drafter_layers"],
            "within_tolerance": best["deviation"] <= c.tolerance, "tolerance": c.tolerance}
    return replace(preset, target=replace(preset.target, num_layers=best["target_layers"]),
                   drafter=replace(preset.drafter, num_layers=best["drafter_layers"])), info


def _deviation(measured: dict[str, float]) -> float:
    """The largest relative distance of a calibrated proportion from the real system's."""
    real = reference_ratios()
    return max(abs(measured[k] / real[k] - 1) for k in CALIBRATED)


def _clamp(layers: int, max_layers: int) -> int:
    return min(max(layers, 1), max_layers)


def _layers_for(cfg: WanConfig, goal: float, preset: Preset, text: torch.Tensor,
                max_layers: int) -> tuple[int, float]:
    """Layers whose 5-pass block costs ``goal`` seconds (time 1 and 3 layers, fit a + b * layers),
    and the seconds the fit predicts at them."""
    one, three = (_block_seconds(random_wan(replace(cfg, num_layers=n), dtype=preset.dtype, device=preset.device),
                                 text, preset.latent_hw, repeats=3) for n in (1, 3))
    per_layer = max((three - one) / 2, 1e-9)
    fixed = one - per_layer
    layers = _clamp(round((goal - fixed) / per_layer), max_layers)
    return layers, fixed + per_layer * layers


def _vae_decode_seconds(vae, hw: tuple[int, int], repeats: int) -> float:
    """One later block's decode (3 latent frames -> 12 pixel frames)."""
    latents = torch.randn(1, FRAMES_PER_BLOCK, 16, *hw, generator=torch.Generator().manual_seed(3))
    vae.reset()
    vae.decode(latents)
    state = vae.snapshot()

    def decode():
        vae.restore(state)
        return vae.decode(latents)

    return median_seconds(decode, vae.device, repeats)


def _block_seconds(model, text: torch.Tensor, hw: tuple[int, int], repeats: int) -> float:
    passes = DiTPasses("target", model, text, hw)
    passes.context_pass()
    return median_seconds(passes.block, passes.device, repeats)
