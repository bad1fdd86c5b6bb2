"""One generate worker: encodes prompts, loads the models once, turns a prompt into a finished video.

The same class runs in the `generate` process (``--workers 1``) and as each Ray actor
(``--workers N``, ``sdvg_core/cluster.py``), so a prompt's video is made by the same code either
way and depends only on its prompt, its index and the seed: the same bytes whichever worker ran
it, in whatever order (on the same kind of device, and on the CPU with the same ``threads``).

A worker writes nothing: it returns an :class:`Outcome` (the encoded video and its JSON record,
or the error) and the driver, the one writer of ``--out``, stores it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .config import SDVGConfig
from .errors import SDVGError
from .prompts import PromptSchedule, Segment, format_schedule
from .text import PackedText
from .video import EncodedVideo, encode_video, read_video

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

Schedule = list[tuple[int, str]]                  # a video's prompts: [(first block, prompt)]
EncodedSchedule = list[tuple[int, str, PackedText]]


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads and how it computes: plain values, so Ray can ship it anywhere."""

    drafter: str
    drafter_variant: str
    target: str
    vae: str
    router: str
    text_encoder: str
    tokenizer: str | None
    video: str | None          # video-to-video input, read once per worker
    config: SDVGConfig
    device: str                # each Ray GPU actor sees its own GPU as "cuda"
    dtype: str                 # a key of DTYPES
    threads: int | None = None  # torch CPU threads (None: torch's default)


@dataclass(frozen=True)
class Outcome:
    """A prompt's result: its video and JSON record, or why it has none."""

    index: int
    prompt: str
    video: EncodedVideo | None = None
    record: dict | None = None
    error: str | None = None   # "NumericalError: ..." as the user reads it


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.device, self.dtype = torch.device(spec.device), DTYPES[spec.dtype]
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.models: dict | None = None
        self.video = None

    def encode(self, schedules: dict[int, Schedule]) -> dict[int, EncodedSchedule]:
        """umT5 embeddings of these videos' prompts; the encoder is freed before any DiT loads."""
        from .memory import release
        from .text import UMT5TextEncoder

        spec = self.spec
        encoder = UMT5TextEncoder.from_folder(spec.text_encoder, spec.tokenizer, device=self.device, dtype=self.dtype)
        try:
            return {index: [(block, prompt, PackedText.pack(encoder.encode(prompt).cpu()))
                            for block, prompt in schedule] for index, schedule in schedules.items()}
        finally:
            del encoder
            release(self.device)

    def load(self) -> None:
        """The models this mode calls (a baseline loads only its own), once per worker."""
        from .memory import files_plan, free_bytes
        from .router import ImageRewardScorer
        from .vae import StreamingVAE
        from .wan import load_wan

        spec, used = self.spec, self.spec.config.models
        device, dtype = self.device, self.dtype
        files_plan(spec.config, device=device, compute_dtype=dtype, drafter=spec.drafter, target=spec.target,
                   drafter_variant=spec.drafter_variant).check(free_bytes(device), what="this worker's models")
        self.models = {
            "drafter": load_wan(spec.drafter, variant=spec.drafter_variant, dtype=dtype, device=device)
            if "drafter" in used else None,
            "target": load_wan(spec.target, dtype=dtype, device=device) if "target" in used else None,
            "vae": StreamingVAE.from_single_file(spec.vae, dtype=dtype, device=device),
            "scorer": ImageRewardScorer.from_folder(spec.router, device=device) if "router" in used else None,
        }
        if spec.video is not None and spec.config.strength < 1:
            self.video = read_video(spec.video)

    def generate(self, index: int, schedule: EncodedSchedule) -> Outcome:
        """One video. A problem with this prompt (a NaN, say) is its Outcome's error, not an exception."""
        if self.models is None:
            self.load()
        prompts = PromptSchedule([Segment(block, prompt, text.unpack()) for block, prompt, text in schedule])
        first = schedule[0][1]
        try:
            frames, record = generate_one(self.models, prompts, self.spec.config, self.video)
        except SDVGError as error:
            return Outcome(index, first, error=f"{type(error).__name__}: {error}")
        return Outcome(index, first, encode_video(frames), record)

    def pid(self) -> int:
        return os.getpid()


def generate_one(models: dict, prompts: PromptSchedule, config: SDVGConfig, video=None):
    """One video: (frames, the JSON record's fields)."""
    from .speculative import SDVGSession

    session = SDVGSession(**models, prompts=prompts, video=video, config=config)
    start = time.perf_counter()
    try:
        result = session.run()
    finally:
        session.release()
    record = {"seed": config.seed, "tau": config.tau, "mode": config.mode, "strength": config.strength,
              "schedule": format_schedule([(s.first_block, s.prompt) for s in prompts.segments]),
              "seconds": time.perf_counter() - start, **result.stats_dict()}
    return result.frames, record


def run_here(spec: WorkerSpec, schedules: dict[int, Schedule]):
    """``--workers 1``: the outcomes of ``schedules`` in order, in this process."""
    worker = Worker(spec)
    encoded = worker.encode(schedules)
    for index in schedules:
        yield worker.generate(index, encoded.pop(index))
