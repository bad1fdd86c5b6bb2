"""One Wan model generating blocks in the window cache regime (spec section 2, steps 1 and 3).

A runner owns what a model needs across blocks of one video: its self-attention KV cache
(6 latent frames: 3 context + 3 current), the text's cross-attention K/V (computed once per
video, lazily: a target that never runs never encodes the text), and a call counter. The
model itself stays stateless, so drafter and target modules can be shared between sessions.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import NumericalError
from .schedule import FRAMES_PER_BLOCK, BlockSample, denoise_block
from .stats import Meter

WINDOW_FRAMES = 2 * FRAMES_PER_BLOCK


class BlockRunner:
    def __init__(self, name: str, model: torch.nn.Module, text: torch.Tensor,
                 latent_hw: tuple[int, int], *, before_call: Callable[[], None] | None = None):
        self.name = name
        self.model = model
        self.text = text
        self.latent_hw = latent_hw
        self.before_call = before_call or (lambda: None)
        self._text_cache = None
        self._kv = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.model, "compute_dtype", None) or next(self.model.parameters()).dtype

    def reset(self) -> None:
        """Forget the text of the previous video (the KV cache is rebuilt before every use)."""
        self._text_cache = None

    def release(self) -> None:
        """Free the caches (their memory is not tracked by any host)."""
        self._text_cache = None
        self._kv = None

    def _prepare(self, meter: Meter) -> None:
        if self._text_cache is None:
            with meter.time(self.name, self.device), torch.no_grad():
                self._text_cache = self.model.encode_text(self.text.to(self.device, self.dtype))
        if self._kv is not None and self._kv.k[0].device != self.device:
            self._kv = None  # the host moved the model since the cache was made
        if self._kv is None:
            h, w = self.latent_hw
            frame_tokens = self.model.cfg.frame_tokens(h, w)
            self._kv = self.model.new_cache(self.text.shape[0], WINDOW_FRAMES, frame_tokens,
                                            dtype=self.dtype, device=self.device)

    def _forward(self, x: torch.Tensor, t: float, slot: int, meter: Meter) -> torch.Tensor:
        self.before_call()
        timestep = torch.full(x.shape[:2], float(t), device=self.device)
        with meter.time(self.name, self.device), torch.no_grad():
            v = self.model(x.to(self.device, self.dtype), timestep, self._text_cache, self._kv,
                           slot=slot, rope_start=slot)
        meter.count(self.name)
        return v.float()

    def generate(self, block: int, context: torch.Tensor | None, step_noises: torch.Tensor,
                 x_start: torch.Tensor, meter: Meter, *, start_step: int = 0) -> BlockSample:
        """Context pass (when there is context), then the denoising passes of one block."""
        self._prepare(meter)
        slot = 0
        if context is not None:
            # Wipe-and-refill: the 3 clean context frames at t = 0, positions 0..2.
            self._forward(context, 0.0, 0, meter)
            slot = context.shape[1]
        sample = denoise_block(lambda x, t: self._forward(x, t, slot, meter),
                               step_noises, x_start.to(self.device, torch.float32),
                               start_step=start_step)
        if not torch.isfinite(sample.latents).all():
            raise NumericalError(
                f"The {self.name} produced NaN/Inf latents in block {block}. With float16 "
                f"weights this is usually an overflow: load the model in bfloat16 or float32.")
        return sample
