"""Benchmark: SDVG against target-only and draft-only, next to the cost model's bound.

In ONE process, interleaved (every repeat runs every configuration once, in a rotating
order, so machine drift hits all of them alike), it times whole videos of

* ``target_only`` and ``draft_only`` (each running only the model calls it needs);
* ``sdvg`` at several forced accept rates, each with hybrid k = 0 and k = 3.

Each component is also timed alone, its samples taken at their own place in the same
rotation; the cost model (sdvg_core/costmodel.py) turns the medians into the ``bound`` of
every run, and the ``projected`` speedup is the cost model at the real system's proportions
times the median fraction of its bound the runs reached (runs.add_projections). Presets and how their sizes were chosen: docs/bench-derivation.md.

Writes ``<out>/<preset>.json``, ``<out>/<preset>.md`` and ``<out>/<preset>.png``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..costmodel import PAPER_POINTS, ComponentSeconds, reference_ratios
from ..errors import InputError
from .components import ComponentTimer, PeakMemory, build_system, calibrate, describe_device, ratios
from .presets import PRESETS, Calibration, Preset, get_preset
from .report import plot_speedups, write_markdown
from .runs import (RunSpec, VideoTiming, accept_patterns, add_projections, check_targets, pooled_seconds, run_all,
                   run_specs, summarize_runs)

__all__ = ["PRESETS", "Calibration", "ComponentTimer", "PeakMemory", "Preset", "RunSpec", "VideoTiming",
           "accept_patterns", "add_projections", "build_system", "check_targets", "get_preset", "main", "pooled_seconds"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu: calibrated tiny models (make bench); gpu: the real models on a CUDA "
                             "GPU (make bench-gpu); smoke, gpu-smoke: the cpu and gpu code paths on tiny "
                             "models in seconds (tests)")
    parser.add_argument("--out", default="bench-results", help="output folder")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: the preset's)")
    parser.add_argument("--component-samples", type=int, default=None,
                        help="timings of every component per repeat (default: the preset's)")
    parser.add_argument("--accept-rates", type=float, nargs="+", default=None,
                        help="forced accept rates of the sdvg runs (default: the preset's)")
    parser.add_argument("--hybrid-k", type=int, nargs="+", default=None,
                        help="hybrid resume steps of the sdvg runs (default: the preset's)")
    parser.add_argument("--blocks", type=int, default=None, help="blocks per video (default: the preset's, 9)")


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preset = get_preset(args.preset)
    threads = torch.get_num_threads()
    if preset.threads:
        torch.set_num_threads(preset.threads)
    gc.freeze()  # what exists now is never garbage: PeakMemory's collections need not walk it
    try:
        return _run(args, preset)
    finally:
        gc.unfreeze()
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
    device = describe_device(preset.device)
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
    measured, component_samples = timer.medians(), timer.samples
    for k, v in measured.items():
        print(f"  {k:<20} {v:.4f} s")
    runs = summarize_runs(timings, ComponentSeconds.from_dict(measured), preset.num_blocks)
    print(f"[bench] runs done after {time.perf_counter() - started:.0f} s")
    gpu_checks = {}
    if preset.gpu_checks:
        from ..memory import release
        from .gpu import add_planned_peaks, capped_runs, preprocessing_check

        add_planned_peaks(preset, runs)
        del system, timer
        release(preset.device)
        print("[bench] router preprocessing: ImageReward's PIL path against the on-device path")
        gpu_checks["router_preprocessing"] = preprocessing_check(preset)
        print(f"[bench] SDVG with an fp8 target under a {preset.memory_cap_gib:g} GiB cap")
        gpu_checks["capped_runs"] = capped_runs(preset)
    reference = reference_ratios()
    result = {
        "preset": preset.name,
        "device": device,
        "date": datetime.date.today().isoformat(),
        "note": preset.note,
        "width": preset.width, "height": preset.height, "num_blocks": preset.num_blocks,
        "dtype": str(preset.dtype).replace("torch.", ""), "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "models": {"drafter": asdict(preset.drafter), "target": asdict(preset.target),
                   "vae_base_dim": preset.vae_base_dim, "router": asdict(preset.router)},
        "calibration": calibration,
        "component_seconds": measured,
        "component_seconds_samples": component_samples,
        "component_ratios": {"measured": ratios(measured), "real_flops": {k: reference[k] for k in measured}},
        "runs": runs,
        "efficiency": add_projections(runs),
        "targets": check_targets(runs),
        "paper_points": [{"accept_rate": a, "speedup": s} for a, s in PAPER_POINTS],
        **gpu_checks,
    }
    result["bench_seconds"] = time.perf_counter() - started
    json_path, md_path, png_path = (out / f"{preset.name}.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_markdown(result, md_path)
    plot_speedups(result, png_path)
    print(md_path.read_text(encoding="utf-8"))
    print(f"[bench] {result['bench_seconds']:.0f} s; wrote {json_path}, {md_path}, {png_path}")
    return 0
