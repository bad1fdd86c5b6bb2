"""Streaming Wan 2.1 VAE: block-by-block decode with rollback, and the anchor-frame encode.

A Wan VAE decodes a video a latent frame (or a few) at a time, carrying a per-conv feature
cache from call to call, and throws the cache away at the end of its own decode. Here the cache
outlives a call: the block loop decodes each new block through the same cache, so the frames
equal a one-shot decode of the whole video (tested bit for bit), and a rejected draft block is
undone by restoring a snapshot of the cache (docs/algorithm.md, section 5). Two module trees:

- ``StreamingVAE``: diffusers' ``AutoencoderKLWan`` (the standalone engine and the CLI). It uses
  diffusers' private pieces (``decoder(x, feat_cache=, feat_idx=, first_chunk=)``, ``encoder``,
  ``post_quant_conv``, ``quant_conv``); requirements.txt pins the diffusers minor version and
  tests/test_vae.py pins the equivalence.
- ``WanTreeStream``: the original Wan layout, as ComfyUI's core ``VAE`` holds it; the ComfyUI
  end-to-end test pins its equivalence with ComfyUI's own decode.

Snapshots are shallow. In both every cache write is ``feat_cache[idx] = <new tensor>`` (a
``.clone()``, a ``torch.cat``, or the string "Rep"); no entry is modified in place. So a copy of
the list, not of the tensors, freezes the state (tests check the tensors too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from .errors import CheckpointError, IncompatibleModelsError, InputError, MissingFileError, NumericalError
from .files import read_tensors
from .finite import check_finite, first_non_finite

# Per-channel statistics of the Wan 2.1 latent space (Wan's `WanVAE.mean` / `.std`; the same
# 16 values are diffusers' AutoencoderKLWan defaults). The DiT works on (z - mean) / std.
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]
LATENT_CHANNELS = 16
WAN21_BASE_DIM = 96  # the real VAE's width


def to_raw_latents(latents: torch.Tensor) -> torch.Tensor:
    """The DiT's normalised latents ``[B, F, 16, h, w]`` -> the VAE's own (``z * std + mean``), float32 CPU."""
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 1, -1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 1, -1, 1, 1)
    return latents.float().cpu() * std + mean
TIME_STRIDE = 4
SPACE_STRIDE = 8

# The Wan 2.1 VAE structure; only the width (base_dim) varies between the real and tiny models.
WAN21_VAE_STRUCTURE = dict(
    z_dim=LATENT_CHANNELS,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)

# A tensor each layout must carry (diffusers keys its own format detection off the first).
_ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"
_WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # ComfyUI's Wan 2.2 test
_DIT_MARKERS = ("head.modulation", "blocks.0.self_attn.q.weight", "patch_embedding.weight")

_WHERE = "Put the Wan 2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth) in ComfyUI/models/vae/."


@dataclass(frozen=True)
class _StreamState:
    """What a decode stream remembers between calls; immutable so a snapshot can be restored twice."""

    feat_cache: tuple
    started: bool  # False until the video's first latent frame has been decoded


class DecodeStream:
    """A Wan 2.1 VAE decoded block by block through a causal feature cache that outlives a call.

    Subclasses say how their module tree is called: ``_features`` (the 1x1x1 conv before the
    decoder), ``_decode_chunks`` (the decoder over some latent frames, carrying the cache) and
    ``_encode_mean`` (the posterior mean of a clip); and where it computes.
    """

    def __init__(self, decoder_slots: int, mean, std):
        self._decoder_slots = decoder_slots
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.reset()

    device: torch.device
    dtype: torch.dtype

    def reset(self) -> None:
        """Start a new video: empty feature cache, the next frame is the first."""
        self._state = _StreamState(feat_cache=(None,) * self._decoder_slots, started=False)

    def frames_for(self, num_latent_frames: int, first: bool) -> int:
        """Pixel frames a decode of `num_latent_frames` returns (`first`: it starts the video)."""
        if num_latent_frames < 1:
            raise InputError(f"num_latent_frames must be at least 1, got {num_latent_frames}.")
        return 1 + TIME_STRIDE * (num_latent_frames - 1) if first else TIME_STRIDE * num_latent_frames

    source: str | None = None  # the file the weights came from, named in errors

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, block: int | None = None, made_by: str = "the given") -> torch.Tensor:
        """Decode the next latent frames of the current video.

        latents: NORMALISED [B, F, 16, h, w] (the DiT's space). Returns pixels [B, T, 3, 8h, 8w]
        in [-1, 1], in the VAE's dtype, with T = frames_for(F, first=<this starts the video>).
        NaN or Inf in the decoder's output (before the clamp, which would hide an Inf) is an error
        naming the VAE and ``block``; ``made_by`` names whose latents they were.
        """
        _check_latents(latents)
        z = latents.permute(0, 2, 1, 3, 4).to(device=self.device, dtype=torch.float32)
        z = z * self._std.to(z.device) + self._mean.to(z.device)
        x = self._features(z.to(self.dtype))  # a 1x1x1 conv: per frame, so per block is exact
        cache = list(self._state.feat_cache)
        pixels = self._decode_chunks(x, cache, self._state.started)
        check_finite(pixels, "vae", -1 if block is None else block, dtype=self.dtype, source=self.source,
                     what=f"frames decoded from {made_by} latents")
        self._state = _StreamState(feat_cache=tuple(cache), started=True)
        pixels = torch.clamp(pixels, min=-1.0, max=1.0)  # as diffusers' and ComfyUI's decodes do
        return pixels.permute(0, 2, 1, 3, 4)

    def snapshot(self) -> object:
        """The decode stream's state; cheap (no tensor is copied, see the module docstring)."""
        return self._state

    def restore(self, state: object) -> None:
        """Return the decode stream to a `snapshot()`; a snapshot may be restored any number of times."""
        if not isinstance(state, _StreamState) or len(state.feat_cache) != self._decoder_slots:
            raise InputError("restore() takes a value returned by snapshot() of this same VAE stream.")
        self._state = state

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """A whole clip ``[B, 3, T, H, W]`` in [-1, 1] (T = 1 + 4k) -> NORMALISED posterior means
        ``[B, F, 16, H/8, W/8]``, encoded causally in one go (the input of video-to-video)."""
        mu = self._encode_mean(pixels.to(device=self.device, dtype=self.dtype)).float()
        mu = (mu - self._mean.to(mu.device)) / self._std.to(mu.device)
        return mu.permute(0, 2, 1, 3, 4)

    def encode_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """Encode one pixel frame as the first frame of a 1-frame clip (the anchor of a block).

        frame: [B, 3, H, W] in [-1, 1], H and W multiples of 8. Returns the posterior mean,
        NORMALISED ((mu - mean) / std), float32, [B, 1, 16, H/8, W/8]. Leaves the decode stream alone.
        """
        _check_frame(frame)
        return self.encode_video(frame.unsqueeze(2))


class StreamingVAE(DecodeStream):
    """diffusers AutoencoderKLWan decoded block by block through its causal feature cache."""

    def __init__(self, vae: AutoencoderKLWan):
        """Wrap a Wan 2.1 `AutoencoderKLWan`; normalisation comes from its config's latents_mean / latents_std."""
        config = vae.config
        if config.z_dim != LATENT_CHANNELS or config.patch_size is not None or config.is_residual:
            raise IncompatibleModelsError(
                f"StreamingVAE needs the Wan 2.1 VAE (16 latent channels, no patching); got z_dim={config.z_dim}, "
                f"patch_size={config.patch_size}, is_residual={config.is_residual} (a Wan 2.2 VAE?). "
                f"Use the Wan 2.1 VAE, which both Self-Forcing and Krea Realtime were trained with."
            )
        self.vae = vae.eval()
        # Our own cache list, not vae._feat_map: diffusers' encode()/decode() wipe theirs, and
        # anyone may call those on the same model mid-stream.
        super().__init__(_count_causal_convs(vae.decoder), config.latents_mean, config.latents_std)

    @classmethod
    def from_single_file(cls, path, *, dtype=torch.float32, device="cpu") -> "StreamingVAE":
        """Load a Wan 2.1 VAE file: ComfyUI's wan_2.1_vae.safetensors, Wan2.1_VAE.pth, or a diffusers-layout file."""
        path = os.fspath(path)
        state_dict = _read_state_dict(path)
        stream = cls.from_state_dict(state_dict, dtype=dtype, device=device, source=path)
        stream.source = path
        return stream

    @classmethod
    def from_state_dict(cls, state_dict: dict, *, dtype=torch.float32, device="cpu", source="state dict") -> "StreamingVAE":
        """Build from tensors in the original Wan or the diffusers key layout; `source` names them in errors."""
        return cls(_build_wan21_vae(_diffusers_layout(state_dict, source), source, dtype=dtype, device=device))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype  # ModelMixin.dtype walks every module

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device  # read live: a host may move the VAE

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.post_quant_conv(z)

    def _decode_chunks(self, x: torch.Tensor, cache: list, started: bool) -> torch.Tensor:
        frames = []
        for i in range(x.shape[2]):  # one latent frame a call, as diffusers' own _decode
            frames.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0],
                                           first_chunk=not started and i == 0))
        return torch.cat(frames, dim=2)

    def _encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean  # diffusers' own chunked causal encode, a clip of its own


class WanTreeStream(DecodeStream):
    """A Wan 2.1 VAE in the original Wan module layout (``encoder``, ``conv1``, ``conv2``,
    ``decoder``: ComfyUI's ``WanVAE``, its VAE's ``first_stage_model``), decoded block by block.

    The decoder is called with its own ``feat_cache`` / ``feat_idx`` API: the video's first latent
    frame alone, then each block's frames together. Both cache semantics ComfyUI has shipped
    (one frame or more per call; chunks of two or more) give a one-shot decode exactly with this
    chunking. ``device`` and ``dtype`` are where the host placed the model.
    """

    def __init__(self, tree: torch.nn.Module, *, device, dtype: torch.dtype):
        for part in ("encoder", "decoder", "conv1", "conv2"):
            if not isinstance(getattr(tree, part, None), torch.nn.Module):
                raise IncompatibleModelsError(
                    f"the VAE holds a {type(tree).__name__} without '{part}': it is not a Wan 2.1 VAE. "
                    f"Load wan_2.1_vae.safetensors with Load VAE. {_WHERE}")
        self.tree = tree
        self.device, self.dtype = torch.device(device), dtype
        slots = sum(type(m).__name__ == "CausalConv3d" for m in tree.decoder.modules())
        super().__init__(slots, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return self.tree.conv2(z)

    def _decode_chunks(self, x: torch.Tensor, cache: list, started: bool) -> torch.Tensor:
        chunks = [x] if started or x.shape[2] == 1 else [x[:, :, :1], x[:, :, 1:]]  # frame 0 alone
        out = []
        for chunk in chunks:
            decoded = self.tree.decoder(chunk, feat_cache=cache, feat_idx=[0])
            out.extend(decoded if isinstance(decoded, list) else [decoded])  # newer ComfyUI returns a list
        return torch.cat(out, dim=2)

    def _encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.tree.encode(x)  # Wan's own chunked causal encode: the posterior mean (raw)


# ---------------------------------------------------------------------- the model


def wan21_autoencoder(base_dim: int = WAN21_BASE_DIM, decoder_base_dim: int | None = None) -> AutoencoderKLWan:
    """diffusers' AutoencoderKLWan with the Wan 2.1 structure (build it under ``torch.device("meta")``
    to fill it from a file). Only the width varies: 96 is the real VAE, 8 a test-size one."""
    return AutoencoderKLWan(
        base_dim=base_dim,
        decoder_base_dim=decoder_base_dim if decoder_base_dim != base_dim else None,
        latents_mean=list(WAN21_LATENTS_MEAN),
        latents_std=list(WAN21_LATENTS_STD),
        **WAN21_VAE_STRUCTURE,
    )


def original_wan_vae_state_dict(vae: AutoencoderKLWan) -> dict:
    """The inverse of diffusers' converter: diffusers keys -> original Wan keys (as in Wan2.1_VAE.pth).

    Lets tests write original-layout files. Wan 2.1 structure only (3 resnets + 1 resample per
    decoder stage, hence upsamples index 4 * stage + resnet).
    """
    return {_original_key(key): value for key, value in vae.state_dict().items()}


_RESNET_PARTS = {
    "norm1.gamma": "residual.0.gamma",
    "conv1": "residual.2",
    "norm2.gamma": "residual.3.gamma",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _original_key(key: str) -> str:
    side, _, rest = key.partition(".")  # encoder / decoder / quant_conv / post_quant_conv
    quant = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    if side in quant:
        return f"{quant[side]}.{rest}"
    for new, old in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(new):
            return f"{side}.{old}{rest[len(new):]}"
    parts = rest.split(".")
    if parts[0] == "mid_block":
        if parts[1] == "attentions":
            return f"{side}.middle.1.{'.'.join(parts[3:])}"
        return f"{side}.middle.{2 * int(parts[2])}.{_resnet_part('.'.join(parts[3:]))}"
    if parts[0] == "down_blocks":  # the encoder's list is flat in both layouts
        return f"{side}.downsamples.{parts[1]}.{_resnet_part('.'.join(parts[2:]))}"
    if parts[0] == "up_blocks":
        stage = int(parts[1])
        if parts[2] == "resnets":
            return f"{side}.upsamples.{4 * stage + int(parts[3])}.{_resnet_part('.'.join(parts[4:]))}"
        if parts[2] == "upsamplers":
            return f"{side}.upsamples.{4 * stage + 3}.{'.'.join(parts[4:])}"
    raise ValueError(f"no original Wan name for diffusers key {key!r}")


def _resnet_part(tail: str) -> str:
    for new, old in _RESNET_PARTS.items():
        if tail.startswith(new):
            return old + tail[len(new):]
    return tail  # resample.* / time_conv.* keep their names


# ---------------------------------------------------------------------- helpers


def _count_causal_convs(module: torch.nn.Module) -> int:
    # One cache slot per causal conv, as AutoencoderKLWan.clear_cache sizes its lists.
    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def _check_latents(latents) -> None:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[2] != LATENT_CHANNELS:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(
            f"VAE decode takes latents [B, F, {LATENT_CHANNELS}, h, w] (frames before channels); got {shape}. "
            f"A ComfyUI Wan LATENT is [B, {LATENT_CHANNELS}, F, h, w]: permute it first."
        )
    if latents.shape[1] < 1:
        raise InputError("VAE decode got 0 latent frames; pass at least one.")
    if not torch.isfinite(latents).all():
        raise NumericalError(
            "The latents given to the VAE contain NaN or Inf: the diffusion model that made them diverged "
            "(float16 overflow, or NaN in its weights)."
        )


def _check_frame(frame) -> None:
    if not isinstance(frame, torch.Tensor) or frame.ndim != 4 or frame.shape[1] != 3:
        shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise InputError(f"encode_frame takes one RGB frame per video [B, 3, H, W] in [-1, 1]; got {shape}.")
    if frame.shape[2] % SPACE_STRIDE or frame.shape[3] % SPACE_STRIDE:
        raise InputError(
            f"encode_frame needs H and W divisible by {SPACE_STRIDE}; got {frame.shape[2]}x{frame.shape[3]}. "
            f"Use a resolution that is a multiple of {SPACE_STRIDE} (832x480 is)."
        )


def _read_state_dict(path: str) -> dict:
    """The tensors of a .safetensors or torch file; format sniffed from the bytes, not the name."""
    if not os.path.isfile(path):
        raise MissingFileError(f"VAE file not found: {path}. {_WHERE}")
    state_dict = read_tensors(path, "VAE file")
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]  # Lightning-style wrapper
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"VAE file {path} does not hold a dictionary of tensors, so it is no model file. {_WHERE}")
    bad = first_non_finite(state_dict)
    if bad is not None:
        raise CheckpointError(f"VAE file {path}: tensor {bad!r} holds NaN or Inf, so every decode would be "
                              f"broken. The file is corrupt: download it again. {_WHERE}")
    return state_dict


def _diffusers_layout(state_dict: dict, source: str) -> dict:
    """The VAE's tensors under diffusers names; strips a prefix such as `first_stage_model.`."""
    for marker, convert in ((_DIFFUSERS_MARKER, None), (_ORIGINAL_MARKER, convert_wan_vae_to_diffusers)):
        hit = next((k for k in state_dict if k.endswith(marker)), None)
        if hit is None:
            continue
        prefix = hit[: -len(marker)]
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if any(k.endswith(_WAN22_MARKER) for k in state_dict):
            raise IncompatibleModelsError(
                f"{source} is a Wan 2.2 VAE (48 latent channels); Self-Forcing and Krea Realtime use the Wan 2.1 "
                f"VAE (16 channels). {_WHERE}"
            )
        return convert(state_dict) if convert else state_dict
    if any(k.endswith(m) for k in state_dict for m in _DIT_MARKERS):
        what = "a Wan diffusion model (DiT), not a VAE. Select it in the model loader instead"
    else:
        what = f"not a Wan 2.1 VAE: it has no '{_ORIGINAL_MARKER}' tensor"
    raise CheckpointError(f"{source} is {what}. {_WHERE}")


def _build_wan21_vae(state_dict: dict, source: str, *, dtype, device) -> AutoencoderKLWan:
    """An AutoencoderKLWan with the Wan 2.1 config (built here, no hub) holding `state_dict`."""
    vae = _checked_model(state_dict, source)
    # Cast the tensors, not the model: ModelMixin.to(dtype) warns on every call.
    state_dict = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    vae.load_state_dict(state_dict, strict=True, assign=True)
    return vae.eval()


def inspect_vae(path) -> int:
    """Check a Wan 2.1 VAE file from its tensor headers without loading its weights; its base width."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"VAE file not found: {path}. {_WHERE}")
    state_dict = read_tensors(path, "VAE file", meta=True)
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    return _checked_model(_diffusers_layout(state_dict, path), path).config.base_dim


def _checked_model(state_dict: dict, source: str) -> AutoencoderKLWan:
    """The meta-device Wan 2.1 VAE ``state_dict`` fits, or a CheckpointError naming what does not."""
    try:
        base_dim = state_dict["encoder.conv_in.weight"].shape[0]
        decoder_base_dim = state_dict["decoder.conv_out.weight"].shape[1]
        z_dim = state_dict["decoder.conv_in.weight"].shape[1]
    except KeyError as error:
        raise CheckpointError(f"{source} is incomplete: it lacks the tensor {error.args[0]!r}. Download it again.") from None
    if z_dim != LATENT_CHANNELS:
        raise IncompatibleModelsError(
            f"{source} is a VAE with {z_dim} latent channels; these models need the Wan 2.1 VAE "
            f"({LATENT_CHANNELS} channels). {_WHERE}"
        )
    with torch.device("meta"):  # no random init of weights we are about to replace
        vae = wan21_autoencoder(base_dim, decoder_base_dim)
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(
            f"{source} does not match the Wan 2.1 VAE: {'; '.join(problems)} tensors (names in diffusers' layout). "
            f"The file is incomplete or a different VAE. {_WHERE}"
        )
    return vae
