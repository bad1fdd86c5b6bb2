"""Causal Wan 2.1 DiT with a frame-slotted self-attention KV cache.

Same network as the original Wan code (and diffusers' ``WanTransformer3DModel``), with the
original parameter names, plus two caches for block-autoregressive generation:

- ``TextCache``: every layer's cross-attention K/V of the (zero-padded) text, built once per
  video by ``encode_text``.
- ``KVCache``: every layer's roped self-attention K/V, in frame slots. A cached forward writes
  its own K/V into slots ``[slot, slot+F)`` and attends, unmasked, to slots ``[0, slot+F)``.

Precision follows Wan: matmuls and attention run in ``compute_dtype`` (bf16 on GPU, float32 on
CPU); the residual stream, LayerNorms, RMSNorm statistics, modulation, the timestep MLP and the
output head run in float32. Linear weights may be stored as float8_e4m3fn (optionally with a
per-tensor ``scale_weight``); each layer upcasts its own weight at call time only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import InputError
from .config import WanConfig

ROPE_THETA = 10000.0
_ROPE_TABLES_KEPT = 32


# ----------------------------------------------------------------------------- caches


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
        return 2 * cfg.num_layers * batch * capacity_frames * frame_tokens * cfg.dim * _itemsize(dtype)


@dataclass
class TextCache:
    """Per-layer cross-attention K/V of the text, ``[B, heads, text_len, head_dim]`` each."""

    k: list[Tensor]
    v: list[Tensor]

    @staticmethod
    def bytes_for(cfg: WanConfig, batch: int, dtype: torch.dtype) -> int:
        """What ``encode_text`` keeps: K and V of the padded text, every layer."""
        return 2 * cfg.num_layers * batch * cfg.text_len * cfg.dim * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- math helpers


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Wan's timestep embedding: float64, ``[cos, sin]`` halves, base 10000. t: [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_table(cfg: WanConfig, frames: int, height: int, width: int, frame_start: int,
               device: torch.device) -> Tensor:
    """Complex RoPE factors for a (frames x height x width) token grid, ``[L, 1, head_dim/2]``.

    Angles are built in float64 (as Wan does) with each axis using its own base dimension
    (twice its pair count); temporal positions are ``frame_start .. frame_start+frames-1``.
    Stored as complex64: the rotation itself runs in float32.
    """
    def axis_angles(positions: Tensor, pairs: int) -> Tensor:
        base = 2 * pairs
        omega = 1.0 / ROPE_THETA ** (torch.arange(0, base, 2, dtype=torch.float64, device=device) / base)
        return torch.outer(positions.to(torch.float64), omega)

    pt, ph, pw = cfg.rope_pairs
    at = axis_angles(torch.arange(frame_start, frame_start + frames, device=device), pt)
    ah = axis_angles(torch.arange(height, device=device), ph)
    aw = axis_angles(torch.arange(width, device=device), pw)
    angles = torch.cat([
        at.view(frames, 1, 1, pt).expand(frames, height, width, pt),
        ah.view(1, height, 1, ph).expand(frames, height, width, ph),
        aw.view(1, 1, width, pw).expand(frames, height, width, pw),
    ], dim=-1).reshape(frames * height * width, 1, -1)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x ``[B, L, heads, head_dim]`` by ``table``; keeps x's dtype."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """Parameter-free LayerNorm in float32 (Wan's norm1 / norm2 / head.norm)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def modulate(h: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """``h * (1 + scale) + shift`` with per-frame shift/scale ``[B, F, 1, dim]`` on tokens ``[B, L, dim]``."""
    b, n, d = h.shape
    return (h.view(b, frames, n // frames, d) * (1 + scale) + shift).view(b, n, d)


def gate(y: Tensor, g: Tensor, frames: int) -> Tensor:
    """``y * g`` in float32 with a per-frame gate ``[B, F, 1, dim]``."""
    b, n, d = y.shape
    return (y.float().view(b, frames, n // frames, d) * g).view(b, n, d)


# ----------------------------------------------------------------------------- layers


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


class WanAttention(nn.Module):
    """Wan attention parameters (q, k, v, o, norm_q, norm_k); self- and cross-attention."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = WanLinear(dim, dim)
        self.k = WanLinear(dim, dim)
        self.v = WanLinear(dim, dim)
        self.o = WanLinear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, -1))  # [B, L, dim] -> [B, L, heads, head_dim]

    def _out(self, attn: Tensor) -> Tensor:
        return self.o(attn.transpose(1, 2).flatten(2))  # [B, heads, L, hd] -> [B, L, dim]

    def self_attention(self, x: Tensor, rope: Tensor, attn_mask: Tensor | None,
                       cache_k: Tensor | None, cache_v: Tensor | None, write: slice | None) -> Tensor:
        """x ``[B, L, dim]`` in compute dtype. With a cache: write K/V at ``write``, attend to ``[:write.stop]``."""
        q = apply_rope(self._heads(self.norm_q(self.q(x))), rope).transpose(1, 2)
        k = apply_rope(self._heads(self.norm_k(self.k(x))), rope).transpose(1, 2)
        v = self._heads(self.v(x)).transpose(1, 2)
        if cache_k is not None:
            cache_k[:, :, write] = k
            cache_v[:, :, write] = v
            k, v = cache_k[:, :, :write.stop], cache_v[:, :, :write.stop]
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))

    def text_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention K/V of embedded text ``[B, L, dim]`` -> two ``[B, heads, L, hd]``."""
        k = self._heads(self.norm_k(self.k(context))).transpose(1, 2).contiguous()
        v = self._heads(self.v(context)).transpose(1, 2).contiguous()
        return k, v

    def cross_attention(self, x: Tensor, text_k: Tensor, text_v: Tensor) -> Tensor:
        q = self._heads(self.norm_q(self.q(x))).transpose(1, 2)
        return self._out(F.scaled_dot_product_attention(q, text_k, text_v))


@dataclass
class _Pass:
    """What every block needs to know about the current forward call."""

    frames: int
    rope: Tensor
    dtype: torch.dtype
    attn_mask: Tensor | None
    write: slice | None


class WanBlock(nn.Module):
    """One Wan DiT block: modulated self-attention, normed cross-attention, modulated FFN."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)
        self.self_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = WanLayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(WanLinear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 WanLinear(cfg.ffn_dim, cfg.dim))

    def forward(self, x: Tensor, e0: Tensor, p: _Pass, text_k: Tensor, text_v: Tensor,
                cache_k: Tensor | None, cache_v: Tensor | None) -> Tensor:
        """x: float32 residual ``[B, L, dim]``; e0: ``[B, F, 6, dim]`` float32."""
        # Six per-frame [B, F, 1, dim] vectors: shift/scale/gate for attention, then for the FFN.
        m = (self.modulation.float().unsqueeze(1) + e0).unsqueeze(3).unbind(2)
        h = modulate(layer_norm(x, self.eps), m[0], m[1], p.frames).to(p.dtype)
        x = x + gate(self.self_attn.self_attention(h, p.rope, p.attn_mask, cache_k, cache_v, p.write),
                     m[2], p.frames)
        x = x + self.cross_attn.cross_attention(self.norm3(x).to(p.dtype), text_k, text_v).float()
        h = modulate(layer_norm(x, self.eps), m[3], m[4], p.frames).to(p.dtype)
        return x + gate(self.ffn(h), m[5], p.frames)


class WanHead(nn.Module):
    """Output head: modulated parameter-free LayerNorm then a Linear to patch values."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = WanLinear(cfg.dim, cfg.patch_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: Tensor, e: Tensor, frames: int) -> Tensor:
        """x float32 ``[B, L, dim]``; e: the time embedding BEFORE time_projection, ``[B, F, dim]``."""
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).unsqueeze(3).unbind(2)
        # Wan runs the head in float32.
        return self.head(modulate(layer_norm(x, self.eps), shift, scale, frames))


# ----------------------------------------------------------------------------- model


class CausalWanModel(nn.Module):
    """Wan 2.1 text-to-video DiT with block KV caching (original Wan parameter names).

    ``compute_dtype`` (default float32) is the dtype of matmuls and attention; set it to
    torch.bfloat16 on a GPU (``load_wan`` sets it from its ``dtype``). Weights may be stored
    in another dtype (fp8 included): each layer casts its weight at call time. Do not call
    ``.to(dtype)`` on a model with fp8 weights (it would upcast them all); ``.to(device)`` is fine.
    """

    def __init__(self, cfg: WanConfig, *, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(WanLinear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            WanLinear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(WanLinear(cfg.freq_dim, cfg.dim), nn.SiLU(), WanLinear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), WanLinear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self._rope_tables: OrderedDict[tuple, Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def encode_text(self, context: Tensor) -> TextCache:
        """Cross-attention K/V of every layer for a text embedding ``[B, L <= text_len, text_dim]``.

        The text is zero-padded to ``text_len`` (512) tokens before ``text_embedding``, as Wan does;
        the padded tokens are attended to like the others.
        """
        cfg = self.cfg
        if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
            raise InputError(
                f"text context must be [batch, tokens, {cfg.text_dim}], got {tuple(context.shape)}; "
                "pass the umT5-XXL embedding of the prompt.")
        if context.shape[1] > cfg.text_len:
            raise InputError(
                f"text context has {context.shape[1]} tokens, more than the model's {cfg.text_len}; "
                f"truncate the prompt embedding to {cfg.text_len} tokens.")
        padded = F.pad(context.to(self.device, self.compute_dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        embedded = self.text_embedding(padded)
        kv = [block.cross_attn.text_kv(embedded) for block in self.blocks]
        return TextCache(k=[k for k, _ in kv], v=[v for _, v in kv])

    # ------------------------------------------------------------------ cache

    def new_cache(self, batch: int, capacity_frames: int, frame_tokens: int, *,
                  dtype: torch.dtype | None = None, device=None) -> KVCache:
        """Allocate an empty self-attention cache (dtype defaults to compute_dtype, device to the model's)."""
        if batch <= 0 or capacity_frames <= 0 or frame_tokens <= 0:
            raise InputError(
                f"new_cache needs positive batch, capacity_frames and frame_tokens, got "
                f"{batch}, {capacity_frames}, {frame_tokens}.")
        cfg = self.cfg
        shape = (batch, cfg.num_heads, capacity_frames * frame_tokens, cfg.head_dim)
        kw = dict(dtype=dtype or self.compute_dtype, device=device if device is not None else self.device)
        return KVCache(k=[torch.empty(shape, **kw) for _ in range(cfg.num_layers)],
                       v=[torch.empty(shape, **kw) for _ in range(cfg.num_layers)],
                       frame_tokens=frame_tokens, capacity_frames=capacity_frames)

    def _rope(self, frames: int, height: int, width: int, frame_start: int) -> Tensor:
        key = (frames, height, width, frame_start, self.device)
        table = self._rope_tables.get(key)
        if table is None:
            table = rope_table(self.cfg, frames, height, width, frame_start, self.device)
            self._rope_tables[key] = table
            if len(self._rope_tables) > _ROPE_TABLES_KEPT:
                self._rope_tables.popitem(last=False)
        else:
            self._rope_tables.move_to_end(key)
        return table

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def forward(self, x: Tensor, timestep: Tensor, text: TextCache, cache: KVCache | None = None, *,
                slot: int = 0, rope_start: int = 0, attn_mask: Tensor | None = None) -> Tensor:
        """Predict the flow v for latents ``x [B, F, C, H, W]`` at per-frame ``timestep [B, F]`` (0..1000).

        Without a cache: attention over x's own tokens (``attn_mask``, a boolean ``[L, L]`` with
        True = may attend, is optional). With a cache: this call's roped K/V overwrite frame slots
        ``[slot, slot+F)`` and the queries attend, unmasked, to slots ``[0, slot+F)``. RoPE temporal
        positions are ``rope_start .. rope_start+F-1``. Returns float32 ``[B, F, C, H, W]``.
        """
        cfg = self.cfg
        b, frames, _, height, width = self._check_latents(x)
        timestep = self._check_timestep(timestep, b, frames)
        self._check_text(text, b)
        _, ph, pw = cfg.patch_size
        gh, gw = height // ph, width // pw
        tokens = frames * gh * gw
        if rope_start < 0:
            raise InputError(f"rope_start must be >= 0, got {rope_start}.")
        write = None
        if cache is not None:
            if attn_mask is not None:
                raise InputError("attn_mask is only for cache-free calls; a cached call attends to its slots unmasked.")
            write = self._check_cache(cache, b, frames, gh * gw, slot, self.device)
        elif attn_mask is not None:
            if attn_mask.dtype != torch.bool or tuple(attn_mask.shape) != (tokens, tokens):
                raise InputError(
                    f"attn_mask must be a boolean [{tokens}, {tokens}] tensor (True = may attend), "
                    f"got {attn_mask.dtype} {tuple(attn_mask.shape)}.")
            attn_mask = attn_mask.to(self.device)

        dtype = self.compute_dtype
        p = _Pass(frames=frames, rope=self._rope(frames, gh, gw, rope_start), dtype=dtype,
                  attn_mask=attn_mask, write=write)

        # Patch embedding: kernel == stride, so the Conv3d is a Linear over flattened patches.
        patches = rearrange(x.to(self.device, dtype), "b f c (h ph) (w pw) -> b (f h w) (c ph pw)", ph=ph, pw=pw)
        pe = self.patch_embedding
        h = F.linear(patches, pe.weight.flatten(1).to(dtype), pe.bias.to(dtype)).float()

        # Time embedding in float32 (as Wan); one embedding per frame.
        e = self.time_embedding(sinusoidal_embedding(timestep.flatten(), cfg.freq_dim).float())
        e0 = self.time_projection(e).view(b, frames, 6, cfg.dim)
        e = e.view(b, frames, cfg.dim)

        for i, block in enumerate(self.blocks):
            ck = cache.k[i] if cache is not None else None
            cv = cache.v[i] if cache is not None else None
            h = block(h, e0, p, text.k[i], text.v[i], ck, cv)
        if cache is not None:
            cache.filled[slot:slot + frames] = [True] * frames

        out = self.head(h, e, frames)
        return rearrange(out, "b (f h w) (ph pw c) -> b f c (h ph) (w pw)", f=frames, h=gh, w=gw, ph=ph, pw=pw)

    # ------------------------------------------------------------------ argument checks

    def _check_latents(self, x: Tensor) -> tuple[int, int, int, int, int]:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[2] != cfg.in_dim:
            raise InputError(
                f"latents must be [batch, frames, {cfg.in_dim}, height, width], got {tuple(x.shape)}; "
                "ComfyUI LATENT samples are [B, C, F, H, W]: move the channel axis after frames.")
        cfg.frame_tokens(x.shape[3], x.shape[4])  # raises on sizes the patch does not divide
        return tuple(x.shape)

    def _check_timestep(self, timestep: Tensor, b: int, frames: int) -> Tensor:
        timestep = torch.as_tensor(timestep, device=self.device)
        if timestep.ndim == 1 and timestep.shape[0] == b:
            timestep = timestep[:, None].expand(b, frames)  # one timestep per sample
        if tuple(timestep.shape) != (b, frames):
            raise InputError(
                f"timestep must be [batch, frames] = [{b}, {frames}] (one value per latent frame), "
                f"got {tuple(timestep.shape)}.")
        return timestep

    def _check_text(self, text: TextCache, b: int) -> None:
        if len(text.k) != self.cfg.num_layers or text.k[0].shape[0] != b:
            raise InputError(
                f"text cache has {len(text.k)} layers and batch {text.k[0].shape[0] if text.k else 0}; "
                f"this model needs {self.cfg.num_layers} layers and batch {b}: build it with this model's encode_text.")

    def _check_cache(self, cache: KVCache, b: int, frames: int, frame_tokens: int, slot: int,
                     device: torch.device) -> slice:
        if cache.frame_tokens != frame_tokens:
            raise InputError(
                f"KV cache holds {cache.frame_tokens} tokens per frame but these latents have {frame_tokens}; "
                "allocate the cache with new_cache for this resolution.")
        if len(cache.k) != self.cfg.num_layers or cache.k[0].shape[0] != b:
            raise InputError(
                f"KV cache has {len(cache.k)} layers and batch {cache.k[0].shape[0]}; this call needs "
                f"{self.cfg.num_layers} layers and batch {b}: allocate it with this model's new_cache.")
        if slot < 0 or slot + frames > cache.capacity_frames:
            raise InputError(
                f"frames [{slot}, {slot + frames}) do not fit a KV cache of {cache.capacity_frames} frames; "
                "use a smaller slot or a bigger capacity_frames.")
        if cache.k[0].dtype != self.compute_dtype or cache.k[0].device != device:
            raise InputError(
                f"KV cache is {cache.k[0].dtype} on {cache.k[0].device}, the model computes in "
                f"{self.compute_dtype} on {device}: allocate it with new_cache().")
        empty = [f for f in range(slot) if not cache.filled[f]]
        if empty:
            raise InputError(
                f"KV cache frame slots {empty} were never written since the last reset, but a pass at slot "
                f"{slot} attends to them: run the context pass first (slot 0).")
        start = slot * frame_tokens
        return slice(start, start + frames * frame_tokens)
