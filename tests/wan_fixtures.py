"""Tiny random-weight Wan models and checkpoint writers shared by the Wan tests."""

from __future__ import annotations

import math

import torch
from safetensors.torch import save_file

from sdvg_core.wan.config import WanConfig
from sdvg_core.wan.model import CausalWanModel

# Latent 6x8 -> a 3x4 token grid: non-square, so a height/width mix-up cannot cancel out.
LATENT_H, LATENT_W = 6, 8


def tiny_config(**overrides) -> WanConfig:
    """dim 64, 2 heads of 32 channels, 2 layers, ffn 128, text_dim 32."""
    return WanConfig.tiny(**overrides)


def random_wan(cfg: WanConfig | None = None, seed: int = 0) -> CausalWanModel:
    """A CausalWanModel with every parameter random (norm weights and biases included).

    Weights ~ N(0, 1/fan_in) keep activations O(1) through the blocks; norm weights are
    1 + noise and biases small noise, so a wrong or swapped parameter changes the output.
    """
    model = CausalWanModel(cfg or tiny_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "modulation" in name:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model.eval()


def latents(batch: int, frames: int, seed: int = 1, cfg: WanConfig | None = None) -> torch.Tensor:
    cfg = cfg or tiny_config()
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, cfg.in_dim, LATENT_H, LATENT_W, generator=gen)


def text_embedding(batch: int, tokens: int = 7, seed: int = 2, cfg: WanConfig | None = None) -> torch.Tensor:
    cfg = cfg or tiny_config()
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, cfg.text_dim, generator=gen)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def state_dict_of(model: CausalWanModel, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_checkpoint(sd: dict, path) -> None:
    """Write sd as safetensors or torch.save, by the file's suffix."""
    if str(path).endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
