"""The SDVG session: the block loop of speculative decoding (docs/algorithm.md, section 2).

``SDVGSession._block`` is one block on one screen: context, draft, verify, regenerate or
keep, commit. It is a generator that pauses after each step, so ``run()`` drives it to the
end while ComfyUI's modular nodes call ``step()`` once per node; the order of the steps is
the generator's own, and a step asked for out of turn is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .committed import CommittedVideo
from .memory import check_session
from .config import SDVGConfig
from .errors import InputError, SDVGError
from .runner import BlockRunner
from .prompts import PromptSchedule
from .schedule import FRAMES_PER_BLOCK, SIGMAS, BlockSample, NoisePlan, renoise, start_step_for
from .stats import BlockStats, Meter, summarize
from .verifier import Verdict, Verifier, draft_agreement
from .wan import check_compatible

STEPS = ("draft", "verify", "regenerate", "commit")


@dataclass
class SDVGResult:
    frames: torch.Tensor      # [T, H, W, 3] float32 in [0, 1] (ComfyUI IMAGE layout)
    latents: torch.Tensor     # [1, F, 16, h, w] normalised latents
    blocks: list[BlockStats]
    summary: dict

    def stats_dict(self) -> dict:
        return {"blocks": [b.to_dict() for b in self.blocks], "summary": self.summary}


@dataclass
class BlockEvent:
    """Sent to the progress callback after each commit."""

    block: int
    num_blocks: int
    stats: BlockStats
    preview: torch.Tensor     # last committed pixel frame, [H, W, 3] in [0, 1]


@dataclass
class Draft:
    """The drafter's proposal for a block: its sample, its decoded frames, and the decode
    stream as it was before them (restored when the draft is rejected)."""

    sample: BlockSample
    pixels: torch.Tensor      # [B, T, 3, H, W] in [-1, 1]
    vae_before: object

    @property
    def agreement(self) -> float | None:
        return draft_agreement(self.sample.x0s)


class SDVGSession:
    def __init__(self, *, drafter, target, vae, scorer, text: torch.Tensor | None = None, prompt: str | None = None,
                 prompts: PromptSchedule | None = None, video: torch.Tensor | None = None,
                 config: SDVGConfig = SDVGConfig(),
                 on_block: Callable[[BlockEvent], None] | None = None,
                 check_interrupt: Callable[[], None] | None = None):
        """``drafter``/``target``: Wan DiTs (either may be None when the mode does not call it);
        ``vae``: a VAE stream (sdvg_core/vae.py); ``scorer``: scores frames (ImageRewardScorer).
        The text: one ``prompt`` and its embedding ``text``, or a ``prompts`` schedule.
        ``video``: the input of video-to-video, frames ``[T, H, W, 3]`` in [0, 1], used when
        ``config.strength`` < 1."""
        self.config = config.validate()
        for name, model in (("drafter", drafter), ("target", target), ("router", scorer)):
            if name in config.models and model is None:
                raise InputError(f"mode {config.mode!r} needs a {name}; none was given.")
        if drafter is not None and target is not None:
            check_compatible(drafter, target)
        if prompts is None:
            if text is None or prompt is None:
                raise InputError("give the prompt and its embedding (prompt=, text=), or a prompts= schedule.")
            prompts = PromptSchedule.single(prompt, text)
        prompts.check(config.num_blocks)
        check_session(config, drafter, target, vae, prompts=len(prompts.segments))
        self.prompts, self.vae = prompts, vae
        self.on_block = on_block
        self.check_interrupt = check_interrupt or (lambda: None)
        interrupt = lambda: self.check_interrupt()  # noqa: E731 - read at call time: callers swap it
        texts = [segment.text for segment in prompts.segments]

        def runner(name, model):
            return None if model is None else BlockRunner(name, model, texts, config.latent_hw,
                                                          before_call=interrupt)

        self.drafter, self.target = runner("drafter", drafter), runner("target", target)
        self.verifier = Verifier(config, scorer, check_interrupt=interrupt)
        self.plan = NoisePlan(config.seed, config.num_blocks, (16,) + config.latent_hw)
        self.video = CommittedVideo(vae)
        self.input_latents = encode_input_video(vae, video, config) if config.strength < 1 else None
        self.reset()

    # -- one block ----------------------------------------------------------------------

    def _block(self, b: int) -> Iterator[tuple[str, Any]]:
        """One block: context, draft, verify, regenerate or keep, commit (pausing after each)."""
        meter, started = Meter(), time.perf_counter()
        segment = self.prompts.index_at(b)               # the prompt that conditions this block
        context = self.video.context(b, meter)           # the clean frames every model re-reads
        x, step = self._start(b)                         # noise, or the input video noised to strength
        draft = None
        if self.verifier.wants_draft(b):                 # the drafter proposes the block
            vae_before = self.vae.snapshot()             # a rejected draft's decode is undone
            sample = self.drafter.generate(b, context, self.plan, meter, segment=segment, start_step=step, x_start=x)
            draft = Draft(sample, self._decode(sample.latents, "drafter", b, meter), vae_before)
        yield "draft", None
        verdict = self.verifier.verify(b, draft, self.prompts.segments[segment].prompt, meter)  # keep it or not
        yield "verify", verdict.decision
        if verdict.keeps_draft:
            latents, pixels = draft.sample.latents, draft.pixels
        else:                                            # the target regenerates the block
            if draft is not None:
                self.vae.restore(draft.vae_before)
            if verdict.decision == "rejected" and self.config.hybrid_k > step:  # resume from the draft
                x, step = draft.sample.input_at(self.config.hybrid_k), self.config.hybrid_k
            sample = self.target.generate(b, context, self.plan, meter, segment=segment, start_step=step, x_start=x)
            latents, pixels = sample.latents, self._decode(sample.latents, "target", b, meter)
        yield "regenerate", None
        self.video.commit(latents, pixels)               # the next model rebuilds its cache from it
        stats = self._record(b, verdict, meter, started, pixels.shape[1], segment)
        yield "commit", stats

    def _start(self, b: int) -> tuple[torch.Tensor, int]:
        """The latent block b's denoising starts from, and its first pass (docs/algorithm.md, 9)."""
        noise = self.plan.block_noise(b)
        if self.input_latents is None:
            return noise, 0
        step = start_step_for(self.config.strength)
        block = self.input_latents[:, b * FRAMES_PER_BLOCK:(b + 1) * FRAMES_PER_BLOCK]
        return renoise(block.to(noise.device, noise.dtype), noise, SIGMAS[step]), step

    # -- driving the blocks -------------------------------------------------------------

    def _blocks(self) -> Iterator[tuple[int, str, Any]]:
        for b in range(self.config.num_blocks):
            for step, value in self._block(b):
                yield b, step, value

    def reset(self) -> None:
        """Start the video over; makes a session reusable after an interrupt or error."""
        self.stats: list[BlockStats] = []
        self.video.reset()
        self.vae.reset()
        self.verifier.reset()
        for runner in (self.drafter, self.target):
            if runner:
                runner.reset()
        self._steps: Iterator | None = self._blocks()
        self._last: tuple[int, str] | None = None  # the step most recently done

    @property
    def next_step(self) -> tuple[int, str] | None:
        """(block, step) that ``step()`` runs next; None when every block is committed."""
        if self._last is None:
            return 0, STEPS[0]
        b, step = self._last
        i = STEPS.index(step) + 1
        if i < len(STEPS):
            return b, STEPS[i]
        return (b + 1, STEPS[0]) if b + 1 < self.config.num_blocks else None

    @property
    def done(self) -> bool:
        return self.next_step is None

    @property
    def block(self) -> int:
        """Blocks committed so far."""
        return self.video.blocks

    def step(self, name: str, block: int | None = None) -> Any:
        """Run the next step if it is ``name`` (of ``block``, when given); returns the verify step's
        decision, or the commit step's BlockStats."""
        expected = self.next_step
        if expected is None:
            raise SDVGError(f"all {self.config.num_blocks} blocks are committed; call reset() or result().")
        if self._steps is None:
            raise SDVGError("the video stopped at an error or interrupt; call reset() to start it over.")
        if name != expected[1] or (block is not None and block != expected[0]):
            asked = f"block {block}" if block is not None else "the current block"
            raise SDVGError(f"out of order: asked to {name} {asked}, but block {expected[0]} is "
                            f"waiting for '{expected[1]}' (steps run {' -> '.join(STEPS)}).")
        self.check_interrupt()
        try:
            b, done, value = next(self._steps)
        except BaseException:
            self._steps = None  # a generator that raised cannot resume
            raise
        self._last = (b, done)
        return value

    def run(self) -> SDVGResult:
        """The whole video, from a clean state."""
        self.reset()
        while not self.done:
            self.step(self.next_step[1])
        return self.result()

    # -- helpers of the steps -----------------------------------------------------------

    def _decode(self, latents: torch.Tensor, made_by: str, b: int, meter: Meter) -> torch.Tensor:
        self.check_interrupt()
        with meter.time("vae_decode", self.vae.device), torch.no_grad():
            pixels = self.vae.decode(latents.to(self.vae.device, self.vae.dtype), block=b,
                                     made_by=f"the {made_by}'s").float()
        meter.count("vae_decode")
        return pixels

    def _record(self, b: int, verdict: Verdict, meter: Meter, started: float, frames: int,
                segment: int) -> BlockStats:
        stats = BlockStats(block=b, decision=verdict.decision, prompt=self.prompts.segments[segment].prompt,
                           scores=list(verdict.scores),
                           aggregate=verdict.aggregate, tau=verdict.tau, scoring=verdict.scoring,
                           draft_agreement=verdict.agreement, model_calls=dict(meter.calls),
                           seconds=dict(meter.seconds, total=time.perf_counter() - started),
                           pixel_frames=frames)
        self.stats.append(stats)
        if self.on_block is not None:
            self.on_block(BlockEvent(b, self.config.num_blocks, stats, self.video.frames[-1][-1]))
        return stats

    # -- output --------------------------------------------------------------------------

    def result(self) -> SDVGResult:
        if not self.video.latents:
            raise SDVGError("no block is committed yet; run the session first.")
        frames = torch.cat(self.video.frames, dim=0)
        if self.config.drop_first_frames:
            frames = frames[FRAMES_PER_BLOCK:]
        latents = torch.cat(self.video.latents, dim=1).cpu()
        return SDVGResult(frames, latents, list(self.stats), summarize(self.stats))

    def release(self) -> None:
        """Free the KV and text caches held for this session."""
        for runner in (self.drafter, self.target):
            if runner:
                runner.release()


def check_input_video(video, config: SDVGConfig) -> int:
    """Raise unless ``video`` (frames ``[T, H, W, 3]``) can be the input of this video; the frames used."""
    blocks = config.num_blocks
    needed = 1 + 4 * (FRAMES_PER_BLOCK * blocks - 1)
    if video is None:
        raise InputError(f"strength {config.strength} < 1 needs an input video (frames [T, H, W, 3] in [0, 1]); "
                         "connect one, or set strength to 1 for text-to-video.")
    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[-1] != 3:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise InputError(f"the input video must be frames [T, H, W, 3] (ComfyUI IMAGE), got {got}.")
    frames, height, width = video.shape[:3]
    if (height, width) != (config.height, config.width):
        raise InputError(f"the input video is {width}x{height}, the video to make is {config.width}x{config.height}: "
                         f"resize the input (ComfyUI: Upscale Image to {config.width}x{config.height}) or set "
                         "width/height to the input's size.")
    if frames < needed:
        fits = (frames + 3) // 12
        hint = f"use at most {fits} blocks" if fits else "give a longer video"
        raise InputError(f"the input video has {frames} frames; {blocks} blocks need {needed} (12 per block - 3): "
                         f"{hint}, or give at least {needed} frames.")
    return needed


def encode_input_video(vae, video: torch.Tensor | None, config: SDVGConfig) -> torch.Tensor:
    """The input of video-to-video as normalised latents ``[1, F, 16, h, w]`` (docs/algorithm.md, 9):
    its first ``12 N - 3`` frames (N blocks), encoded once by the VAE, causally as Wan does."""
    needed = check_input_video(video, config)
    pixels = video[:needed].float().clamp(0, 1).mul(2).sub(1).permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, T, H, W]
    with torch.no_grad():
        return vae.encode_video(pixels.to(vae.device, vae.dtype)).float().cpu()
