"""The engine's own Wan 2.1 DiT module tree (original Wan parameter names) and its leaf layers.

The math is in ``forward.WanNetwork``, which runs on this tree or on a host's. This module
holds the parameters: leaf layers that cast their weight to their input's dtype at call time
(``WanLinear`` also dequantises fp8 weights with an optional ``scale_weight``), and plain
containers named as in Wan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .caches import KVCache, TextCache
from .config import WanConfig
from .forward import WanNetwork


class WanLinear(nn.Linear):
    """``nn.Linear`` that computes in its input's dtype, whatever its weight is stored in.

    The weight may be float32 / bf16 / fp16 or float8_e4m3fn. An fp8 weight may carry a
    per-tensor (or per-output-row) ``scale_weight``; it is dequantised the way ComfyUI's
    scaled-fp8 ops do, ``weight.to(dtype) * scale_weight``, for this call only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("scale_weight", None)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        if self.scale_weight is not None:
            s = self.scale_weight.to(x.dtype)
            w = w * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return F.linear(x, w, b)


class WanRMSNorm(nn.Module):
    """Wan's RMSNorm over the full channel dim: statistics in float32, weight in x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class WanLayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in float32 (Wan's norm3); returns float32."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class WanConv3d(nn.Conv3d):
    """The patch embedding's Conv3d, computing in its input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class WanAttention(nn.Module):
    """Wan attention parameters (q, k, v, o, norm_q, norm_k); self- and cross-attention."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.q = WanLinear(dim, dim)
        self.k = WanLinear(dim, dim)
        self.v = WanLinear(dim, dim)
        self.o = WanLinear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)


class WanBlock(nn.Module):
    """One Wan DiT block: modulation, self-attention, norm3, cross-attention, FFN."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)
        self.self_attn = WanAttention(cfg.dim, cfg.eps)
        self.norm3 = WanLayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanAttention(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(WanLinear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 WanLinear(cfg.ffn_dim, cfg.dim))


class WanHead(nn.Module):
    """Output head: a Linear to patch values and its modulation."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.head = WanLinear(cfg.dim, cfg.patch_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)


class CausalWanModel(nn.Module):
    """Wan 2.1 text-to-video DiT with block KV caching (original Wan parameter names).

    ``compute_dtype`` (default float32) is the dtype of matmuls and attention; set it to
    torch.bfloat16 on a GPU (``load_wan`` sets it from its ``dtype``). Weights may be stored
    in another dtype (fp8 included): each layer casts its weight at call time. Do not call
    ``.to(dtype)`` on a model with fp8 weights (it would upcast them all); ``.to(device)`` is fine.
    Calls go to ``self.network`` (sdvg_core/wan/forward.py), the forward any Wan tree runs.
    """

    def __init__(self, cfg: WanConfig, *, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.source: str | None = None  # the file the weights came from, named in errors
        self.patch_embedding = WanConv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(WanLinear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            WanLinear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(WanLinear(cfg.freq_dim, cfg.dim), nn.SiLU(), WanLinear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), WanLinear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self._network = None

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def network(self) -> WanNetwork:
        if self._network is None or self._network.compute_dtype != self.compute_dtype:
            self._network = WanNetwork(self, self.cfg, device=lambda: self.device,
                                       compute_dtype=self.compute_dtype, source=self.source)
        self._network.source = self.source
        return self._network

    def encode_text(self, context: Tensor) -> TextCache:
        return self.network.encode_text(context)

    def new_cache(self, batch: int, capacity_frames: int, frame_tokens: int, *,
                  dtype: torch.dtype | None = None, device=None) -> KVCache:
        return self.network.new_cache(batch, capacity_frames, frame_tokens, dtype=dtype, device=device)

    def forward(self, x: Tensor, timestep: Tensor, text: TextCache, cache: KVCache | None = None, *,
                slot: int = 0, rope_start: int = 0, attn_mask: Tensor | None = None) -> Tensor:
        """See ``WanNetwork.__call__``."""
        return self.network(x, timestep, text, cache, slot=slot, rope_start=rope_start, attn_mask=attn_mask)
