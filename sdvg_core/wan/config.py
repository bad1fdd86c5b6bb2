"""Shape of a Wan 2.1 text-to-video DiT (the 1.3B, the 14B, and tiny test models)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError

# Tiny test models use 32-channel heads (real Wan uses 128). infer_config relies on this
# convention to recover the head count of a tiny checkpoint, which its weights cannot tell.
TINY_HEAD_DIM = 32
REAL_HEAD_DIM = 128


@dataclass(frozen=True)
class WanConfig:
    """Sizes of a Wan 2.1 DiT.

    RoPE constraint: ``head_dim = dim // num_heads`` must be even and at least 6, because
    Wan splits the ``head_dim / 2`` rotary pairs into temporal / height / width groups of
    ``head_dim/2 - 2*(head_dim//6)``, ``head_dim//6`` and ``head_dim//6`` pairs (22/21/21
    for head_dim 128). An odd head_dim cannot be cut into pairs; below 6 the height and
    width groups would be empty.
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch_size: tuple = (1, 2, 2)
    eps: float = 1e-6

    def __post_init__(self):
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim",
                     "text_dim", "freq_dim", "text_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"WanConfig.{name} must be a positive integer, got {value!r}.")
        # Normalise to a tuple so configs compare equal whatever sequence was passed.
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise InputError(f"WanConfig.patch_size must be three positive integers, got {self.patch_size}.")
        if self.patch_size[0] != 1:
            # Per-frame timesteps and frame slots assume one latent frame per token frame (Wan 2.1).
            raise InputError(f"WanConfig.patch_size must have temporal size 1 (Wan 2.1), got {self.patch_size}.")
        if self.dim % self.num_heads:
            raise InputError(
                f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}; "
                "choose a head count that divides dim.")
        hd = self.dim // self.num_heads
        if hd % 2 or hd < 6:
            raise InputError(
                f"WanConfig: head_dim {hd} (dim {self.dim} / {self.num_heads} heads) must be even and >= 6 "
                "for Wan's 3-axis RoPE split; change num_heads.")
        if self.freq_dim % 2:
            raise InputError(f"WanConfig.freq_dim must be even (sin/cos halves), got {self.freq_dim}.")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def rope_pairs(self) -> tuple[int, int, int]:
        """Rotary pairs per axis (temporal, height, width), as Wan splits them."""
        third = self.head_dim // 6
        return self.head_dim // 2 - 2 * third, third, third

    @property
    def patch_channels(self) -> int:
        """Values one output token unpatchifies into (out_dim * patch volume)."""
        return self.out_dim * math.prod(self.patch_size)

    def frame_tokens(self, h: int, w: int) -> int:
        """Tokens per latent frame for a latent of height h and width w."""
        _, ph, pw = self.patch_size
        if h <= 0 or w <= 0 or h % ph or w % pw:
            raise InputError(
                f"latent size {h}x{w} must be positive and divisible by the patch size {ph}x{pw}; "
                f"use a pixel size that is a multiple of {8 * ph}x{8 * pw}.")
        return (h // ph) * (w // pw)

    @classmethod
    def wan_1_3b(cls) -> "WanConfig":
        """Wan2.1-T2V-1.3B (Self-Forcing drafter)."""
        return cls(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)

    @classmethod
    def wan_14b(cls) -> "WanConfig":
        """Wan2.1-T2V-14B (Krea Realtime target)."""
        return cls(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

    @classmethod
    def tiny(cls, dim: int = 64, num_heads: int | None = None, num_layers: int = 2,
             ffn_dim: int = 128, text_dim: int = 32, **overrides) -> "WanConfig":
        """A test-size config of the real architecture.

        num_heads defaults to ``dim // 32`` (the tiny-model head_dim convention that
        infer_config assumes); head_dim must stay even and >= 6 (see the class docstring).
        """
        if num_heads is None:
            if dim % TINY_HEAD_DIM:
                raise InputError(f"WanConfig.tiny: dim {dim} is not a multiple of {TINY_HEAD_DIM}; pass num_heads.")
            num_heads = dim // TINY_HEAD_DIM
        return cls(dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=num_layers,
                   text_dim=text_dim, **overrides)
