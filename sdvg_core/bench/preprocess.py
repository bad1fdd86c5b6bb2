"""The router's two preprocessing paths side by side: time and score difference.

``python -m sdvg_core.bench.preprocess [--device cuda] [--layers 24]`` scores the same 12-frame
blocks at 832x480 through ImageReward's exact PIL path (frames copied to the CPU, PIL bicubic
resize, crop, normalise) and through the on-device path (``preprocess_tensor``) on the real-size
BLIP ViT-L/16 + BERT-base with random weights at a trained scale, and prints

* the seconds of each preprocessing path alone and of the scorer's forward on its input;
* the largest score difference between the paths, next to the spread of the scores themselves
  (the decision compares the worst frame with tau, so a difference far below that spread moves
  the decision only for a block whose worst frame sits that close to tau).

``make bench-gpu`` runs the same measurement on the GPU. Results: README, "Router preprocessing".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..random_models import RouterSize, random_router
from ..router import frames_to_pil, preprocess_pil, preprocess_tensor
from .components import median_seconds

PROMPT = "a red fox running through fresh snow at golden hour, cinematic"
FRAMES = 12


def scene_blocks(height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Blocks of 12 frames in [-1, 1] with the statistics decoded video has: smooth gradients and
    shapes moving between frames, fine texture, and sensor-like noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(-1, 1, height).view(1, 1, height, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, 1, width)
    t = torch.arange(FRAMES, dtype=torch.float32).view(FRAMES, 1, 1, 1) / FRAMES
    phase = torch.rand(1, 3, 1, 1, generator=g) * 6.28
    smooth = 0.6 * torch.sin(3 * x + 2 * y + phase + 2 * t) * torch.cos(2 * y - x + t)
    disc = ((x - 0.5 * t).square() + y.square() < 0.2).float()
    scene = (smooth + 0.5 * disc).clamp(-1, 1)
    texture = F.interpolate(torch.rand(FRAMES, 3, height // 8, width // 8, generator=g) * 2 - 1,
                            size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.randn(FRAMES, 3, height, width, generator=g)
    return {"smooth scene": scene,
            "textured scene": (0.7 * scene + 0.3 * texture).clamp(-1, 1),
            "noisy scene": (scene + 0.1 * noise).clamp(-1, 1)}


def _timed(fn, device, repeats: int) -> tuple[float, object]:
    """(median seconds of ``repeats`` calls after a warm-up call, the warm-up's output)."""
    out = fn()
    return median_seconds(fn, device, repeats, warmup=0), out


def measure(*, device="cpu", width: int = 832, height: int = 480, size: RouterSize = RouterSize(),
            repeats: int = 3, log=print) -> dict:
    """Times and score differences of the two paths (see the module docstring)."""
    device = torch.device(device)
    scorer = random_router(size, device=device, seed=0)
    tokens = scorer.encode_prompt(PROMPT)
    result = {"device": str(device), "width": width, "height": height, "frames": FRAMES,
              "vision_layers": size.vision_layers, "blocks": {}}
    exact_times, device_times, forward_times = [], [], []
    for name, frames in scene_blocks(height, width).items():
        frames = frames.to(device)
        t_exact, exact = _timed(lambda: preprocess_pil(frames_to_pil(frames)), device, repeats)
        t_device, fast = _timed(lambda: preprocess_tensor(frames), device, repeats)
        t_forward, scores_exact = _timed(lambda: scorer.score_images(exact, tokens), device, 1)
        scores_fast = scorer.score_images(fast, tokens)
        diff = (scores_fast - scores_exact).abs()
        result["blocks"][name] = {
            "max_score_difference": float(diff.max()),
            "worst_frame_difference": float(abs(scores_fast.min() - scores_exact.min())),
            "score_spread": float(scores_exact.std()),
            "scores_exact": scores_exact.tolist(),
        }
        exact_times.append(t_exact)
        device_times.append(t_device)
        forward_times.append(t_forward)
        log(f"  {name:<15} max |score diff| {float(diff.max()):.2e}  worst-frame diff "
            f"{result['blocks'][name]['worst_frame_difference']:.2e}  score spread {float(scores_exact.std()):.3f}")
    result["seconds"] = {"exact_preprocess": statistics.median(exact_times),
                         "device_preprocess": statistics.median(device_times),
                         "scorer_forward": statistics.median(forward_times)}
    result["max_score_difference"] = max(b["max_score_difference"] for b in result["blocks"].values())
    all_scores = [s for b in result["blocks"].values() for s in b["scores_exact"]]
    result["score_spread_all"] = statistics.pstdev(all_scores)
    result["relative_difference"] = result["max_score_difference"] / max(result["score_spread_all"], 1e-12)
    s = result["seconds"]
    log(f"  exact PIL path {s['exact_preprocess']:.3f} s, on-device path {s['device_preprocess']:.3f} s, "
        f"scorer forward {s['scorer_forward']:.3f} s per {FRAMES} frames at {width}x{height} on {device}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdvg_core.bench.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where the frames and the scorer are")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--layers", type=int, default=24, help="ViT layers (24: the real ViT-L/16)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    size = replace(RouterSize(), vision_layers=args.layers)
    result = measure(device=args.device, width=args.width, height=args.height, size=size)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0 if math.isfinite(result["max_score_difference"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
