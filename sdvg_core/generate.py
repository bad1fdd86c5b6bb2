"""Generate videos with real weights: one video and one JSON line per prompt.

Before anything heavy is loaded, every input is checked: the paths, that --out can be written,
and every model file from its tensor headers (format, model family, sizes, that drafter and
target pair up, the router's three files): seconds, not a 14B load. Results are written whole
or not at all, and a rerun into the same --out skips what is done (``sdvg_core/results.py``).
The JSON lines carry per-block scores, which ``python -m sdvg_core tune`` reads to pick tau.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import AGGREGATIONS, MODES, SKIP_POLICIES, SDVGConfig
from .errors import InputError, MissingFileError
from .prompts import PromptSchedule, Segment, parse_schedule
from .results import ResultsFolder, read_prompt_file
from .speculative import check_input_video
from .video import read_video
from .worker import DTYPES, Outcome, WorkerSpec, run_here

PREPROCESS = {"auto": None, "exact": True, "device": False}  # --preprocess -> SDVGConfig.exact_preprocess


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """The SDVGConfig knobs, shared by `generate` and `demo`."""
    defaults = SDVGConfig()
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="sdvg, or a baseline that runs only its own model")
    parser.add_argument("--tau", type=float, default=defaults.tau,
                        help="accept a draft when its worst frame's ImageReward score >= tau")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default=defaults.aggregation,
                        help="how a block's frame scores become one: min (the paper), mean, or a low quantile")
    parser.add_argument("--blocks", type=int, default=defaults.num_blocks,
                        help="blocks of 3 latent frames; block 0 gives 9 pixel frames, later blocks 12")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of all the video's noise")
    parser.add_argument("--hybrid-k", type=int, default=defaults.hybrid_k,
                        help="a rejected block resumes the target from the draft at step k (0 = off)")
    parser.add_argument("--cascade", action="store_true", help="score 4 frames first, all 12 only when undecided")
    parser.add_argument("--skip", choices=SKIP_POLICIES, default=defaults.skip,
                        help="verification skipping policy")
    parser.add_argument("--preprocess", choices=PREPROCESS, default="auto",
                        help="router preprocessing: 'exact' is ImageReward's PIL path on the CPU, 'device' stays "
                             "on the frames' device (>99.9%% of pixel values identical, the rest one 8-bit level "
                             "off; scores 4e-5 apart), 'auto' is exact on the CPU and device on a GPU")
    parser.add_argument("--keep-first-frames", action="store_true",
                        help="keep block 0's first 3 pixel frames (dropped by default, as the reference does)")


def session_config(args, **overrides) -> SDVGConfig:
    values = dict(mode=args.mode, tau=args.tau, aggregation=args.aggregation, strength=getattr(args, "strength", 1.0),
                  num_blocks=args.blocks, seed=args.seed, hybrid_k=args.hybrid_k,
                  cascade=args.cascade, skip=args.skip, exact_preprocess=PREPROCESS[args.preprocess],
                  drop_first_frames=not args.keep_first_frames)
    values.update(overrides)
    return SDVGConfig(**values).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drafter", required=True, help="self_forcing_dmd.pt (or any Wan 2.1 1.3B T2V checkpoint)")
    parser.add_argument("--drafter-variant", default="ema", choices=("ema", "plain"),
                        help="generator_ema or generator weights of a Self-Forcing file")
    parser.add_argument("--target", required=True, help="krea-realtime-video-14b.safetensors (or an fp8 copy)")
    parser.add_argument("--vae", required=True, help="wan_2.1_vae.safetensors or Wan2.1_VAE.pth")
    parser.add_argument("--router", required=True,
                        help="folder with ImageReward.pt, med_config.json and bert-base-uncased/")
    parser.add_argument("--text-encoder", required=True,
                        help="folder of a transformers umt5-xxl encoder (config.json + weights)")
    parser.add_argument("--tokenizer", default=None,
                        help="folder of the google/umt5-xxl tokenizer (default: the --text-encoder folder)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts", help="a text file, one prompt per line (one video each)")
    prompts.add_argument("--prompt-schedule", help="a text file of 'BLOCK: prompt' lines: one video whose prompt "
                                                   "changes at those blocks (prompt travel)")
    parser.add_argument("--start", type=int, default=0, help="first prompt of --prompts to use (0-based)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts (default: all)")
    parser.add_argument("--width", type=int, default=832, help="pixels, a multiple of 16")
    parser.add_argument("--height", type=int, default=480, help="pixels, a multiple of 16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for every model")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--video", default=None,
                        help="video-to-video: an input video file of at least 12 x blocks - 3 frames at "
                             "--width x --height, used with --strength < 1")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="video-to-video: how far each input block is noised; 1 = text-to-video, lower keeps "
                             "more of the input (0.75: 4 passes a block, 0.5: 3, 0.25: 2)")
    parser.add_argument("--out", default="out/generate", help="output folder (a rerun resumes it)")
    parser.add_argument("--redo", action="store_true", help="regenerate prompts already done in --out")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray actors sharing the batch, one GPU each (CPU actors without GPUs); 1 runs in "
                             "this process without Ray")
    parser.add_argument("--ray-address", default=None,
                        help="a running Ray cluster to join (ray start --head ...; 'auto' finds a local one); "
                             "default: start a cluster on this machine")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker (and CPUs per Ray CPU actor); CPU results are "
                             "byte-identical across runs with the same value (default: torch's own, 1 per Ray "
                             "CPU actor)")
    add_session_arguments(parser)


@dataclass
class Batch:
    """What a run will do, known before any model loads."""

    prompts: dict[int, list[tuple[int, str]]]  # index -> its prompt schedule [(first block, prompt)]
    todo: list[int]                # indices still to generate
    config: SDVGConfig
    device: torch.device
    dtype: torch.dtype
    out: ResultsFolder


def select_prompts(args) -> dict[int, list[tuple[int, str]]]:
    """Index -> the video's prompt schedule: one segment per --prompt / --prompts line, or the file
    of --prompt-schedule (one video)."""
    if args.start < 0:
        raise InputError(f"--start {args.start}: must be 0 or more (the first prompt is 0).")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: must be at least 1 (leave it out for every prompt).")
    if args.prompts is None and args.start:
        raise InputError("--start applies to --prompts, not to a single --prompt or --prompt-schedule.")
    if args.prompt_schedule is not None:
        path = Path(args.prompt_schedule)
        if not path.is_file():
            raise MissingFileError(f"--prompt-schedule {path}: no such file ('BLOCK: prompt' lines).")
        return {0: parse_schedule(path.read_text(encoding="utf-8"), f"--prompt-schedule {path}")}
    prompts = [args.prompt] if args.prompt is not None else read_prompt_file(args.prompts)
    indexed = dict(list(enumerate(prompts))[args.start:][:args.limit])
    if not indexed or any(not p.strip() for p in indexed.values()):
        raise InputError("no prompt to generate: give --prompt TEXT or a --prompts file with lines after --start.")
    return {i: [(0, prompt)] for i, prompt in indexed.items()}


def check_paths(args) -> None:
    """Name every missing input at once."""
    wanted = [("--drafter", args.drafter, "file"), ("--target", args.target, "file"),
              ("--vae", args.vae, "file"), ("--router", args.router, "folder"),
              ("--text-encoder", args.text_encoder, "folder")]
    if args.tokenizer:
        wanted.append(("--tokenizer", args.tokenizer, "folder"))
    for flag, path in (("--prompts", args.prompts), ("--prompt-schedule", args.prompt_schedule),
                       ("--video", args.video)):
        if path:
            wanted.append((flag, path, "file"))
    missing = [f"{flag} {path} (expected a {kind})" for flag, path, kind in wanted
               if not (Path(path).is_file() if kind == "file" else Path(path).is_dir())]
    if missing:
        raise MissingFileError("missing input(s): " + "; ".join(missing) +
                               ". See the README's 'Model files' section for what goes where.")


def preflight(args) -> Batch:
    """Everything that can be checked without loading a model: seconds, whatever the model sizes."""
    from .memory import checkpoint_shapes, free_bytes, session_plan
    from .router import inspect_folder
    from .text import UMT5TextEncoder
    from .vae import inspect_vae
    from .wan import check_compatible

    check_paths(args)
    prompts = select_prompts(args)
    config = session_config(args, width=args.width, height=args.height)
    for schedule in prompts.values():
        PromptSchedule([Segment(b, p, torch.zeros(1, 1, 1)) for b, p in schedule]).check(config.num_blocks)
    if config.strength < 1:
        if args.video is None:
            raise InputError(f"--strength {config.strength} < 1 needs --video (the input of video-to-video).")
        check_input_video(read_video(args.video, limit=12 * config.num_blocks - 3), config)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = checkpoint_shapes(config, args.drafter, args.target, args.drafter_variant)
    configs = {role: shapes[role] for role in ("drafter", "target") if role in shapes}
    if len(configs) == 2:
        check_compatible(configs["drafter"], configs["target"])
    inspect_vae(args.vae)
    if "router" in config.models:
        inspect_folder(args.router)
    width = UMT5TextEncoder.inspect_folder(args.text_encoder, args.tokenizer)
    text_dim = next(iter(configs.values())).text_dim
    if width != text_dim:
        raise InputError(f"--text-encoder {args.text_encoder} embeds {width}-wide, the DiTs read {text_dim}-wide "
                         "text: use the umT5-XXL encoder the models were trained with.")
    if args.workers == 1:  # Ray workers check their own GPU before they load (worker.py)
        session_plan(config, device=device, compute_dtype=dtype, prompts=max(map(len, prompts.values())),
                     **shapes).check(free_bytes(device), what="this batch")
    settings = {"config": {k: v for k, v in asdict(config).items() if k != "accept_pattern"},
                "video": Path(args.video).name if config.strength < 1 else None,
                "drafter": Path(args.drafter).name, "target": Path(args.target).name, "vae": Path(args.vae).name,
                "dtype": str(dtype).replace("torch.", "")}
    out = ResultsFolder(args.out, settings, redo=args.redo)
    out.check_writable()
    return Batch(prompts, out.pending(list(prompts)), config, device, dtype, out)


def worker_spec(args, batch: Batch) -> WorkerSpec:
    return WorkerSpec(drafter=args.drafter, drafter_variant=args.drafter_variant, target=args.target, vae=args.vae,
                      router=args.router, text_encoder=args.text_encoder, tokenizer=args.tokenizer,
                      video=args.video, config=batch.config, device=str(batch.device),
                      dtype=str(batch.dtype).replace("torch.", ""), threads=args.threads)


def outcomes(args, batch: Batch):
    """Every pending prompt's Outcome, from this process or from Ray workers."""
    spec = worker_spec(args, batch)
    schedules = {index: batch.prompts[index] for index in batch.todo}
    if args.workers == 1:
        return run_here(spec, schedules)
    from .cluster import run_on_ray

    return run_on_ray(spec, schedules, workers=args.workers, address=args.ray_address, say=Progress.say)


class Progress:
    """A bar of videos done / to do with ETA and the accept rate so far, one line per video."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", file=sys.stderr, dynamic_ncols=True, disable=None)  # off in logs
        self.accepted = self.scored = self.failed = 0

    @staticmethod
    def say(line: str, file=None) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=file or sys.stderr)

    def finished(self, outcome: Outcome, where: Path | None) -> None:
        if outcome.error is not None:
            self.failed += 1
            self.say(f"prompt {outcome.index} failed: {outcome.error}")
        else:
            blocks = [b for b in outcome.record["blocks"] if b["decision"] in ("accepted", "rejected") and b["scores"]]
            self.accepted += sum(b["decision"] == "accepted" for b in blocks)
            self.scored += len(blocks)
            s = outcome.record["summary"]
            rate = "-" if s["accept_rate"] is None else f"{s['accept_rate']:.0%}"
            self.say(f"prompt {outcome.index}: {outcome.record['seconds']:.1f}s accepted {rate}  {where}", sys.stdout)
        self.bar.set_postfix_str(", ".join(filter(None, (
            f"accepted {self.accepted / self.scored:.0%} of drafts" if self.scored else None,
            f"{self.failed} failed" if self.failed else None))))
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def main(args) -> int:
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1 (1 runs in this process, without Ray).")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: must be at least 1 (leave it out for torch's default).")
    if args.ray_address and args.workers == 1:
        raise InputError("--ray-address is for --workers N > 1 (one worker runs in this process).")
    if args.workers > 1:
        from .cluster import require_ray

        require_ray()
    batch = preflight(args)
    total, skipped = len(batch.prompts), len(batch.prompts) - len(batch.todo)
    if skipped:
        print(f"{skipped} of {total} prompts already done in {batch.out.path}; generating {len(batch.todo)}.")
    if not batch.todo:
        print(f"nothing to do: every prompt is in {batch.out.log} (--redo regenerates them).")
        return 0
    written = failed = 0
    progress = Progress(len(batch.todo))
    try:
        for outcome in outcomes(args, batch):
            if outcome.error is not None:  # this prompt has no video and no line; the batch goes on
                failed += 1
                batch.out.fail(outcome.index, outcome.prompt, outcome.error)
                progress.finished(outcome, None)
                continue
            where = batch.out.write(outcome.index, outcome.prompt, outcome.video, outcome.record)
            written += 1
            progress.finished(outcome, where)
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: {written} video(s) written to {batch.out.path}; rerun the same command to resume.",
              file=sys.stderr)
        return 130
    progress.close()
    print(f"log: {batch.out.log} ({written} written, {skipped} already done, {failed} failed)")
    return 1 if failed else 0
