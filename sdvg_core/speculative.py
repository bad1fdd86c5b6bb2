"""The SDVG session: draft, route, regenerate, commit -- block by block (spec section 2).

A session holds the drafter, the target, the streaming VAE, the router and the text, plus
everything one video accumulates: committed latents and pixels, the noise plan and the
per-block stats. ``run()`` composes the four steps; ComfyUI's modular nodes call them one
by one, so the state between steps is explicit (``phase``, ``block``, ``pending``) and each
step refuses to run out of order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import InputError, SDVGError
from .router import AGGREGATIONS, FixedTau, Router
from .runner import BlockRunner
from .schedule import FRAMES_PER_BLOCK, NUM_STEPS, NoisePlan, anchor_pixel_index, context_latents
from .stats import BlockStats, Meter, summarize
from .wan import check_compatible

MODES = ("sdvg", "target_only", "draft_only")
SKIP_POLICIES = ("none", "uniform", "dynamic")
SPATIAL_STRIDE = 16  # VAE stride 8 times patch 2


@dataclass(frozen=True)
class SDVGConfig:
    """Every knob of one video. Defaults are the paper's setting at 98% quality."""

    mode: str = "sdvg"
    tau: float = -0.7
    aggregation: str = "min"
    quantile: float = 0.1
    width: int = 832
    height: int = 480
    num_blocks: int = 9
    seed: int = 42
    force_target_first: bool = True   # block 0 is always the target's, and is not drafted
    hybrid_k: int = 0                 # >0: a rejected block resumes the target at step k
    cascade: bool = False             # score a frame subset first, all frames only when undecided
    cascade_frames: int = 4
    cascade_margin: float = 0.5
    skip: str = "none"                # verification skipping: none | uniform | dynamic
    skip_every: int = 2               # uniform: skip the router on every n-th block
    skip_margin: float = 0.5          # dynamic: previous block cleared tau by at least this
    skip_cosine: float = 0.99         # dynamic: drafter's last two x0 estimates agree this well
    drop_first_frames: bool = True    # drop block 0's first 3 pixel frames, as the reference does
    exact_preprocess: bool = True     # ImageReward's PIL path; False: on-device tensor path
    accept_pattern: tuple[bool, ...] | None = None  # benchmarks: force decisions, router still runs

    def validate(self) -> "SDVGConfig":
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if self.skip not in SKIP_POLICIES:
            raise InputError(f"skip must be one of {SKIP_POLICIES}, got {self.skip!r}.")
        for name, size in (("width", self.width), ("height", self.height)):
            if size <= 0 or size % SPATIAL_STRIDE:
                lower = max(SPATIAL_STRIDE, size - size % SPATIAL_STRIDE)
                raise InputError(
                    f"{name} {size} is not divisible by {SPATIAL_STRIDE} (VAE stride 8 x patch 2): "
                    f"use {lower} or {lower + SPATIAL_STRIDE}.")
        if self.num_blocks < 1:
            raise InputError(f"num_blocks must be at least 1, got {self.num_blocks}.")
        if not 0 <= self.hybrid_k < NUM_STEPS:
            raise InputError(f"hybrid_k must be in 0..{NUM_STEPS - 1} (0 = off), got {self.hybrid_k}.")
        if self.cascade and self.aggregation != "min":
            raise InputError("cascade scoring is exact only for the 'min' aggregation; "
                             "turn cascade off or use aggregation='min'.")
        if self.skip == "uniform" and self.skip_every < 2:
            raise InputError(f"skip_every must be at least 2, got {self.skip_every}.")
        if self.tau != self.tau:
            raise InputError("tau is NaN; give a number (-inf accepts every draft, +inf rejects all).")
        return self

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def models(self) -> frozenset[str]:
        """The models this mode calls, of "drafter", "target", "router": baselines run only their own."""
        used = {"drafter": self.mode != "target_only", "target": self.mode != "draft_only",
                "router": self.mode == "sdvg"}
        return frozenset(name for name, yes in used.items() if yes)


@dataclass
class Pending:
    """What the current block has produced so far, between steps."""

    context: torch.Tensor | None = None  # the block's context latents, once assembled
    context_ready: bool = False
    draft: Any = None                 # BlockSample of the drafter
    draft_pixels: torch.Tensor | None = None
    vae_state: Any = None             # the decode stream before the draft was decoded
    decision: str | None = None
    latents: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    stats: BlockStats | None = None
    meter: Meter = field(default_factory=Meter)
    started: float = field(default_factory=time.perf_counter)


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


class SDVGSession:
    def __init__(self, *, drafter, target, vae, scorer, text: torch.Tensor, prompt: str,
                 config: SDVGConfig = SDVGConfig(), policy=None,
                 on_block: Callable[[BlockEvent], None] | None = None,
                 check_interrupt: Callable[[], None] | None = None):
        """``scorer`` scores frames (ImageRewardScorer); ``policy`` defaults to FixedTau(config.tau)."""
        self.config = config.validate()
        for name, model in (("drafter", drafter), ("target", target), ("router", scorer)):
            if name in config.models and model is None:
                raise InputError(f"mode {config.mode!r} needs a {name}; none was given.")
        if drafter is not None and target is not None:
            check_compatible(drafter, target)
        if text.dim() == 2:
            text = text.unsqueeze(0)
        if text.shape[0] != 1:
            raise InputError(f"one prompt per session: text has batch {text.shape[0]}.")
        self.vae, self.prompt = vae, prompt
        self.router = None
        if scorer is not None:
            self.router = Router(scorer, policy or FixedTau(config.tau), config.aggregation,
                                 config.quantile, exact_preprocess=config.exact_preprocess)
        self.on_block = on_block
        self.check_interrupt = check_interrupt or (lambda: None)
        hw = config.latent_hw

        def runner(name, model):
            return None if model is None else BlockRunner(name, model, text, hw,
                                                          before_call=self.check_interrupt)

        self.drafter, self.target = runner("drafter", drafter), runner("target", target)
        self.plan = NoisePlan(config.seed, config.num_blocks, (16,) + hw)
        self.reset()

    # -- state --------------------------------------------------------------------------

    def reset(self) -> None:
        """Start the video over; makes a session reusable after an interrupt or error."""
        self.block = 0
        self.phase = "draft"
        self.latents: list[torch.Tensor] = []
        self.frames: list[torch.Tensor] = []        # per block, [T, H, W, 3] in 0..1, on the CPU
        self._last_pixels: torch.Tensor | None = None  # the last block's decoder output
        self._pixels_before_last = 0
        self.stats: list[BlockStats] = []
        self.pending = Pending()
        self._anchors: dict[int, torch.Tensor] = {}
        self.vae.reset()
        for runner in (self.drafter, self.target):
            if runner:
                runner.reset()

    def _enter(self, step: str, block: int | None) -> int:
        if self.phase == "done":
            raise SDVGError(f"all {self.config.num_blocks} blocks are committed; call reset() "
                            "or result().")
        if self.phase != step or (block is not None and block != self.block):
            raise SDVGError(f"out of order: asked to {step} block {block if block is not None else self.block}, "
                            f"but block {self.block} is waiting for '{self.phase}'.")
        self.check_interrupt()
        return self.block

    def _context(self, runner: BlockRunner, b: int) -> torch.Tensor | None:
        """Context latents for a runner; assembled (and the anchor encoded) once per block."""
        p = self.pending
        if not p.context_ready:
            committed = torch.cat(self.latents, dim=1) if self.latents else None
            p.context = None if b == 0 else context_latents(b, committed, self._anchor)
            p.context_ready = True
        return p.context

    def _pixel_frame(self, index: int) -> torch.Tensor:
        """A committed decoder frame, [B, 3, H, W] in [-1, 1], by its index in the whole stream.

        Anchors only ever need a frame of the last committed block, whose raw decoder
        output is kept for exactly that.
        """
        local = index - self._pixels_before_last
        if self._last_pixels is None or not 0 <= local < self._last_pixels.shape[1]:
            raise SDVGError(f"pixel frame {index} is not in the last committed block.")
        return self._last_pixels[:, local]

    def _anchor(self, b: int) -> torch.Tensor:
        if b not in self._anchors:
            frame = self._pixel_frame(anchor_pixel_index(b)).to(self.vae.device, self.vae.dtype)
            meter = self.pending.meter
            with meter.time("vae_encode", self.vae.device), torch.no_grad():
                self._anchors[b] = self.vae.encode_frame(frame).float()
            meter.count("vae_encode")
        return self._anchors[b]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_interrupt()
        meter = self.pending.meter
        with meter.time("vae_decode", self.vae.device), torch.no_grad():
            pixels = self.vae.decode(latents.to(self.vae.device, self.vae.dtype)).float()
        meter.count("vae_decode")
        return pixels

    def _generate(self, runner: BlockRunner, b: int, *, start_step: int = 0, x_start=None):
        step_noises = self.plan.step_noises(b)
        if x_start is None:
            x_start = self.plan.block_noise(b)
        return runner.generate(b, self._context(runner, b), step_noises, x_start,
                               self.pending.meter, start_step=start_step)

    # -- the four steps ----------------------------------------------------------------

    def draft(self, block: int | None = None) -> None:
        """The drafter proposes the block (not for target-only blocks)."""
        b = self._enter("draft", block)
        self.pending = Pending()
        if self._target_generates(b):
            self.pending.decision = "target"
        else:
            self.pending.draft = self._generate(self.drafter, b)
        self.phase = "route"

    def route(self, block: int | None = None) -> str:
        """Decode the draft and let the router accept or reject it."""
        b = self._enter("route", block)
        p = self.pending
        stats = BlockStats(block=b, decision="target")
        if p.draft is not None:
            p.vae_state = self.vae.snapshot()
            p.draft_pixels = self._decode(p.draft.latents)
            stats.draft_agreement = _cosine(p.draft.x0s[-2], p.draft.x0s[-1])
            if self.config.mode == "draft_only":
                p.decision = "accepted"
            elif self._skip_router(b, stats):
                p.decision = "skipped"
            else:
                p.decision = self._score(b, p.draft_pixels, stats)
        stats.decision = p.decision
        p.stats = stats
        self.phase = "regenerate"
        return p.decision

    def regenerate(self, block: int | None = None) -> None:
        """The target generates a block the draft did not win (lazy: nothing otherwise)."""
        b = self._enter("regenerate", block)
        p = self.pending
        if p.decision in ("accepted", "skipped"):
            p.latents, p.pixels = p.draft.latents, p.draft_pixels
        else:
            if p.vae_state is not None:
                self.vae.restore(p.vae_state)  # roll back the draft's decode
            k = self.config.hybrid_k if p.decision == "rejected" else 0
            x_start = p.draft.input_at(k) if k else None
            sample = self._generate(self.target, b, start_step=k, x_start=x_start)
            p.latents, p.pixels = sample.latents, self._decode(sample.latents)
        self.phase = "commit"

    def commit(self, block: int | None = None) -> BlockStats:
        """Keep the block's latents and pixels; the next model rebuilds its cache from them."""
        b = self._enter("commit", block)
        p = self.pending
        self.latents.append(p.latents.float())
        if self._last_pixels is not None:
            self._pixels_before_last += self._last_pixels.shape[1]
        self._last_pixels = p.pixels
        # IMAGE layout on the decoder's device, then one copy to the CPU per block.
        self.frames.append(p.pixels[0].permute(0, 2, 3, 1).add(1).div(2).clamp(0, 1).float().cpu())
        stats = p.stats
        stats.model_calls = dict(p.meter.calls)
        stats.seconds = dict(p.meter.seconds, total=time.perf_counter() - p.started)
        stats.pixel_frames = p.pixels.shape[1]
        self.stats.append(stats)
        self.pending = Pending()
        self.block += 1
        self.phase = "done" if self.block == self.config.num_blocks else "draft"
        if self.on_block is not None:
            preview = self.frames[-1][-1]
            self.on_block(BlockEvent(b, self.config.num_blocks, stats, preview))
        return stats

    def run(self) -> SDVGResult:
        """The whole video, from a clean state."""
        self.reset()
        for b in range(self.config.num_blocks):
            self.draft(b)
            self.route(b)
            self.regenerate(b)
            self.commit(b)
        return self.result()

    # -- policies ------------------------------------------------------------------------

    def _target_generates(self, b: int) -> bool:
        mode = self.config.mode
        if mode == "target_only":
            return True
        if mode == "draft_only":
            return False
        return b == 0 and self.config.force_target_first

    def _skip_router(self, b: int, stats: BlockStats) -> bool:
        """VVS-style verification skipping; never block <= 1, never two blocks in a row."""
        cfg = self.config
        if cfg.skip == "none" or b <= 1 or not self.stats or self.stats[-1].decision == "skipped":
            return False
        if cfg.skip == "uniform":
            return b % cfg.skip_every == 0
        prev = self.stats[-1]
        cleared = (prev.decision == "accepted" and prev.aggregate is not None
                   and prev.aggregate >= cfg.tau + cfg.skip_margin)
        return cleared and stats.draft_agreement >= cfg.skip_cosine

    def _score(self, b: int, pixels: torch.Tensor, stats: BlockStats) -> str:
        """Score the frames (optionally cascaded: a subset first) and decide."""
        cfg, frames = self.config, pixels[0]
        stats.tau = self.router.policy.tau

        def route(index: list[int]):
            self.check_interrupt()
            meter = self.pending.meter
            with meter.time("router", frames.device):
                result = self.router.route(frames[index], self.prompt)
            meter.count("router")
            return result

        every = list(range(frames.shape[0]))
        result, stats.scoring = None, "full"
        if cfg.cascade and cfg.cascade_frames < len(every):
            subset = route(_evenly_spaced(len(every), cfg.cascade_frames))
            if not subset.accept:  # exact: the full minimum can only be lower
                result, stats.scoring = subset, "cascade_reject"
            elif subset.aggregate >= stats.tau + cfg.cascade_margin:  # approximate
                result, stats.scoring = subset, "cascade_accept"
            else:
                stats.scoring = "cascade_full"
        result = result or route(every)
        stats.scores, stats.aggregate = list(result.scores), float(result.aggregate)
        accept = result.accept
        if cfg.accept_pattern is not None:
            accept = bool(cfg.accept_pattern[(b - 1) % len(cfg.accept_pattern)])
        return "accepted" if accept else "rejected"

    # -- output --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def result(self) -> SDVGResult:
        if not self.latents:
            raise SDVGError("no block is committed yet; run the session first.")
        frames = torch.cat(self.frames, dim=0)
        if self.config.drop_first_frames:
            frames = frames[FRAMES_PER_BLOCK:]
        latents = torch.cat(self.latents, dim=1).cpu()
        return SDVGResult(frames, latents, list(self.stats), summarize(self.stats))

    def release(self) -> None:
        """Free the KV and text caches held for this session."""
        for runner in (self.drafter, self.target):
            if runner:
                runner.release()


def _evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread over 0..n-1, both ends included."""
    if k <= 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
