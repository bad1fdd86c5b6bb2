"""What the GPU benchmark adds to the runs: the memory plan against each run's measured peak,
the router's two preprocessing paths, and SDVG with an fp8 target under a memory cap (a 24 GB
card), which completes or is refused by the memory plan before anything is built.

``make bench-gpu`` (``--preset gpu``) runs it on a CUDA GPU; ``--preset gpu-smoke`` runs the same
code on tiny models on the CPU (the test suite), where no cap can be enforced.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import torch

from ..config import SDVGConfig
from ..errors import InputError
from ..memory import GiB, free_bytes, release, session_plan
from .components import PeakMemory, build_system
from .presets import Preset
from .runs import RunSpec, accept_patterns, run_video

FP8 = torch.float8_e4m3fn
CAPPED_RUN = RunSpec("sdvg", 0.73, 0)


def planned_peak_mb(preset: Preset, mode: str, *, width: int | None = None, height: int | None = None,
                    target_weights: torch.dtype | None = None) -> float:
    """The memory plan's prediction of a benchmark run's peak (no headroom): the mode's models'
    caches and largest transient, and the weights of every model the benchmark holds (its
    baselines keep the other models loaded). Real-size VAE and router: meaningful for ``gpu``."""
    def plan(mode):
        config = SDVGConfig(mode=mode, width=width or preset.width, height=height or preset.height)
        return config, session_plan(config, device=preset.device, compute_dtype=preset.dtype, drafter=preset.drafter,
                                    target=preset.target, target_weights=target_weights, vae_dtype=preset.dtype)

    config, run = plan(mode)
    _, every_model = plan("sdvg")
    idle = {f"{role} weights" for role in ("drafter", "target", "router") if role not in config.models}
    held = sum(line.bytes for line in every_model.lines if line.what in idle)
    return (run.resident + run.transient + held) / 2**20


def add_planned_peaks(preset: Preset, runs: list[dict]) -> None:
    for run in runs:
        run["planned_peak_mb"] = planned_peak_mb(preset, run["mode"])


@contextmanager
def memory_cap(cap: int, device: str):
    """``torch.cuda.set_per_process_memory_fraction`` at ``cap`` bytes for the block (a CPU: no cap)."""
    cuda = str(device).startswith("cuda")
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(cap / total, 1.0), device)
    try:
        yield cuda
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)


def capped_runs(preset: Preset, log=print) -> list[dict]:
    """SDVG (accept rate 0.73, k = 0) with an fp8 target at each of ``preset.capped_sizes`` under
    ``preset.memory_cap_gib``: the plan is checked against the cap first, as every run checks it
    against free memory; a refused size builds nothing."""
    cap = int(preset.memory_cap_gib * GiB)
    results = []
    for width, height in preset.capped_sizes:
        trial = replace(preset, width=width, height=height)
        config = SDVGConfig(mode="sdvg", width=width, height=height, num_blocks=preset.num_blocks)
        plan = session_plan(config, device=preset.device, compute_dtype=preset.dtype, drafter=preset.drafter,
                            target=preset.target, target_weights=FP8, vae_dtype=preset.dtype)
        entry = {"width": width, "height": height, "cap_gib": preset.memory_cap_gib,
                 "planned_gib": plan.total / GiB, "enforced": str(preset.device).startswith("cuda")}
        with memory_cap(cap, preset.device):
            free = free_bytes(preset.device)
            try:
                plan.check(cap if free is None else min(free, cap), what=f"SDVG with an fp8 target at {width}x{height}")
            except InputError as refusal:
                entry.update(outcome="refused by the memory plan", message=str(refusal))
                log(f"  {width}x{height} under {preset.memory_cap_gib:g} GiB: refused by the plan "
                    f"({plan.total / GiB:.1f} GiB needed)")
                results.append(entry)
                continue
            system = None
            try:
                started = time.perf_counter()
                system = build_system(trial, target_linear_dtype=FP8)
                entry["build_seconds"] = time.perf_counter() - started
                pattern = accept_patterns(CAPPED_RUN.accept_rate, preset.num_blocks - 1, 1)[0]
                video = run_video(system, trial, CAPPED_RUN, pattern, PeakMemory(preset.device))
                entry.update(outcome="completed", seconds=video.seconds, peak_memory_mb=video.peak_memory_mb,
                             planned_peak_mb=planned_peak_mb(preset, "sdvg", width=width, height=height,
                                                             target_weights=FP8),
                             accepted=video.accepted, scored=video.scored)
                log(f"  {width}x{height} under {preset.memory_cap_gib:g} GiB: completed in {video.seconds:.2f} s, "
                    f"peak {video.peak_memory_mb or 0:.0f} MiB (planned {entry['planned_peak_mb']:.0f})")
            except torch.cuda.OutOfMemoryError as error:
                entry.update(outcome="out of memory although the plan fitted", message=str(error)[:600])
                log(f"  {width}x{height}: OUT OF MEMORY although the plan fitted")
            finally:
                del system
                release(preset.device)
        results.append(entry)
    return results


def preprocessing_check(preset: Preset, log=print) -> dict:
    """The router's exact and on-device preprocessing on this device (bench/preprocess.py)."""
    from .preprocess import measure

    return measure(device=preset.device, width=preset.width, height=preset.height, size=preset.router, log=log)
