"""A tiny SDVG run with random weights: writes video, timeline.png and stats.json.

The models are the real architectures shrunk to test size with random weights, so the
video is noise-like and the router's scores carry no meaning. Unless --tau is given, the
demo sets tau at the 30th percentile of the drafts' worst-frame scores from a first
calibration pass, so both decisions show up on the timeline.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from .generate import add_session_arguments, session_config
from .speculative import SDVGSession
from .video import write_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder")
    parser.add_argument("--width", type=int, default=128, help="pixels, a multiple of 16")
    parser.add_argument("--height", type=int, default=80, help="pixels, a multiple of 16")
    parser.add_argument("--prompt", default="a red fox running through fresh snow, golden hour",
                        help="the prompt (the tiny models' text embedding is a hash of it)")
    add_session_arguments(parser)
    parser.set_defaults(tau=None)
    for action in parser._actions:
        if action.dest == "tau":
            action.help += " (default: the 30th percentile of a first pass's scores)"


def calibrated_tau(system, config, quantile: float = 0.3) -> float:
    """Tau at a quantile of the drafts' aggregates when every draft is accepted."""
    probe = SDVGSession(**system.session_kwargs(), config=replace(config, tau=float("-inf")))
    aggregates = [b.aggregate for b in probe.run().blocks if b.aggregate is not None]
    if not aggregates:
        return config.tau
    return float(torch.tensor(aggregates).quantile(quantile))


def main(args) -> int:
    from .timeline import render_timeline
    from .tiny import build_tiny_system

    start = time.perf_counter()
    config = session_config(args, width=args.width, height=args.height,
                            tau=-0.7 if args.tau is None else args.tau)
    system = build_tiny_system(seed=config.seed, prompt=args.prompt)
    if args.tau is None and config.mode == "sdvg":
        config = replace(config, tau=calibrated_tau(system, config))

    def show(event):
        s = event.stats
        score = "" if s.aggregate is None else f"  worst-frame score {s.aggregate:+.3f} (tau {config.tau:+.3f})"
        print(f"block {event.block} of 0-{event.num_blocks - 1}: {s.decision:<8}{score}")

    session = SDVGSession(**system.session_kwargs(), config=config, on_block=show)
    result = session.run()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = write_video(result.frames, out / "video.mp4")
    stats = result.stats_dict()
    stats["config"] = {k: v for k, v in vars(config).items() if k != "accept_pattern"}
    stats["note"] = "tiny random-weight models: scores and pixels are meaningless; the loop is real"
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    timeline = out / "timeline.png"
    render_timeline(result.blocks, config.tau).save(timeline)

    s = result.summary
    rate = "n/a" if s["accept_rate"] is None else f"{s['accept_rate']:.0%}"
    print(f"\n{len(result.blocks)} blocks, {result.frames.shape[0]} frames, accept rate {rate}, "
          f"{time.perf_counter() - start:.1f}s")
    print(f"video:    {video}\ntimeline: {timeline}\nstats:    {out / 'stats.json'}")
    return 0
