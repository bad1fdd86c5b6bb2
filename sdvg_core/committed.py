"""What a video has committed so far, and the context the next block re-reads from it.

The committed latents are what "commit to the KV cache" means in the window regime: the next
model to run rebuilds its cache from them (docs/algorithm.md, section 2.1). The raw decoder
frames of the last block are kept for exactly one purpose, the next block's anchor frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import SDVGError
from .schedule import anchor_pixel_index, context_latents
from .stats import Meter


class CommittedVideo:
    def __init__(self, vae):
        self.vae = vae  # StreamingVAE interface: encode_frame, device, dtype
        self.reset()

    def reset(self) -> None:
        self.latents: list[Tensor] = []   # per block, [B, 3, 16, h, w] normalised, float32
        self.frames: list[Tensor] = []    # per block, [T, H, W, 3] in 0..1 on the CPU (IMAGE layout)
        self._last_pixels: Tensor | None = None  # the last block's decoder output, [B, T, 3, H, W]
        self._pixels_before_last = 0

    @property
    def blocks(self) -> int:
        return len(self.latents)

    def context(self, block: int, meter: Meter) -> Tensor | None:
        """The 3 clean latent frames a model re-reads before generating ``block`` (None for block 0)."""
        if block == 0:
            return None
        committed = torch.cat(self.latents, dim=1)
        return context_latents(block, committed, lambda b: self._anchor(b, meter))

    def commit(self, latents: Tensor, pixels: Tensor) -> None:
        """Keep a block: its latents, its frames in IMAGE layout, its raw frames for the next anchor."""
        self.latents.append(latents.float())
        if self._last_pixels is not None:
            self._pixels_before_last += self._last_pixels.shape[1]
        self._last_pixels = pixels
        # IMAGE layout on the decoder's device, then one copy to the CPU per block.
        self.frames.append(pixels[0].permute(0, 2, 3, 1).add(1).div(2).clamp(0, 1).float().cpu())

    def _anchor(self, block: int, meter: Meter) -> Tensor:
        """The re-encoded last pixel frame of latent 3b-3, which is in the last committed block."""
        index = anchor_pixel_index(block) - self._pixels_before_last
        if self._last_pixels is None or not 0 <= index < self._last_pixels.shape[1]:
            raise SDVGError(f"the anchor of block {block} is not in the last committed block.")
        frame = self._last_pixels[:, index].to(self.vae.device, self.vae.dtype)
        with meter.time("vae_encode", self.vae.device), torch.no_grad():
            anchor = self.vae.encode_frame(frame).float()
        meter.count("vae_encode")
        return anchor
