"""Random-weight models of the real architectures, at any size: one factory for the tests, the
demo and the benchmarks.

Every model is built on the meta device, given its dtype there, allocated once on its device
and filled at a trained scale: matrices ~ N(0, 1/fan_in), norm scales 1, biases 0. Activations
then stay O(1) through any depth, and a random network costs exactly what a trained one costs
(the GPU benchmark builds the real 14B this way, in bf16, straight on the GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .wan import CausalWanModel, WanConfig
from .wan.checkpoint import FP8_DTYPES
from .wan.model import WanLinear


@dataclass(frozen=True)
class RouterSize:
    """BLIP vision + BERT text sizes of the ImageReward router (the real one is ViT-L/16 + BERT-base)."""

    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    text_positions: int = 512
    vocab_size: int = 30524   # bert-base-uncased + BLIP's [DEC] and [ENC]

    def med_config(self) -> dict:
        """The med_config.json of this size (ImageReward's BERT config with cross-attention)."""
        return {
            "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": self.text_hidden, "intermediate_size": self.text_mlp,
            "num_attention_heads": self.text_heads, "num_hidden_layers": self.text_layers,
            "max_position_embeddings": self.text_positions, "vocab_size": self.vocab_size,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0, "initializer_range": 0.02,
            "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1,
            "add_cross_attention": True, "encoder_width": self.vision_hidden,
        }

    def vision_config(self):
        from transformers import BlipVisionConfig

        return BlipVisionConfig(hidden_size=self.vision_hidden, intermediate_size=self.vision_mlp,
                                num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
                                image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")


@torch.no_grad()
def fill_random(module: nn.Module, device="cpu", dtype: torch.dtype | None = torch.float32, seed: int = 0) -> nn.Module:
    """Allocate a meta-built module on ``device`` in ``dtype`` and fill it at a trained scale.

    The dtype is set while still on meta, so a 14B model is allocated once, in bfloat16
    (28 GB, not 56 + 28); ``dtype=None`` keeps the dtypes the module has (fp8 weights are drawn
    in bfloat16 one tensor at a time). ``device="meta"`` leaves shapes only.
    """
    if dtype is not None:
        nn.Module.to(module, dtype=dtype)  # nn.Module's own: diffusers' .to() warns needlessly
    if str(device) == "meta":
        return module.eval().requires_grad_(False)
    generator = torch.Generator(device=device).manual_seed(seed)
    module.to_empty(device=device)
    for name, p in module.named_parameters():
        if p.ndim >= 2 and p.dtype in FP8_DTYPES:  # normal_ has no float8 kernel
            p.copy_(torch.empty_like(p, dtype=torch.bfloat16).normal_(0.0, p[0].numel() ** -0.5, generator=generator))
        elif p.ndim >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
        elif "norm" in name or name.endswith(("gamma", "weight")):
            p.fill_(1.0)
        else:
            p.zero_()
    for name, b in module.named_buffers():
        if name.endswith("position_ids"):
            b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
        else:
            b.zero_()
    return module.eval().requires_grad_(False)


def random_wan(cfg: WanConfig, *, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0,
               linear_dtype: torch.dtype | None = None) -> CausalWanModel:
    """A CausalWanModel of this shape computing in ``dtype``; ``linear_dtype`` (float8_e4m3fn) stores
    the Linear layers' weights as an fp8 checkpoint does, allocated in fp8 from the start."""
    with torch.device("meta"):
        model = CausalWanModel(cfg, compute_dtype=dtype)
    nn.Module.to(model, dtype=dtype)
    if linear_dtype is not None:
        for module in model.modules():
            if isinstance(module, WanLinear):
                module.weight = nn.Parameter(module.weight.to(linear_dtype), requires_grad=False)
    return fill_random(model, device, None, seed)


def random_vae(base_dim: int | None = None, *, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """A StreamingVAE over a Wan 2.1 AutoencoderKLWan of the real structure and this width
    (default: the real one's). It keeps diffusers' own initialisation, under which the decoder's
    output stays mostly inside [-1, 1] as a trained VAE's does; the VAE is small, so it is
    initialised on the CPU and then moved."""
    from .vae import StreamingVAE, wan21_autoencoder

    width = {} if base_dim is None else {"base_dim": base_dim}
    if str(device) == "meta":
        with torch.device("meta"):
            vae = wan21_autoencoder(**width)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = wan21_autoencoder(**width)
    nn.Module.to(vae, device=device, dtype=dtype)  # nn.Module's own: diffusers' .to() warns needlessly
    return StreamingVAE(vae.eval().requires_grad_(False))


def random_router(size: RouterSize = RouterSize(), *, device="cpu", seed: int = 0, tokenizer=None):
    """ImageReward's architecture (BLIP ViT + BERT with cross-attention + MLP head) in float32.

    ``tokenizer`` defaults to a vocabulary of a few prompt words (enough to turn a prompt into
    ids; the cost of the forward does not depend on which ids they are).
    """
    from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

    from .router import ImageRewardScorer, RewardHead, text_config_from_med

    text_config = text_config_from_med(size.med_config(), encoder_width=size.vision_hidden)
    with torch.device("meta"):
        vision = BlipVisionModel(size.vision_config())
        text = BlipTextModel(text_config, add_pooling_layer=False)
        head = RewardHead(size.text_hidden)
    for offset, module in enumerate((vision, text, head)):
        fill_random(module, device, torch.float32, seed + offset)
    if tokenizer is None:
        words = sorted(set(re.findall(r"[a-z]+", "a red fox running through fresh snow at golden hour cinematic")))
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
        tokenizer = BertTokenizer(vocab=vocab)
    return ImageRewardScorer(vision, text, head, tokenizer)


@dataclass
class System:
    """Everything a session needs: drafter, target, VAE, scorer, the prompt and its embedding."""

    drafter: CausalWanModel
    target: CausalWanModel
    vae: Any            # StreamingVAE
    scorer: Any         # ImageRewardScorer
    text: torch.Tensor  # [1, L, text_dim]
    prompt: str

    def session_kwargs(self) -> dict:
        return dict(drafter=self.drafter, target=self.target, vae=self.vae, scorer=self.scorer,
                    text=self.text, prompt=self.prompt)


def random_system(drafter: WanConfig, target: WanConfig, *, vae_base_dim: int | None, router: RouterSize,
                  text: torch.Tensor, prompt: str, dtype: torch.dtype = torch.float32, device="cpu",
                  seed: int = 0, tokenizer=None, target_linear_dtype: torch.dtype | None = None) -> System:
    """Drafter, target and VAE in ``dtype`` (the router in float32), seeded one after another;
    ``target_linear_dtype``: the target's Linear weights stored so (an fp8 target)."""
    return System(random_wan(drafter, dtype=dtype, device=device, seed=seed + 1),
                  random_wan(target, dtype=dtype, device=device, seed=seed + 2, linear_dtype=target_linear_dtype),
                  random_vae(vae_base_dim, dtype=dtype, device=device, seed=seed + 3),
                  random_router(router, device=device, seed=seed + 4, tokenizer=tokenizer), text, prompt)
