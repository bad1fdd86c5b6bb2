"""The two caches of block-autoregressive generation: text K/V per video, self-attention K/V in frame slots."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InputError
from .config import WanConfig


@dataclass
class KVCache:
    """Per-layer self-attention K/V in frame slots.

    Layout: ``k[i]`` and ``v[i]`` are ``[B, heads, capacity_frames * frame_tokens, head_dim]``,
    the layout ``scaled_dot_product_attention`` consumes: a slot write is one strided copy and
    the keys a pass attends to, ``[:, :, :end]``, are a view (no concatenation, no copy).
    K is stored after RoPE, so a slot keeps the temporal position it was written with.
    ``filled[f]`` says whether frame slot f was written since the last ``reset``; a pass that
    would attend to an unwritten slot is refused.
    """

    k: list[Tensor]
    v: list[Tensor]
    frame_tokens: int
    capacity_frames: int
    filled: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if not self.filled:
            self.filled = [False] * self.capacity_frames

    def reset(self) -> None:
        """Mark every slot empty (the data is overwritten before it can be read again)."""
        self.filled = [False] * self.capacity_frames

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    @staticmethod
    def bytes_for(cfg: WanConfig, batch: int, capacity_frames: int, frame_tokens: int,
                  dtype: torch.dtype) -> int:
        """What ``new_cache`` allocates for these sizes: K and V, every layer."""
        return 2 * cfg.num_layers * batch * capacity_frames * frame_tokens * cfg.dim * itemsize(dtype)


@dataclass
class TextCache:
    """Per-layer cross-attention K/V of the text, ``[B, heads, text_len, head_dim]`` each."""

    k: list[Tensor]
    v: list[Tensor]

    @staticmethod
    def bytes_for(cfg: WanConfig, batch: int, dtype: torch.dtype) -> int:
        """What ``encode_text`` keeps: K and V of the padded text, every layer."""
        return 2 * cfg.num_layers * batch * cfg.text_len * cfg.dim * itemsize(dtype)


def new_cache(cfg: WanConfig, batch: int, capacity_frames: int, frame_tokens: int, *,
              dtype: torch.dtype, device) -> KVCache:
    """An empty self-attention cache for a model of ``cfg``."""
    if batch <= 0 or capacity_frames <= 0 or frame_tokens <= 0:
        raise InputError(
            f"new_cache needs positive batch, capacity_frames and frame_tokens, got "
            f"{batch}, {capacity_frames}, {frame_tokens}.")
    shape = (batch, cfg.num_heads, capacity_frames * frame_tokens, cfg.head_dim)
    return KVCache(k=[torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)],
                   v=[torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)],
                   frame_tokens=frame_tokens, capacity_frames=capacity_frames)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
