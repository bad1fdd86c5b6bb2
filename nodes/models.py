"""What the SDVG nodes receive, as the engine needs it.

- ``MODEL``: ComfyUI's ModelPatcher (from Load Drafter / Load Target, core's Load Diffusion Model,
  a GGUF loader, LoRA loaders...). The engine runs its causal forward on the Wan tree the MODEL
  holds (``model.model.diffusion_model``), so ComfyUI's casting, quantisation, LoRA patches and
  partial loading apply. Outside ComfyUI (tests, scripts) a MODEL is the engine's own
  CausalWanModel.
- ``VAE``: ComfyUI's core VAE (Load VAE with the Wan 2.1 VAE), decoded block by block through
  its own module tree; outside ComfyUI, the engine's StreamingVAE.
- ``SDVG_ROUTER``: the ImageReward scorer of Load ImageReward Router.

Only attributes are read here; ComfyUI itself is reached through ``host``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from sdvg_core.errors import InputError
from sdvg_core.vae import WanTreeStream, DecodeStream
from sdvg_core.wan import CausalWanModel, WanNetwork, hosted_network

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(eq=False)
class RouterModel:
    """What Load ImageReward Router outputs: the scorer, its folder, ComfyUI's handle on it."""

    scorer: Any           # sdvg_core.router.ImageRewardScorer (or anything with its score())
    path: str
    patcher: Any = None   # comfy.model_patcher.ModelPatcher inside ComfyUI, else None

    def __repr__(self) -> str:
        return f"<SDVG router: {self.path}>"


def wan_network(model, role: str) -> CausalWanModel | WanNetwork:
    """The engine's forward for a MODEL input (``role``: "drafter" or "target")."""
    if isinstance(model, CausalWanModel):
        return model
    base = getattr(model, "model", None)
    tree = getattr(base, "diffusion_model", None)
    if tree is None:
        raise InputError(
            f"{role}: expected a MODEL (Load {role.capitalize()}, Load Diffusion Model, a GGUF loader, a LoRA "
            f"loader), got {type(model).__name__}.")
    cast = getattr(base, "manual_cast_dtype", None)
    compute = cast if cast is not None else base.get_dtype()
    if compute not in FLOATS:  # fp8 weights computed by fp8 ops, or quantised storage: feed bf16
        compute = torch.bfloat16 if torch.device(model.load_device).type == "cuda" else torch.float32
    return hosted_network(tree, device=model.load_device, compute_dtype=compute, layers_cast=cast is not None,
                          role=role)


def vae_stream(vae) -> DecodeStream:
    """A fresh decode stream over a VAE input: the stream's state lives on it, so every session
    gets its own and two sessions sharing one loaded VAE cannot disturb each other."""
    if isinstance(vae, DecodeStream):
        return copy.copy(vae)
    tree = getattr(vae, "first_stage_model", None)
    if tree is None:
        raise InputError(f"vae: expected a VAE (Load VAE with wan_2.1_vae.safetensors), got {type(vae).__name__}.")
    return WanTreeStream(tree, device=vae.device, dtype=vae.vae_dtype)


def patcher_of(value) -> Any:
    """ComfyUI's ModelPatcher behind an input, which its model management loads (None outside ComfyUI)."""
    if isinstance(value, RouterModel):
        return value.patcher
    if isinstance(value, (CausalWanModel, DecodeStream)):
        return None
    return getattr(value, "patcher", value)  # a core VAE holds its patcher; a MODEL is one
