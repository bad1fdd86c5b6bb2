"""The causal Wan 2.1 forward with a frame-slot KV cache, over any module tree with Wan's names.

``WanNetwork`` runs docs/algorithm.md, section 4 on a module tree whose submodules carry Wan
2.1's original names: the engine's own ``CausalWanModel``, or a host's (ComfyUI's ``WanModel``
inside a ``MODEL``, whose layers cast, dequantise, apply LoRA patches or stream their weights
from the CPU on every call). Every weight is reached through a call of the module that owns
it; the only raw parameters, the per-block and head ``modulation``, go through ``raw()``,
which moves them to the compute device and dtype. No weight is copied.

Precision follows Wan: matmuls and attention in ``compute_dtype``; the residual stream,
LayerNorms, RMSNorm statistics and the modulation arithmetic in float32; the layers Wan runs
in float32 (time MLP, ``norm3``, the head) get their input in ``exact_dtype``, which is float32
for trees whose layers cast their weights to their input (the engine's own, ComfyUI's
manual-cast ops) and the compute dtype for a host whose layers compute in their weights' dtype.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import InputError
from .caches import KVCache, TextCache, new_cache
from .config import WanConfig

ROPE_THETA = 10000.0
_ROPE_TABLES_KEPT = 32
_PLAIN_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


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


def raw(param: Tensor, device, dtype: torch.dtype) -> Tensor:
    """A raw parameter (``modulation``) on the compute device in ``dtype``: the one place the
    forward reads a tensor that no module call hands it (a host may keep it offloaded or in fp8)."""
    return param.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- one pass


@dataclass
class _Pass:
    """What every block needs to know about the current forward call."""

    cfg: WanConfig
    frames: int
    rope: Tensor
    dtype: torch.dtype          # compute dtype
    attn_mask: Tensor | None
    write: slice | None         # the cache rows this call writes


def _heads(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1))  # [B, L, dim] -> [B, L, heads, head_dim]


def _attention_out(attn: nn.Module, out: Tensor) -> Tensor:
    return attn.o(out.transpose(1, 2).flatten(2))  # [B, heads, L, hd] -> [B, L, dim]


def _self_attention(attn: nn.Module, x: Tensor, p: _Pass, cache_k: Tensor | None, cache_v: Tensor | None) -> Tensor:
    """x ``[B, L, dim]`` in compute dtype. With a cache: write K/V at ``p.write``, attend to ``[:write.stop]``."""
    n = p.cfg.num_heads
    q = apply_rope(_heads(attn.norm_q(attn.q(x)), n), p.rope).transpose(1, 2)
    k = apply_rope(_heads(attn.norm_k(attn.k(x)), n), p.rope).transpose(1, 2)
    v = _heads(attn.v(x), n).transpose(1, 2)
    if cache_k is not None:
        cache_k[:, :, p.write] = k
        cache_v[:, :, p.write] = v
        k, v = cache_k[:, :, :p.write.stop], cache_v[:, :, :p.write.stop]
    return _attention_out(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=p.attn_mask))


def _text_kv(attn: nn.Module, context: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """Cross-attention K/V of embedded text ``[B, L, dim]`` -> two ``[B, heads, L, hd]``."""
    k = _heads(attn.norm_k(attn.k(context)), heads).transpose(1, 2).contiguous()
    v = _heads(attn.v(context), heads).transpose(1, 2).contiguous()
    return k, v


def _block(block: nn.Module, x: Tensor, e0: Tensor, p: _Pass, exact: torch.dtype, text_k: Tensor,
           text_v: Tensor, cache_k: Tensor | None, cache_v: Tensor | None) -> Tensor:
    """One Wan block on the float32 residual ``x [B, L, dim]``; e0: ``[B, F, 6, dim]`` float32."""
    eps = p.cfg.eps
    # Six per-frame [B, F, 1, dim] vectors: shift/scale/gate for attention, then for the FFN.
    m = (raw(block.modulation, x.device, torch.float32).unsqueeze(1) + e0).unsqueeze(3).unbind(2)
    h = modulate(layer_norm(x, eps), m[0], m[1], p.frames).to(p.dtype)
    x = x + gate(_self_attention(block.self_attn, h, p, cache_k, cache_v), m[2], p.frames)
    q = _heads(block.cross_attn.norm_q(block.cross_attn.q(block.norm3(x.to(exact)).to(p.dtype))),
               p.cfg.num_heads).transpose(1, 2)
    x = x + _attention_out(block.cross_attn, F.scaled_dot_product_attention(q, text_k, text_v)).float()
    h = modulate(layer_norm(x, eps), m[3], m[4], p.frames).to(p.dtype)
    return x + gate(block.ffn(h), m[5], p.frames)


def _head(head: nn.Module, x: Tensor, e: Tensor, frames: int, eps: float, exact: torch.dtype) -> Tensor:
    """x float32 ``[B, L, dim]``; e: the time embedding BEFORE time_projection, ``[B, F, dim]`` float32."""
    shift, scale = (raw(head.modulation, x.device, torch.float32).unsqueeze(1)
                    + e.unsqueeze(2)).unsqueeze(3).unbind(2)
    return head.head(modulate(layer_norm(x, eps), shift, scale, frames).to(exact)).float()


def _patch_embed(embedding: nn.Module, x: Tensor, compute: torch.dtype) -> Tensor:
    """``[B, F, C, H, W]`` -> tokens ``[B, F*h*w, dim]`` float32, through the Conv3d's own call.

    The input takes the conv's weight dtype when that is a plain float (a layer that computes in
    its weight's dtype needs it: ComfyUI keeps this conv in float32), else the compute dtype.
    """
    weight = getattr(embedding, "weight", None)
    dtype = weight.dtype if isinstance(weight, Tensor) and weight.dtype in _PLAIN_FLOATS else compute
    out = embedding(x.permute(0, 2, 1, 3, 4).to(dtype))  # [B, dim, F, h, w]: kernel == stride, no overlap
    return out.flatten(2).transpose(1, 2).float()


# ----------------------------------------------------------------------------- the network


class WanNetwork:
    """The causal forward, text encoding and cache allocation of a Wan 2.1 DiT over ``tree``.

    ``device`` is where it computes: a device, or a callable read at each call (the engine's
    own model follows its parameters when moved). ``source`` names the weights in errors.
    """

    def __init__(self, tree: nn.Module, cfg: WanConfig, *, device: torch.device | Callable[[], torch.device],
                 compute_dtype: torch.dtype, exact_dtype: torch.dtype = torch.float32, source: str | None = None):
        self.tree, self.cfg = tree, cfg
        self.compute_dtype, self.exact_dtype = compute_dtype, exact_dtype
        self.source = source
        self._device = device
        self._rope_tables: OrderedDict[tuple, Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return torch.device(self._device() if callable(self._device) else self._device)

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
        embedded = self.tree.text_embedding(padded)
        kv = [_text_kv(block.cross_attn, embedded, cfg.num_heads) for block in self.tree.blocks]
        return TextCache(k=[k for k, _ in kv], v=[v for _, v in kv])

    # ------------------------------------------------------------------ cache

    def new_cache(self, batch: int, capacity_frames: int, frame_tokens: int, *,
                  dtype: torch.dtype | None = None, device=None) -> KVCache:
        """An empty self-attention cache (dtype defaults to compute_dtype, device to the network's)."""
        return new_cache(self.cfg, batch, capacity_frames, frame_tokens, dtype=dtype or self.compute_dtype,
                         device=device if device is not None else self.device)

    def _rope(self, frames: int, height: int, width: int, frame_start: int, device: torch.device) -> Tensor:
        key = (frames, height, width, frame_start, device)
        table = self._rope_tables.get(key)
        if table is None:
            table = rope_table(self.cfg, frames, height, width, frame_start, device)
            self._rope_tables[key] = table
            if len(self._rope_tables) > _ROPE_TABLES_KEPT:
                self._rope_tables.popitem(last=False)
        else:
            self._rope_tables.move_to_end(key)
        return table

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def __call__(self, x: Tensor, timestep: Tensor, text: TextCache, cache: KVCache | None = None, *,
                 slot: int = 0, rope_start: int = 0, attn_mask: Tensor | None = None) -> Tensor:
        """Predict the flow v for latents ``x [B, F, C, H, W]`` at per-frame ``timestep [B, F]`` (0..1000).

        Without a cache: attention over x's own tokens (``attn_mask``, a boolean ``[L, L]`` with
        True = may attend, is optional). With a cache: this call's roped K/V overwrite frame slots
        ``[slot, slot+F)`` and the queries attend, unmasked, to slots ``[0, slot+F)``. RoPE temporal
        positions are ``rope_start .. rope_start+F-1``. Returns float32 ``[B, F, C, H, W]``.
        """
        cfg, tree, device = self.cfg, self.tree, self.device
        b, frames, _, height, width = self._check_latents(x)
        timestep = self._check_timestep(timestep, b, frames, device)
        self._check_text(text, b)
        _, ph, pw = cfg.patch_size
        gh, gw = height // ph, width // pw
        if rope_start < 0:
            raise InputError(f"rope_start must be >= 0, got {rope_start}.")
        write = None
        if cache is not None:
            if attn_mask is not None:
                raise InputError("attn_mask is only for cache-free calls; a cached call attends to its slots unmasked.")
            write = self._check_cache(cache, b, frames, gh * gw, slot, device)
        elif attn_mask is not None:
            tokens = frames * gh * gw
            if attn_mask.dtype != torch.bool or tuple(attn_mask.shape) != (tokens, tokens):
                raise InputError(
                    f"attn_mask must be a boolean [{tokens}, {tokens}] tensor (True = may attend), "
                    f"got {attn_mask.dtype} {tuple(attn_mask.shape)}.")
            attn_mask = attn_mask.to(device)

        exact = self.exact_dtype
        p = _Pass(cfg=cfg, frames=frames, rope=self._rope(frames, gh, gw, rope_start, device),
                  dtype=self.compute_dtype, attn_mask=attn_mask, write=write)
        h = _patch_embed(tree.patch_embedding, x.to(device), self.compute_dtype)
        # The time embedding: one per frame, in float32 where the layers allow it (as Wan).
        e = tree.time_embedding(sinusoidal_embedding(timestep.flatten(), cfg.freq_dim).to(exact))
        e0 = tree.time_projection(e).float().view(b, frames, 6, cfg.dim)
        e = e.float().view(b, frames, cfg.dim)
        for i, block in enumerate(tree.blocks):
            ck = cache.k[i] if cache is not None else None
            cv = cache.v[i] if cache is not None else None
            h = _block(block, h, e0, p, exact, text.k[i], text.v[i], ck, cv)
        if cache is not None:
            cache.filled[slot:slot + frames] = [True] * frames
        out = _head(tree.head, h, e, frames, cfg.eps, exact)
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

    @staticmethod
    def _check_timestep(timestep: Tensor, b: int, frames: int, device) -> Tensor:
        timestep = torch.as_tensor(timestep, device=device)
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
