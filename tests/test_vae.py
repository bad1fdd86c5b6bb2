"""Streaming Wan VAE: equals diffusers' one-shot decode, rolls back exactly, loads both key layouts.

The references are diffusers' own public AutoencoderKLWan.decode / .encode and its own
default config; normalisation is recomputed here from the 16 Wan values.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from sdvg_core.errors import CheckpointError, IncompatibleModelsError, InputError, MissingFileError, NumericalError
from sdvg_core.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    StreamingVAE,
    original_wan_vae_state_dict,
    wan21_autoencoder,
)

H, W = 4, 6  # latent size; pixels 32x48
FRAMES = 7


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return wan21_autoencoder(base_dim=8).eval()


def normalised_latents(frames=FRAMES, batch=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 16, H, W, generator=gen)


def denormalise(latents):
    """[B, F, 16, h, w] normalised -> diffusers' [B, 16, F, h, w] raw VAE latents."""
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 1, 16, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 1, 16, 1, 1)
    return (latents * std + mean).permute(0, 2, 1, 3, 4)


def one_shot(vae, latents):
    """diffusers' own decode of the whole video, as [B, T, 3, H, W]."""
    with torch.no_grad():
        return vae.decode(denormalise(latents)).sample.permute(0, 2, 1, 3, 4)


def stream(svae, latents, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(svae.decode(latents[:, start : start + size]))
        start += size
    return out


# ---------------------------------------------------------------------- equivalence (pins diffusers' private API)


@pytest.fixture(scope="module")
def whole_video(vae):
    """The latents of one video and diffusers' one-shot decode of them, shared by the splits below."""
    latents = normalised_latents()
    return latents, one_shot(vae, latents)


@pytest.mark.parametrize("sizes", [[1, 3, 3], [3, 3, 1], [7], [1] * 7])
def test_streaming_decode_equals_diffusers_one_shot(vae, whole_video, sizes):
    latents, reference = whole_video
    svae = StreamingVAE(vae)
    blocks = stream(svae, latents, sizes)
    for i, (block, size) in enumerate(zip(blocks, sizes)):
        assert block.shape == (1, svae.frames_for(size, first=i == 0), 3, 8 * H, 8 * W)
    assert torch.equal(torch.cat(blocks, dim=1), reference)
    # the comparison is meaningful: frames are not saturated by the clamp
    assert reference.abs().lt(1).float().mean() > 0.9 and reference.std() > 0.05


def test_streaming_decode_batch_of_two(vae):
    latents = normalised_latents(batch=2)
    svae = StreamingVAE(vae)
    assert torch.equal(torch.cat(stream(svae, latents, [3, 4]), dim=1), one_shot(vae, latents))


def test_fresh_decode_per_block_is_not_the_stream(vae):
    # Why the stream exists: decoding block 2 on its own gives 9 frames of different content.
    latents = normalised_latents()
    streamed = stream(StreamingVAE(vae), latents, [3, 3])[1]
    alone = one_shot(vae, latents[:, 3:6])
    assert streamed.shape[1] == 12 and alone.shape[1] == 9


def test_reset_starts_a_new_video(vae, whole_video):
    latents, reference = whole_video
    svae = StreamingVAE(vae)
    stream(svae, latents, [3, 3])
    svae.reset()
    assert torch.equal(torch.cat(stream(svae, latents, [1, 3, 3]), dim=1), reference)


def test_frames_for_matches_the_wan_time_stride(vae):
    svae = StreamingVAE(vae)
    assert [svae.frames_for(3, first=True), svae.frames_for(3, first=False)] == [9, 12]
    assert svae.frames_for(1, first=True) == 1
    with pytest.raises(InputError):
        svae.frames_for(0, first=False)


# ---------------------------------------------------------------------- rollback


def test_restore_gives_identical_frames_and_continuation(vae):
    latents = normalised_latents(frames=9)
    draft = normalised_latents(frames=3, seed=2)[:, :3]

    reference = StreamingVAE(vae)  # never rolled back: blocks 0, 1, 2
    ref_blocks = stream(reference, latents, [3, 3, 3])

    svae = StreamingVAE(vae)
    stream(svae, latents, [3])
    state = svae.snapshot()
    first_try = svae.decode(latents[:, 3:6])
    svae.restore(state)
    second_try = svae.decode(latents[:, 3:6])
    assert torch.equal(first_try, second_try) and torch.equal(second_try, ref_blocks[1])

    svae.restore(state)  # a rejected draft, then the target's block
    svae.decode(draft)
    svae.restore(state)
    assert torch.equal(svae.decode(latents[:, 3:6]), ref_blocks[1])
    assert torch.equal(svae.decode(latents[:, 6:9]), ref_blocks[2])


def test_without_restore_the_continuation_differs(vae):
    # Control for the test above: the draft does leave a trace in the cache.
    latents = normalised_latents(frames=6)
    draft = normalised_latents(frames=3, seed=2)
    reference = stream(StreamingVAE(vae), latents, [3, 3])[1]
    svae = StreamingVAE(vae)
    stream(svae, latents, [3])
    svae.decode(draft)
    assert not torch.equal(svae.decode(latents[:, 3:6]), reference)


def test_snapshot_tensors_are_never_mutated(vae):
    # The claim that makes a shallow snapshot valid, checked on every cache tensor.
    latents = normalised_latents()
    svae = StreamingVAE(vae)
    stream(svae, latents, [1, 3])
    state = svae.snapshot()
    frozen = [e.clone() if isinstance(e, torch.Tensor) else e for e in state.feat_cache]
    assert sum(isinstance(e, torch.Tensor) for e in frozen) > 10
    svae.decode(latents[:, 4:])
    svae.encode_frame(torch.zeros(1, 3, 8 * H, 8 * W))
    for before, now in zip(frozen, state.feat_cache):
        assert (torch.equal(before, now) if isinstance(before, torch.Tensor) else before == now)


def test_restore_rejects_foreign_state(vae):
    with pytest.raises(InputError, match="snapshot"):
        StreamingVAE(vae).restore({"feat_cache": []})


# ---------------------------------------------------------------------- anchor encode


def test_encode_frame_equals_diffusers_posterior_mean(vae):
    frame = torch.rand(2, 3, 8 * H, 8 * W, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(frame.unsqueeze(2)).latent_dist.mean  # [B, 16, 1, h, w]
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    expected = ((mu - mean) / std).permute(0, 2, 1, 3, 4)
    got = StreamingVAE(vae).encode_frame(frame)
    assert got.shape == (2, 1, 16, H, W) and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_encode_frame_and_diffusers_calls_leave_the_stream_alone(vae):
    latents = normalised_latents()
    reference = stream(StreamingVAE(vae), latents, [1, 3, 3])
    svae = StreamingVAE(vae)
    blocks = [svae.decode(latents[:, :1]), svae.decode(latents[:, 1:4])]
    svae.encode_frame(blocks[-1][:, -1])
    with torch.no_grad():  # someone else using the same diffusers model mid-stream
        vae.decode(denormalise(latents[:, :2]))
        vae.encode(blocks[-1][:, -1:].permute(0, 2, 1, 3, 4))
    blocks.append(svae.decode(latents[:, 4:]))
    for got, want in zip(blocks, reference):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------- loading files


def test_loads_original_and_diffusers_layouts(vae, whole_video, tmp_path):
    original = original_wan_vae_state_dict(vae)
    assert "decoder.middle.0.residual.0.gamma" in original and "decoder.upsamples.4.shortcut.weight" in original
    files = {
        "Wan2.1_VAE.pth": lambda p: torch.save(original, p),
        "wan_2.1_vae.safetensors": lambda p: save_file(original, p),
        "diffusers_vae.safetensors": lambda p: save_file(vae.state_dict(), p),
        "comfy_prefixed.safetensors": lambda p: save_file({f"first_stage_model.{k}": v for k, v in original.items()}, p),
    }
    latents, reference = whole_video
    for name, write in files.items():
        write(tmp_path / name)
        loaded = StreamingVAE.from_single_file(tmp_path / name)
        assert loaded.vae.config.base_dim == 8, name
        assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
        assert torch.equal(torch.cat(stream(loaded, latents, [1, 3, 3]), dim=1), reference), name


def test_bfloat16_file_loads_as_requested_dtype(vae, tmp_path):
    path = tmp_path / "wan_2.1_vae_bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in original_wan_vae_state_dict(vae).items()}, path)
    loaded = StreamingVAE.from_single_file(path, dtype=torch.float32)
    assert loaded.dtype == torch.float32
    first = next(iter(loaded.vae.state_dict().items()))
    assert torch.equal(first[1], vae.state_dict()[first[0]].to(torch.bfloat16).float())


def test_full_size_config_matches_diffusers_wan21_default():
    # from_single_file builds the config locally: at base_dim 96 it must be diffusers' Wan 2.1 VAE.
    with torch.device("meta"):
        default = AutoencoderKLWan()
        ours = wan21_autoencoder()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}
    assert ours.config.latents_mean == default.config.latents_mean == WAN21_LATENTS_MEAN
    assert ours.config.latents_std == default.config.latents_std == WAN21_LATENTS_STD


def test_original_layout_round_trips_through_diffusers_converter(vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    converted = convert_wan_vae_to_diffusers(original_wan_vae_state_dict(vae))
    expected = vae.state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k] is expected[k] or torch.equal(converted[k], expected[k]) for k in expected)


# ---------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    with pytest.raises(MissingFileError, match="not found") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value) and "models/vae" in str(info.value)


@pytest.mark.parametrize("name", ["wan_2.1_vae.safetensors", "Wan2.1_VAE.pth"])
def test_truncated_file(vae, tmp_path, name):
    path = tmp_path / name
    sd = original_wan_vae_state_dict(vae)
    save_file(sd, path) if name.endswith(".safetensors") else torch.save(sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value)


def test_dit_given_as_vae(tmp_path):
    path = tmp_path / "krea-realtime-video-14b.safetensors"
    dit_like = {
        "model.patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2),
        "model.blocks.0.self_attn.q.weight": torch.zeros(8, 8),
        "model.head.modulation": torch.zeros(1, 2, 8),
    }
    save_file(dit_like, path)
    with pytest.raises(CheckpointError, match="diffusion model") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value)


def test_unrelated_file(tmp_path):
    path = tmp_path / "something.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a Wan 2.1 VAE") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value)


def test_missing_keys(vae, tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    sd = original_wan_vae_state_dict(vae)
    del sd["decoder.upsamples.3.time_conv.weight"]
    save_file(sd, path)
    with pytest.raises(CheckpointError, match="1 missing") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value) and "decoder.up_blocks.0.upsamplers.0.time_conv.weight" in str(info.value)


def test_other_latent_width_is_incompatible(tmp_path):
    path = tmp_path / "other_vae.safetensors"
    save_file(AutoencoderKLWan(base_dim=8, z_dim=4).state_dict(), path)
    with pytest.raises(IncompatibleModelsError, match="4 latent channels") as info:
        StreamingVAE.from_single_file(path)
    assert str(path) in str(info.value)


def test_wan22_config_is_incompatible():
    wan22_like = AutoencoderKLWan(base_dim=8, z_dim=48, is_residual=True, patch_size=2, in_channels=12, out_channels=12)
    with pytest.raises(IncompatibleModelsError, match="Wan 2.1"):
        StreamingVAE(wan22_like)


def test_bad_inputs(vae):
    svae = StreamingVAE(vae)
    with pytest.raises(InputError, match="permute"):
        svae.decode(torch.zeros(1, 16, 3, H, W))  # ComfyUI layout
    with pytest.raises(InputError, match="0 latent frames"):
        svae.decode(torch.zeros(1, 0, 16, H, W))
    bad = normalised_latents(frames=1)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN"):
        svae.decode(bad)
    assert svae.snapshot().started is False  # a refused call leaves the stream untouched
    with pytest.raises(InputError, match="divisible by 8"):
        svae.encode_frame(torch.zeros(1, 3, 30, 48))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        svae.encode_frame(torch.zeros(1, 1, 3, 32, 48))
