"""Loader nodes: the drafter and target as ComfyUI MODELs, and the ImageReward router folder.

The VAE comes from core's Load VAE (the Wan 2.1 VAE), the text from core's CLIPLoader +
CLIPTextEncode; any Wan 2.1 T2V MODEL (core's Load Diffusion Model, a GGUF loader, a LoRA
chain) can stand in for Load Drafter / Load Target.
"""

from __future__ import annotations

import os

import torch

from sdvg_core.errors import CheckpointError, SDVGError

from . import host
from .models import RouterModel

ROUTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ["ema", "plain"]


def _load(role: str, path: str, what: str, build):
    """Run a loader; any failure that is not already ours names the file and what it should be."""
    try:
        return build()
    except SDVGError:
        raise
    except Exception as error:  # a file of the wrong kind fails deep inside torch/ComfyUI
        raise CheckpointError(
            f"{path}: could not be loaded as the {role} ({type(error).__name__}: {error}). "
            f"It should be {what}.") from error


class _LoadWan:
    """Load Drafter / Load Target: a Wan 2.1 DiT file -> MODEL, through ComfyUI's own loading."""

    ROLE = ""
    WHAT = ""
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "SDVG/loaders"

    def __init_subclass__(cls, **kwargs):  # each loader's output is named and explained by its role
        super().__init_subclass__(**kwargs)
        cls.RETURN_NAMES = (cls.ROLE,)
        cls.OUTPUT_TOOLTIPS = (f"A Wan 2.1 MODEL: chain LoRA loaders here if you use them, then SDVG Sampler's "
                               f"{cls.ROLE}.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.list_files("diffusion_models"), {
                "tooltip": f"The {cls.ROLE} in models/diffusion_models/: {cls.WHAT}."}),
            "variant": (VARIANTS, {"default": "ema", "tooltip":
                "Which weights of a Self-Forcing training file (generator_ema or generator). "
                "Ignored for files holding one set of weights."}),
            "weight_dtype": (list(host.WEIGHT_DTYPES), {"default": "default", "tooltip":
                "As core's Load Diffusion Model: default keeps the file's weights (fp8 files stay fp8); "
                "fp8_e4m3fn / fp8_e5m2 store the weights in fp8 (half the memory of bf16); _fast also "
                "uses fp8 matrix multiplication where the GPU has it."}),
        }}

    def load(self, model_name, variant="ema", weight_dtype="default"):
        path = host.full_path("diffusion_models", model_name)
        return (_load(self.ROLE, path, self.WHAT, lambda: host.load_wan_model(
            path, variant=variant, weight_dtype=weight_dtype, role=self.ROLE)),)


class LoadDrafter(_LoadWan):
    ROLE = "drafter"
    WHAT = "Self-Forcing Wan2.1-T2V-1.3B (self_forcing_dmd.pt)"
    DESCRIPTION = ("Loads the drafter, Self-Forcing Wan2.1-T2V-1.3B, as a MODEL (its .pt training file, "
                   "generator_ema by default, or any Wan 2.1 1.3B T2V file).")


class LoadTarget(_LoadWan):
    ROLE = "target"
    WHAT = "Krea Realtime Video 14B (krea-realtime-video-14b.safetensors, or an fp8 copy)"
    DESCRIPTION = ("Loads the target, Krea Realtime Video 14B, as a MODEL; weight_dtype fp8 halves its "
                   "28 GB of bf16 weights.")


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
            "dtype": (list(ROUTER_DTYPES), {"default": "fp32", "tooltip":
                "fp32 keeps the scores exactly those tau was calibrated with; fp16/bf16 save memory."}),
        }}

    def load(self, router, dtype="fp32"):
        from sdvg_core.router import ImageRewardScorer

        path = host.full_path(host.ROUTER_FOLDER, router)
        folder = os.path.dirname(path)
        scorer = _load("router", folder, "a folder with ImageReward.pt, med_config.json and bert-base-uncased/",
                       lambda: ImageRewardScorer.from_folder(folder, device=host.storage_device(),
                                                             dtype=ROUTER_DTYPES[dtype]))
        return (RouterModel(scorer, folder, host.manage(scorer)),)
