"""Generate videos with real weights: one JSON line and one video per prompt.

Every path is checked before anything heavy is loaded, so a typo costs seconds, not a
14B load. The JSON lines carry per-block scores, which ``python -m sdvg_core tune`` reads
to pick tau offline.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from .errors import InputError, MissingFileError
from .config import AGGREGATIONS, MODES, SKIP_POLICIES, SDVGConfig
from .speculative import SDVGSession
from .video import write_video

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """The SDVGConfig knobs, shared by `generate` and `demo`."""
    defaults = SDVGConfig()
    parser.add_argument("--mode", choices=MODES, default=defaults.mode)
    parser.add_argument("--tau", type=float, default=defaults.tau,
                        help="accept a draft when its worst frame's ImageReward >= tau")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default=defaults.aggregation)
    parser.add_argument("--blocks", type=int, default=defaults.num_blocks, help="blocks of 3 latent frames")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--hybrid-k", type=int, default=defaults.hybrid_k,
                        help="a rejected block resumes the target from the draft at step k (0 = off)")
    parser.add_argument("--cascade", action="store_true", help="score a frame subset first")
    parser.add_argument("--skip", choices=SKIP_POLICIES, default=defaults.skip,
                        help="verification skipping policy")
    parser.add_argument("--fast-preprocess", action="store_true",
                        help="router preprocessing on the GPU instead of ImageReward's PIL path "
                             "(>99.9%% of pixel values identical, the rest one 8-bit level off)")
    parser.add_argument("--keep-first-frames", action="store_true",
                        help="keep block 0's first 3 pixel frames (dropped by default, as the reference does)")


def session_config(args, **overrides) -> SDVGConfig:
    values = dict(mode=args.mode, tau=args.tau, aggregation=args.aggregation,
                  num_blocks=args.blocks, seed=args.seed, hybrid_k=args.hybrid_k,
                  cascade=args.cascade, skip=args.skip, exact_preprocess=not args.fast_preprocess,
                  drop_first_frames=not args.keep_first_frames)
    values.update(overrides)
    return SDVGConfig(**values).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drafter", required=True, help="self_forcing_dmd.pt (or any Wan 1.3B causal checkpoint)")
    parser.add_argument("--drafter-variant", default="ema", choices=("ema", "plain"))
    parser.add_argument("--target", required=True, help="krea-realtime-video-14b.safetensors")
    parser.add_argument("--vae", required=True, help="wan_2.1_vae.safetensors or Wan2.1_VAE.pth")
    parser.add_argument("--router", required=True,
                        help="folder with ImageReward.pt, med_config.json and bert-base-uncased/")
    parser.add_argument("--text-encoder", required=True,
                        help="folder of a transformers umt5-xxl encoder (config.json + weights)")
    parser.add_argument("--tokenizer", default=None,
                        help="folder of the google/umt5-xxl tokenizer (default: --text-encoder)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts", help="a text file, one prompt per line")
    parser.add_argument("--start", type=int, default=0, help="first line of --prompts to use")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--out", default="out/generate", help="output folder")
    add_session_arguments(parser)


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        path = Path(args.prompts)
        if not path.is_file():
            raise MissingFileError(f"--prompts {path}: no such file (one prompt per line).")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        prompts = [p for p in prompts if p][args.start:]
    if args.limit is not None:
        prompts = prompts[:args.limit]
    if not prompts or any(not p.strip() for p in prompts):
        raise InputError("no prompt to generate: give --prompt TEXT or a non-empty --prompts file.")
    return prompts


def check_paths(args) -> None:
    """Name every missing input at once, before loading anything."""
    wanted = [("--drafter", args.drafter, "file"), ("--target", args.target, "file"),
              ("--vae", args.vae, "file"), ("--router", args.router, "folder"),
              ("--text-encoder", args.text_encoder, "folder")]
    if args.tokenizer:
        wanted.append(("--tokenizer", args.tokenizer, "folder"))
    missing = [f"{flag} {path} (expected a {kind})" for flag, path, kind in wanted
               if not (Path(path).is_file() if kind == "file" else Path(path).is_dir())]
    if missing:
        raise MissingFileError("missing input(s): " + "; ".join(missing) +
                               ". See the README's 'Model files' section for what goes where.")


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_")[:n] or "prompt"


def main(args) -> int:
    from .router import ImageRewardScorer
    from .text import UMT5TextEncoder
    from .vae import StreamingVAE
    from .wan import load_wan

    check_paths(args)
    prompts = read_prompts(args)
    config = session_config(args, width=args.width, height=args.height)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    encoder = UMT5TextEncoder.from_folder(args.text_encoder, args.tokenizer, device=device, dtype=dtype)
    texts = [encoder.encode(p).cpu() for p in prompts]  # encode all, then free the encoder
    del encoder
    models = config.models  # a baseline loads only its own model
    drafter = load_wan(args.drafter, variant=args.drafter_variant, dtype=dtype, device=device) \
        if "drafter" in models else None
    target = load_wan(args.target, dtype=dtype, device=device) if "target" in models else None
    vae = StreamingVAE.from_single_file(args.vae, dtype=dtype, device=device)
    scorer = ImageRewardScorer.from_folder(args.router, device=device, dtype=torch.float32) \
        if "router" in models else None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "results.jsonl"
    with log_path.open("a", encoding="utf-8") as log:
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            session = SDVGSession(drafter=drafter, target=target, vae=vae, scorer=scorer,
                                  text=text, prompt=prompt, config=config)
            start = time.perf_counter()
            result = session.run()
            seconds = time.perf_counter() - start
            session.release()
            video = write_video(result.frames, out / f"{args.start + i:04d}_{slug(prompt)}.mp4")
            record = {"prompt": prompt, "seed": config.seed, "tau": config.tau, "mode": config.mode,
                      "video": str(video), "seconds": seconds, **result.stats_dict()}
            log.write(json.dumps(record) + "\n")
            log.flush()
            s = result.summary
            rate = "-" if s["accept_rate"] is None else f"{s['accept_rate']:.0%}"
            print(f"[{i + 1}/{len(prompts)}] {seconds:.1f}s accepted {rate}  {video}")
    print(f"log: {log_path}")
    return 0
