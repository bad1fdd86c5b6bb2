"""One Wan model generating blocks in the window cache regime (docs/algorithm.md, 2.1 and 2.3).

A runner owns what a model needs across the blocks of one video: its self-attention KV cache
(6 latent frames: 3 context + 3 current) and each prompt's cross-attention K/V, computed once
per video and prompt, lazily: a target that never runs never encodes a text, and a prompt
schedule's later prompts are encoded when their first block comes. The model itself stays
stateless, so drafter and target modules can be shared between sessions.
"""

from __future__ import annotations

from typing import Callable

import torch

from .finite import check_finite
from .schedule import FRAMES_PER_BLOCK, BlockSample, NoisePlan, denoise_block
from .stats import Meter
from .wan.caches import KVCache, TextCache

WINDOW_FRAMES = 2 * FRAMES_PER_BLOCK


def cache_bytes(cfg, latent_hw: tuple[int, int], dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of one runner's caches: the 6-frame self-attention window and the text K/V."""
    frame_tokens = cfg.frame_tokens(*latent_hw)
    return (KVCache.bytes_for(cfg, batch, WINDOW_FRAMES, frame_tokens, dtype)
            + TextCache.bytes_for(cfg, batch, dtype))


class BlockRunner:
    def __init__(self, name: str, model, texts: list[torch.Tensor], latent_hw: tuple[int, int], *,
                 before_call: Callable[[], None] | None = None):
        """``model``: a CausalWanModel, or any object with its interface (cfg, device,
        compute_dtype, encode_text, new_cache, and the cached forward call). ``texts``: the
        embedding of each prompt of the video's schedule, ``[1, L, text_dim]`` each."""
        self.name = name
        self.model = model
        self.texts = texts
        self.latent_hw = latent_hw
        self.before_call = before_call or (lambda: None)
        self._text_caches: dict[int, object] = {}
        self._kv = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.compute_dtype

    def reset(self) -> None:
        """Forget the texts of the previous video (the KV cache is rebuilt before every use)."""
        self._text_caches = {}

    def release(self) -> None:
        """Free the caches (their memory is not tracked by any host)."""
        self._text_caches = {}
        self._kv = None

    def _prepare(self, segment: int, meter: Meter):
        """The segment's text K/V (encoded on first use) and a KV cache on the model's device."""
        if segment not in self._text_caches:
            with meter.time(self.name, self.device), torch.no_grad():
                self._text_caches[segment] = self.model.encode_text(self.texts[segment].to(self.device, self.dtype))
        if self._kv is not None and self._kv.k[0].device != self.device:
            self._kv = None  # the host moved the model since the cache was made
        if self._kv is None:
            frame_tokens = self.model.cfg.frame_tokens(*self.latent_hw)
            self._kv = self.model.new_cache(1, WINDOW_FRAMES, frame_tokens, dtype=self.dtype, device=self.device)
        return self._text_caches[segment]

    def _forward(self, block: int, text, x: torch.Tensor, t: float, slot: int, meter: Meter,
                 what: str = "") -> torch.Tensor:
        self.before_call()
        timestep = torch.full(x.shape[:2], float(t), device=self.device)
        with meter.time(self.name, self.device), torch.no_grad():
            v = self.model(x.to(self.device, self.dtype), timestep, text, self._kv, slot=slot, rope_start=slot)
        meter.count(self.name)
        check_finite(v, self.name, block, dtype=self.dtype, what=what or f"the denoising pass at t={t:g}",
                     source=getattr(self.model, "source", None))
        return v.float()

    def generate(self, block: int, context: torch.Tensor | None, plan: NoisePlan, meter: Meter, *,
                 segment: int = 0, start_step: int = 0, x_start: torch.Tensor | None = None) -> BlockSample:
        """Context pass (when there is context), then denoising passes ``start_step..4``, all
        conditioned on the prompt ``segment``. ``x_start`` enters pass ``start_step``; by default
        the block's initial noise from ``plan``."""
        slot = self.context_pass(block, context, meter, segment=segment)
        if x_start is None:
            x_start = plan.block_noise(block)
        return self.denoise(block, slot, plan.step_noises(block), x_start, meter, segment=segment,
                            start_step=start_step)

    def context_pass(self, block: int, context: torch.Tensor | None, meter: Meter, *, segment: int = 0) -> int:
        """Wipe-and-refill: the clean context frames at t = 0, positions 0..2, into slots 0..2.
        Returns the slot the block's own frames go to (0 without context)."""
        text = self._prepare(segment, meter)
        if context is None:
            return 0
        self._forward(block, text, context, 0.0, 0, meter, "the context pass")
        return context.shape[1]

    def denoise(self, block: int, slot: int, step_noises: torch.Tensor, x_start: torch.Tensor, meter: Meter, *,
                segment: int = 0, start_step: int = 0) -> BlockSample:
        """The denoising passes of a block whose frames sit at ``slot`` (after ``context_pass``)."""
        text = self._prepare(segment, meter)
        return denoise_block(lambda x, t: self._forward(block, text, x, t, slot, meter), step_noises,
                             x_start.to(self.device, torch.float32), start_step=start_step)
