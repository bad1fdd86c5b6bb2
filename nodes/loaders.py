"""Loader nodes: drafter and target DiTs, the Wan 2.1 VAE, the ImageReward router folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from sdvg_core.errors import CheckpointError, SDVGError

from . import host

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ["auto", *DTYPES]
VARIANTS = ["ema", "plain"]


@dataclass(eq=False)
class LoadedModel:
    """What a loader outputs: the engine object, its file, and ComfyUI's handle on its weights."""

    role: str        # "drafter" | "target" | "vae" | "router"
    engine: Any      # CausalWanModel | StreamingVAE | ImageRewardScorer
    path: str
    patcher: Any = None  # comfy.model_patcher.ModelPatcher inside ComfyUI, else None

    def __repr__(self) -> str:
        return f"<SDVG {self.role}: {os.path.basename(self.path)}>"


def resolve_dtype(name: str) -> torch.dtype:
    """A dtype widget value; "auto" picks bf16/fp16 on a GPU and float32 on the CPU."""
    if name == "auto":
        return host.auto_dtype(host.compute_device())
    if name not in DTYPES:
        raise SDVGError(f"dtype {name!r} is not one of {DTYPE_CHOICES}.")
    return DTYPES[name]


def _load(role: str, path: str, what: str, build):
    """Run a loader; any failure that is not already ours names the file and what it should be."""
    try:
        return build()
    except SDVGError:
        raise
    except Exception as error:  # a file of the wrong kind fails deep inside torch/diffusers
        raise CheckpointError(
            f"{path}: could not be loaded as the {role} ({type(error).__name__}: {error}). "
            f"It should be {what}.") from error


class _LoadWan:
    ROLE = ""
    WHAT = ""
    RETURN_TYPES: tuple = ()
    FUNCTION = "load"
    CATEGORY = "SDVG/loaders"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.list_files("diffusion_models"), {
                "tooltip": f"The {cls.ROLE} checkpoint in models/diffusion_models/: {cls.WHAT}."}),
            "variant": (VARIANTS, {"default": "ema", "tooltip":
                "Which weights of a Self-Forcing training file (generator_ema or generator). "
                "Ignored for files holding one set of weights."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip":
                "Compute dtype. auto: bf16 on a GPU, fp32 on the CPU. fp8 weights stay fp8 in "
                "memory and are upcast one layer at a time."}),
        }}

    def load(self, model_name, variant="ema", dtype="auto"):
        from sdvg_core.wan import load_wan

        path = host.full_path("diffusion_models", model_name)
        model = _load(self.ROLE, path, self.WHAT, lambda: load_wan(
            path, variant=variant, dtype=resolve_dtype(dtype), device=host.storage_device()))
        return (LoadedModel(self.ROLE, model, path, host.manage(model)),)


class LoadDrafter(_LoadWan):
    """The small model that proposes every block (Self-Forcing Wan 2.1 1.3B)."""

    ROLE = "drafter"
    WHAT = "Self-Forcing Wan2.1-T2V-1.3B (self_forcing_dmd.pt)"
    RETURN_TYPES = ("SDVG_DRAFTER",)
    RETURN_NAMES = ("drafter",)
    DESCRIPTION = "Loads the drafter DiT: Self-Forcing Wan2.1-T2V-1.3B."


class LoadTarget(_LoadWan):
    """The large model that regenerates rejected blocks (Krea Realtime Video 14B)."""

    ROLE = "target"
    WHAT = "Krea Realtime Video 14B (krea-realtime-video-14b.safetensors, or an fp8 copy)"
    RETURN_TYPES = ("SDVG_TARGET",)
    RETURN_NAMES = ("target",)
    DESCRIPTION = "Loads the target DiT: Krea Realtime Video 14B."


class LoadSDVGVAE:
    """The Wan 2.1 VAE, wrapped for block-by-block streaming decode."""

    RETURN_TYPES = ("SDVG_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = "SDVG/loaders"
    DESCRIPTION = "Loads the Wan 2.1 VAE (wan_2.1_vae.safetensors) for streaming decode."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.list_files("vae"), {
                "tooltip": "The Wan 2.1 VAE in models/vae/ (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip":
                "auto: bf16 on a GPU, fp32 on the CPU."}),
        }}

    def load(self, vae_name, dtype="auto"):
        from sdvg_core.vae import StreamingVAE

        path = host.full_path("vae", vae_name)
        vae = _load("VAE", path, "the Wan 2.1 VAE (wan_2.1_vae.safetensors)", lambda: StreamingVAE.from_single_file(
            path, dtype=resolve_dtype(dtype), device=host.storage_device()))
        return (LoadedModel("vae", vae, path, host.manage(vae.vae)),)


class LoadImageRewardRouter:
    """ImageReward v1.0, which scores drafted frames against the prompt."""

    RETURN_TYPES = ("SDVG_ROUTER",)
    RETURN_NAMES = ("router",)
    FUNCTION = "load"
    CATEGORY = "SDVG/loaders"
    DESCRIPTION = ("Loads ImageReward v1.0 from models/image_reward/: ImageReward.pt, "
                   "med_config.json and a bert-base-uncased/ tokenizer folder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "router": (host.router_choices(), {"tooltip":
                "A folder of models/image_reward/ holding ImageReward.pt, med_config.json and "
                "bert-base-uncased/ (vocab.txt). 'ImageReward.pt' is models/image_reward/ itself; "
                "'name/ImageReward.pt' is its sub-folder 'name'."}),
            "dtype": (["fp32", *[d for d in DTYPES if d != "fp32"]], {"default": "fp32", "tooltip":
                "fp32 keeps the scores exactly those tau was calibrated with; fp16/bf16 save memory."}),
        }}

    def load(self, router, dtype="fp32"):
        from sdvg_core.router import ImageRewardScorer

        path = host.full_path(host.ROUTER_FOLDER, router)
        folder = os.path.dirname(path)
        scorer = _load("router", folder, "a folder with ImageReward.pt, med_config.json and bert-base-uncased/",
                       lambda: ImageRewardScorer.from_folder(folder, device=host.storage_device(),
                                                             dtype=DTYPES[dtype]))
        return (LoadedModel("router", scorer, folder, host.manage(scorer)),)
