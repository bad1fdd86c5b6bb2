"""Reading Wan 2.1 DiT checkpoints: file formats, key layouts, size inference, fp8 weights.

Accepted files: ``.safetensors`` and PyTorch ``.pt``/``.pth`` (loaded with ``weights_only=True``,
memory-mapped when the file is in the zip format). Accepted key layouts: original Wan names
with no prefix, ``model.`` (Krea, Self-Forcing), ``model.diffusion_model.`` (ComfyUI
repackaged files), ``model._fsdp_wrapped_module.`` (training dumps). A Self-Forcing ``.pt`` is
a dict ``{"generator": sd, "generator_ema": sd}``; ``variant`` picks one.

fp8: float8 Linear weights stay float8 in memory with their per-tensor ``scale_weight``
(ComfyUI's legacy scaled-fp8 name; its newer ``weight_scale`` is accepted too) and are upcast
one layer at a time during the forward. Every other floating tensor is cast to ``dtype``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, IncompatibleModelsError, InputError, MissingFileError
from ..files import read_tensors
from ..finite import first_non_finite
from .config import REAL_HEAD_DIM, TINY_HEAD_DIM, WanConfig
from .model import CausalWanModel, WanLinear

# Longest first: "model." is a prefix of the other two.
KEY_PREFIXES = ("model.diffusion_model.", "model._fsdp_wrapped_module.", "model.")
VARIANTS = {"ema": "generator_ema", "generator_ema": "generator_ema",
            "plain": "generator", "generator": "generator"}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Real Wan 2.1 models by width: (blocks, name). A file with fewer blocks is incomplete.
KNOWN_MODELS = {1536: (30, "Wan2.1 1.3B"), 5120: (40, "Wan2.1 14B")}

_ANCHOR = re.compile(r"^(.*?)(patch_embedding\.weight|blocks\.\d+\.self_attn\.q\.weight)$")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
# ComfyUI scaled-fp8 bookkeeping that carries nothing this model needs.
_MARKER_KEYS = ("scaled_fp8",)
_DROPPED_SUFFIXES = (".scale_input", ".input_scale")


# ----------------------------------------------------------------------------- reading


class WanTensors(dict):
    """A Wan file's tensors under original names; ``prefix`` is what the file put before them."""

    def __init__(self, *args, prefix: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.prefix = prefix

    def check_finite(self, path) -> None:
        bad = first_non_finite(self)
        if bad is not None:
            raise CheckpointError(
                f"{path}: tensor {self.prefix + bad!r} holds NaN or Inf, so every output would be NaN. The file is "
                "corrupt (or was saved from a diverged training run): download it again.")


def read_wan_file(path: str | os.PathLike, *, variant: str = "ema", meta: bool = False) -> WanTensors:
    """A Wan DiT file's tensors with original Wan key names, as the file has them otherwise.

    The Self-Forcing variant is picked and the key prefix stripped; everything else is kept,
    fp8 bookkeeping included (``scaled_fp8``, ``scale_weight``/``weight_scale``, ``.comfy_quant``),
    for a host such as ComfyUI to load its own way. variant: for Self-Forcing dict files,
    "ema"/"generator_ema" (default) or "plain"/"generator"; ignored for files holding a single
    set of weights. ``meta``: shapes and dtypes only, from the file's header (safetensors) or
    memory-mapped (PyTorch zip).
    """
    path = Path(path)
    if variant not in VARIANTS:
        raise InputError(f"variant {variant!r} is not one of {sorted(VARIANTS)}; use 'ema' or 'plain'.")
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MissingFileError(
            f"Wan DiT checkpoint {path} {what}. Put the .safetensors/.pt file in "
            "ComfyUI/models/diffusion_models/ and select it, or pass the full path to the file.")
    raw = read_tensors(path, "Wan DiT checkpoint", meta=meta)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a state dict of tensors.")
    sd = _select_variant(raw, variant, path)
    prefix = _dit_prefix(sd, str(path))
    out = WanTensors(prefix=prefix)
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name in out:
            raise CheckpointError(f"{path}: key {name!r} appears twice (under different prefixes); the file is malformed.")
        out[name] = value
    return out


def read_wan_state_dict(path: str | os.PathLike, *, variant: str = "ema", meta: bool = False) -> WanTensors:
    """``read_wan_file`` with the fp8 bookkeeping turned into the engine's: ``scale_weight`` per
    layer (ComfyUI's newer ``weight_scale`` renamed), markers checked and dropped."""
    tensors = read_wan_file(path, variant=variant, meta=meta)
    return WanTensors(_engine_keys(tensors, Path(path)), prefix=tensors.prefix)


def inspect_wan(path: str | os.PathLike, *, variant: str = "ema", num_heads: int | None = None) -> WanConfig:
    """The model's config from the file's tensor shapes, without loading its weights."""
    return infer_config(read_wan_state_dict(path, variant=variant, meta=True), source=str(path),
                        num_heads=num_heads)


def _select_variant(raw: dict, variant: str, path: Path) -> dict:
    wanted = VARIANTS[variant]
    if "generator" in raw or "generator_ema" in raw:  # Self-Forcing training checkpoint
        if wanted not in raw:
            present = sorted(k for k, v in raw.items() if isinstance(v, dict))
            raise CheckpointError(
                f"{path}: has no '{wanted}' weights (variant={variant!r}); it holds {present}. "
                f"Pick variant='{'plain' if wanted == 'generator_ema' else 'ema'}'.")
        return raw[wanted]
    tensors = [k for k, v in raw.items() if isinstance(v, Tensor)]
    nested = [k for k, v in raw.items() if isinstance(v, dict)]
    if not tensors and len(nested) == 1:  # {"state_dict": {...}} and similar wrappers
        return raw[nested[0]]
    return raw


def _engine_keys(sd: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, value in sd.items():
        if name in _MARKER_KEYS or name.endswith(_DROPPED_SUFFIXES):
            continue
        if name.endswith(".comfy_quant"):
            _check_quant_format(value, name, path)
            continue
        if name.endswith(".weight_scale"):  # ComfyUI's newer name for the same per-tensor scale
            name = name[: -len("weight_scale")] + "scale_weight"
        out[name] = value
    return out


def _dit_prefix(sd: dict, where: str) -> str:
    """The key prefix of the DiT weights in sd (one of KEY_PREFIXES, or "")."""
    found = {m.group(1) for key in sd if isinstance(key, str) and (m := _ANCHOR.match(key))}
    for prefix in ("",) + KEY_PREFIXES:
        if prefix in found:
            return prefix
    if found:
        raise CheckpointError(
            f"{where}: Wan DiT keys carry the unrecognised prefix {sorted(found)[0]!r}; supported prefixes "
            f"are none, {', '.join(repr(p) for p in KEY_PREFIXES)}. Re-save the file with one of them.")
    raise CheckpointError(_not_a_dit_message(sd, where))


def _check_quant_format(value: Tensor, name: str, path: Path) -> None:
    try:
        fmt = json.loads(bytes(value.to(torch.uint8).tolist()).decode("utf-8")).get("format")
    except (ValueError, AttributeError):
        fmt = "unreadable"
    if fmt not in ("float8_e4m3fn", "float8_e5m2"):
        raise CheckpointError(
            f"{path}: layer {name[: -len('.comfy_quant')]} uses quantisation format {fmt!r}; only fp8 "
            "(float8_e4m3fn, optionally scaled) is supported. Use the bf16 or fp8 file.")


def _not_a_dit_message(sd: dict, where: str) -> str:
    keys = [k for k in sd if isinstance(k, str)]
    bare = [_strip_prefix(k) for k in keys]

    def has(*starts):
        return any(k.startswith(starts) for k in bare)

    if has("encoder.block.", "shared.", "encoder.final_layer_norm"):
        kind = "a T5 / umT5 text encoder: load it as the text encoder (models/text_encoders/)"
    elif has("encoder.", "decoder.", "conv1.", "conv2.", "first_stage_model."):
        kind = "a VAE (e.g. the Wan 2.1 VAE): load it as the VAE (models/vae/)"
    else:
        kind = "not a Wan 2.1 DiT"
    return (f"{where}: is not a Wan DiT checkpoint (no 'blocks.0.self_attn.*' or 'patch_embedding' "
            f"weights); it looks like {kind}. First keys: {keys[:5]}. Choose the Wan 2.1 T2V diffusion "
            "model file (models/diffusion_models/).")


def _strip_prefix(key: str) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


# ----------------------------------------------------------------------------- size


def infer_config(state_dict: dict[str, Tensor], *, source: str = "", num_heads: int | None = None) -> WanConfig:
    """Read a WanConfig off a state dict (original Wan key names, or one of KEY_PREFIXES).

    Reads tensor shapes only, so meta tensors work. Head count: the weights cannot tell it (the qk RMSNorm spans the
    full dim), so it is ``num_heads`` when given; else head_dim 128 (every real Wan model, and
    what ComfyUI assumes) when ``dim % 128 == 0``; else head_dim 32, the tiny-model convention of
    ``WanConfig.tiny``.
    """
    where = source or "state dict"
    prefix = _dit_prefix(state_dict, where)
    if prefix:  # accept a raw file's keys too: strip the prefix (names only, no tensor copies)
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    present = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK_INDEX.match(k))})
    num_layers = present[-1] + 1 if present else 0
    missing_blocks = sorted(set(range(num_layers)) - set(present))
    if missing_blocks or not present:
        raise CheckpointError(
            f"{where}: transformer block(s) {missing_blocks or 'all'} are missing (found {len(present)} of "
            f"{num_layers}); the file is incomplete or truncated: download it again.")
    needed = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "head.head.weight", "blocks.0.ffn.0.weight"]
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise CheckpointError(f"{where}: missing {absent}; the file is incomplete: download it again.")

    pe = state_dict["patch_embedding.weight"].shape  # [dim, in_dim, pt, ph, pw]
    dim, in_dim, patch = int(pe[0]), int(pe[1]), tuple(int(p) for p in pe[2:])
    expected = KNOWN_MODELS.get(dim)
    if expected and num_layers < expected[0]:
        raise CheckpointError(
            f"{where}: has {num_layers} transformer blocks; {expected[1]} has {expected[0]}. "
            "The file is incomplete: download it again.")
    try:
        return WanConfig(
            dim=dim,
            ffn_dim=int(state_dict["blocks.0.ffn.0.weight"].shape[0]),
            num_heads=head_count(dim, num_heads, where),
            num_layers=num_layers,
            in_dim=in_dim,
            out_dim=int(state_dict["head.head.weight"].shape[0]) // math.prod(patch),
            text_dim=int(state_dict["text_embedding.0.weight"].shape[1]),
            freq_dim=int(state_dict["time_embedding.0.weight"].shape[1]),
            patch_size=patch,
        )
    except InputError as err:
        raise CheckpointError(f"{where}: tensor shapes do not form a Wan model: {err}") from err


def head_count(dim: int, num_heads: int | None, where: str) -> int:
    if num_heads is not None:
        return num_heads
    if dim % REAL_HEAD_DIM == 0:  # every Wan model (and ComfyUI's detection) has 128-wide heads
        return dim // REAL_HEAD_DIM
    if dim % TINY_HEAD_DIM == 0:
        return dim // TINY_HEAD_DIM
    raise CheckpointError(f"{where}: cannot tell the head count of a {dim}-wide model; pass num_heads.")


# ----------------------------------------------------------------------------- loading


def load_wan(path: str | os.PathLike, *, variant: str = "ema", dtype: torch.dtype = torch.float32,
             device="cpu", num_heads: int | None = None, fp8: torch.dtype | None = None) -> CausalWanModel:
    """Build a CausalWanModel from a checkpoint file.

    dtype: compute dtype, and storage dtype of every non-fp8 weight. fp8 Linear weights stay
    fp8 (with their scale_weight); ``fp8`` (float8_e4m3fn or float8_e5m2) stores the other
    Linear weights in fp8 too, unscaled, as ComfyUI's fp8 weight dtype options do. The model is built on the meta device and the file's
    tensors are assigned into it, so the weights are never held twice. Key check is strict:
    a missing or unexpected key fails with the file named.

    Accuracy of fp8 files: outputs stay within about 2.5% relative error of the
    high-precision source (measured 1.4e-2 .. 2.5e-2 on tiny random models, scaled and
    unscaled; tests/test_wan_checkpoint.py pins 5e-2), and equal a float model holding
    the dequantised weights ``w_fp8 * scale_weight`` to float32 rounding.
    """
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"dtype must be one of {COMPUTE_DTYPES} (the compute dtype), got {dtype}.")
    if fp8 is not None and fp8 not in FP8_DTYPES:
        raise InputError(f"fp8 must be one of {FP8_DTYPES} (or None), got {fp8}.")
    sd = read_wan_state_dict(path, variant=variant)
    cfg = infer_config(sd, source=str(path), num_heads=num_heads)
    sd.check_finite(path)
    with torch.device("meta"):
        model = CausalWanModel(cfg, compute_dtype=dtype)
    model.requires_grad_(False)
    scales = {k[: -len(".scale_weight")]: sd.pop(k) for k in list(sd) if k.endswith(".scale_weight")}
    _check_keys(model, sd, scales, path)

    linear_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, WanLinear)}
    for key in list(sd):  # one tensor at a time: the dict entry is replaced, the old one freed
        t, layer = sd[key], key.rsplit(".", 1)[0]
        if key in linear_weights and (t.dtype in FP8_DTYPES or (fp8 is not None and layer not in scales)):
            sd[key] = t.to(device) if t.dtype in FP8_DTYPES else t.to(device=device, dtype=fp8)
            continue
        if t.is_floating_point():
            scale = scales.pop(layer, None) if key.endswith(".weight") else None
            t = t.to(device=device, dtype=torch.float32 if scale is not None else dtype)
            if scale is not None:  # a scaled weight we do not keep in fp8: dequantise now
                t = (t * scale.to(device, torch.float32).reshape(-1, *[1] * (t.ndim - 1))
                     if scale.numel() > 1 else t * scale.to(device, torch.float32)).to(dtype)
        sd[key] = t.to(device)
    model.load_state_dict(sd, strict=True, assign=True)
    for layer, scale in scales.items():
        model.get_submodule(layer).scale_weight = scale.to(device=device, dtype=torch.float32)
    model.source = str(path)  # named in numerical errors
    return model.eval()


def _check_keys(model: CausalWanModel, sd: dict[str, Tensor], scales: dict[str, Tensor], path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    unexpected += [f"{layer}.scale_weight" for layer in scales if f"{layer}.weight" not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match a Wan 2.1 DiT of its size ({model.cfg.dim} wide, {model.cfg.num_layers} "
            f"blocks). Missing {len(missing)} keys {missing[:5]}; unexpected {len(unexpected)} keys "
            f"{unexpected[:5]}. The file is incomplete or is another model: use the Wan 2.1 T2V file.")
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not fit the model: {wrong[:5]}. The file is corrupt.")


# ----------------------------------------------------------------------------- pairing


def check_compatible(drafter, target) -> None:
    """Raise unless the two models (anything with a ``cfg``, or WanConfigs) can draft and verify
    together: they must share latents, text and RoPE, and the drafter must be the smaller."""
    a, b = (m if isinstance(m, WanConfig) else m.cfg for m in (drafter, target))
    fields = ("in_dim", "out_dim", "patch_size", "text_dim", "head_dim")
    diffs = [(f, getattr(a, f), getattr(b, f)) for f in fields if getattr(a, f) != getattr(b, f)]
    if diffs:
        detail = "; ".join(f"{f}: drafter {x}, target {y}" for f, x, y in diffs)
        raise IncompatibleModelsError(
            f"drafter and target cannot work together ({detail}). Both must be Wan 2.1 T2V models "
            "(1.3B drafter, 14B target) using the same VAE and text encoder.")
    if a.dim ** 2 * a.num_layers > b.dim ** 2 * b.num_layers:
        raise IncompatibleModelsError(
            f"the drafter ({a.dim} wide, {a.num_layers} blocks) is larger than the target ({b.dim} wide, "
            f"{b.num_layers} blocks): drafter and target are swapped. The small model (Self-Forcing 1.3B) "
            "drafts, the large one (Krea Realtime 14B) is the target.")
