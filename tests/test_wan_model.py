"""CausalWanModel: equal to diffusers' WanTransformer3DModel, and cached passes equal masked full passes."""

import copy
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from sdvg_core.errors import InputError
from sdvg_core.wan.config import WanConfig
from sdvg_core.wan.forward import rope_table, sinusoidal_embedding
from wan_fixtures import LATENT_H, LATENT_W, latents, random_wan, rel_err, state_dict_of, text_embedding, tiny_config

B = 2
FRAME_TOKENS = tiny_config().frame_tokens(LATENT_H, LATENT_W)


# ----------------------------------------------------------------------------- diffusers reference


class Float64Sinusoid(torch.nn.Module):
    """Wan's float64 timestep embedding, written here from the Wan formula, to stand in for
    diffusers' float32 ``Timesteps`` (which differs from Wan by float32 rounding of t*freq)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        angles = t.double()[:, None] * freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=1).float()


@pytest.fixture(scope="module")
def pair():
    """Our tiny model and diffusers' model holding the same weights (via diffusers' converter)."""
    cfg = tiny_config()
    ours = random_wan(cfg, seed=0)
    ref = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=1024,
    ).eval()
    ref.load_state_dict(convert_wan_transformer_to_diffusers(state_dict_of(ours)), strict=True)
    return ours, ref


@pytest.fixture(scope="module")
def pair64(pair):
    """As `pair`, with diffusers' timestep sinusoid computed in float64 as Wan does."""
    ours, ref = pair
    ref64 = copy.deepcopy(ref)
    ref64.condition_embedder.timesteps_proj = Float64Sinusoid(ours.cfg.freq_dim)
    return ours, ref64


def diffusers_forward(ref, x, timestep, context, text_len=512):
    """diffusers takes [B, C, F, H, W] and text as given: pad it to 512 the way Wan does."""
    padded = F.pad(context, (0, 0, 0, text_len - context.shape[1]))
    with torch.no_grad():
        out = ref(x.transpose(1, 2), timestep, padded, return_dict=False)[0]
    return out.transpose(1, 2)


@pytest.mark.parametrize("t", [0.0, 250.0, 937.5, 1000.0])
def test_matches_diffusers_uniform_timestep(pair64, t):
    ours, ref = pair64
    x, ctx = latents(B, 3), text_embedding(B)
    got = ours(x, torch.full((B, 3), t), ours.encode_text(ctx))
    want = diffusers_forward(ref, x, torch.full((B,), t), ctx)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert rel_err(got, want) < 1e-5


def test_matches_diffusers_per_frame_timestep(pair64):
    # diffusers 0.42 accepts per-token timesteps [B, tokens] (its Wan 2.2 TI2V path): expand ours per frame.
    ours, ref = pair64
    x, ctx = latents(B, 3), text_embedding(B)
    t = torch.tensor([[0.0, 625.0, 1000.0], [937.5, 833.3333, 5.0]])
    got = ours(x, t, ours.encode_text(ctx))
    per_token = t[:, :, None].expand(B, 3, FRAME_TOKENS).reshape(B, -1)
    want = diffusers_forward(ref, x, per_token, ctx)
    assert rel_err(got, want) < 1e-5


def test_matches_stock_diffusers(pair):
    # Unpatched diffusers: at t=0 every sinusoid is exact in float32, so the models agree to float32
    # rounding. At t=1000 diffusers' float32 angles (t*freq) drift by ~1e-4; allow that, no more.
    ours, ref = pair
    x, ctx = latents(B, 3), text_embedding(B)
    text = ours.encode_text(ctx)
    assert rel_err(ours(x, torch.zeros(B, 3), text), diffusers_forward(ref, x, torch.zeros(B), ctx)) < 1e-5
    got = ours(x, torch.full((B, 3), 1000.0), text)
    assert rel_err(got, diffusers_forward(ref, x, torch.full((B,), 1000.0), ctx)) < 1e-3


def test_sinusoidal_embedding_is_wans_float64_formula():
    t = torch.tensor([0.0, 5.0, 625.0, 937.5, 1000.0])
    half = 128
    freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
    angles = np.outer(t.numpy().astype(np.float64), freqs)
    want = np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
    got = sinusoidal_embedding(t, 256)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    # diffusers' float32 version (cos first with flip_sin_to_cos) agrees to float32 angle rounding.
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (got.float() - theirs).abs().max() < 3e-4


@pytest.mark.parametrize("frame_start", [0, 3, 7])
def test_rope_table_matches_diffusers(frame_start):
    cfg = WanConfig.tiny(dim=128, num_heads=2)  # head_dim 64: pairs 12 / 10 / 10
    frames, gh, gw = 3, 3, 4
    rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, max_seq_len=1024)
    # diffusers starts at frame 0: build frame_start + frames frames and keep the last ones.
    cos, sin = rope(torch.zeros(1, 16, frame_start + frames, 2 * gh, 2 * gw))
    keep = slice(frame_start * gh * gw, None)
    table = rope_table(cfg, frames, gh, gw, frame_start, torch.device("cpu"))[:, 0]
    torch.testing.assert_close(table.real, cos[0, keep, 0, 0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(table.imag, sin[0, keep, 0, 1::2], rtol=0, atol=1e-6)


def test_rope_split_of_real_head_dim():
    assert WanConfig.wan_14b().rope_pairs == (22, 21, 21)
    assert WanConfig.wan_1_3b().head_dim == 128


def test_bf16_compute_close_to_float32():
    model = random_wan(seed=3)
    x, ctx, t = latents(B, 3), text_embedding(B), torch.full((B, 3), 625.0)
    want = model(x, t, model.encode_text(ctx))
    model.compute_dtype = torch.bfloat16
    got = model(x, t, model.encode_text(ctx))
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 3e-2


# ----------------------------------------------------------------------------- KV cache


def block_causal_mask(frames_per_block: list[int], frame_tokens: int):
    """True where a query token may attend a key token: keys in its own block or an earlier one."""
    block_of_frame = torch.cat([torch.full((n,), i) for i, n in enumerate(frames_per_block)])
    block_of_token = block_of_frame.repeat_interleave(frame_tokens)
    return block_of_token[None, :] <= block_of_token[:, None]


@pytest.fixture(scope="module")
def model():
    return random_wan(seed=4)


def test_context_then_block_equals_masked_full_forward(model):
    ctx_frames, block = latents(B, 3, seed=5), latents(B, 3, seed=6)
    t = torch.tensor([[937.5, 937.5, 937.5], [250.0, 250.0, 250.0]])
    text = model.encode_text(text_embedding(B))

    cache = model.new_cache(B, 6, FRAME_TOKENS)
    ctx_out = model(ctx_frames, torch.zeros(B, 3), text, cache, slot=0, rope_start=0)
    block_out = model(block, t, text, cache, slot=3, rope_start=3)

    # Reference: one pass over 6 frames; context tokens see only context, block tokens see all.
    full_t = torch.cat([torch.zeros(B, 3), t], dim=1)
    mask = block_causal_mask([3, 3], FRAME_TOKENS)
    assert not mask[0, -1] and mask[-1, 0]  # the mask really is causal
    full = model(torch.cat([ctx_frames, block], dim=1), full_t, text, attn_mask=mask)
    assert rel_err(block_out, full[:, 3:]) < 1e-5
    assert rel_err(ctx_out, full[:, :3]) < 1e-5


def test_second_block_pass_overwrites_slots(model):
    ctx_frames = latents(B, 3, seed=7)
    text = model.encode_text(text_embedding(B))
    first, second = latents(B, 3, seed=8), latents(B, 3, seed=9)
    t1, t2 = torch.full((B, 3), 1000.0), torch.full((B, 3), 625.0)

    cache = model.new_cache(B, 6, FRAME_TOKENS)
    model(ctx_frames, torch.zeros(B, 3), text, cache, slot=0, rope_start=0)
    first_out = model(first, t1, text, cache, slot=3, rope_start=3)
    reused = model(second, t2, text, cache, slot=3, rope_start=3)

    fresh_cache = model.new_cache(B, 6, FRAME_TOKENS)
    model(ctx_frames, torch.zeros(B, 3), text, fresh_cache, slot=0, rope_start=0)
    fresh = model(second, t2, text, fresh_cache, slot=3, rope_start=3)
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)
    assert rel_err(reused, first_out) > 1e-2  # the second pass really saw different input


def test_growing_cache_with_absolute_positions(model):
    blocks = [latents(B, 3, seed=10 + i) for i in range(3)]
    ts = [torch.full((B, 3), v) for v in (1000.0, 625.0, 0.0)]
    text = model.encode_text(text_embedding(B))

    cache = model.new_cache(B, 9, FRAME_TOKENS)
    outs = [model(x, t, text, cache, slot=3 * b, rope_start=3 * b) for b, (x, t) in enumerate(zip(blocks, ts))]
    full = model(torch.cat(blocks, 1), torch.cat(ts, 1), text, attn_mask=block_causal_mask([3, 3, 3], FRAME_TOKENS))
    for b, out in enumerate(outs):
        assert rel_err(out, full[:, 3 * b:3 * b + 3]) < 1e-5


def test_cache_refuses_unwritten_slots_and_overflow(model):
    text = model.encode_text(text_embedding(B))
    x, t = latents(B, 3), torch.zeros(B, 3)
    cache = model.new_cache(B, 6, FRAME_TOKENS)
    with pytest.raises(InputError, match="never written"):
        model(x, t, text, cache, slot=3, rope_start=3)
    model(x, t, text, cache, slot=0)
    model(x, t, text, cache, slot=3, rope_start=3)
    cache.reset()
    with pytest.raises(InputError, match="never written"):
        model(x, t, text, cache, slot=3, rope_start=3)
    with pytest.raises(InputError, match="do not fit"):
        model(x, t, text, cache, slot=4)
    with pytest.raises(InputError, match="tokens per frame"):
        model(x, t, text, model.new_cache(B, 6, FRAME_TOKENS + 1), slot=0)
    with pytest.raises(InputError, match="attn_mask"):
        model(x, t, text, cache, slot=0, attn_mask=torch.ones(36, 36, dtype=torch.bool))


def test_cache_layout_and_size(model):
    cfg = model.cfg
    cache = model.new_cache(B, 6, FRAME_TOKENS)
    assert len(cache.k) == len(cache.v) == cfg.num_layers
    assert tuple(cache.k[0].shape) == (B, cfg.num_heads, 6 * FRAME_TOKENS, cfg.head_dim)
    per_tensor = B * cfg.num_heads * 6 * FRAME_TOKENS * cfg.head_dim * torch.finfo(torch.float32).bits // 8
    assert cache.nbytes() == 2 * cfg.num_layers * per_tensor


def test_input_errors_name_the_argument(model):
    text = model.encode_text(text_embedding(B))
    with pytest.raises(InputError, match="latents"):
        model(torch.zeros(B, 16, 3, 6, 8), torch.zeros(B, 3), text)
    with pytest.raises(InputError, match="timestep"):
        model(latents(B, 3), torch.zeros(B, 2), text)
    with pytest.raises(InputError, match="text context"):
        model.encode_text(torch.zeros(1, 513, model.cfg.text_dim))
    with pytest.raises(InputError, match="head_dim"):
        WanConfig(dim=60, ffn_dim=8, num_heads=12, num_layers=1)  # head_dim 5: odd
