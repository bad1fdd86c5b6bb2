"""Tiny random-weight models of the real architectures, in memory and as real files.

The demo, the tests and the CPU benchmark run the real code paths on these: a causal Wan
DiT drafter and target (same head width, different depth and width), a Wan 2.1 VAE with the
real structure and a narrow base width, and an ImageReward router (BLIP ViT at 224 with
16-pixel patches, BERT with cross-attention, the reward MLP). ``write_tiny_model_files``
writes them in the formats users have on disk (a Self-Forcing ``.pt`` dict, a Krea-style
``model.``-prefixed safetensors, ComfyUI's original-layout VAE, an ImageReward folder),
so loaders are exercised exactly as with real weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .router import (CHECKPOINT_FILE, HEAD_WIDTHS, MED_CONFIG_FILE, TOKENIZER_DIR, BERT_VOCAB_SIZE,
                     ImageRewardScorer, RewardHead, load_bert_tokenizer, text_config_from_med)
from .vae import StreamingVAE, original_wan_vae_state_dict, tiny_wan_vae
from .wan import CausalWanModel, WanConfig

TEXT_DIM = 32
DRAFTER = WanConfig.tiny(dim=32, num_layers=2, ffn_dim=64, text_dim=TEXT_DIM)
TARGET = WanConfig.tiny(dim=64, num_layers=3, ffn_dim=128, text_dim=TEXT_DIM)
VAE_BASE_DIM = 8
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1,  # 64-wide heads as BLIP
              intermediate_size=128, image_size=224, patch_size=16)
MED_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 40, "vocab_size": BERT_VOCAB_SIZE + 2, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "initializer_range": 0.02,
    "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1,
    "add_cross_attention": True, "encoder_width": VISION["hidden_size"],
}


def tiny_wan(cfg: WanConfig, seed: int) -> CausalWanModel:
    """A Wan DiT of ``cfg`` with seeded random weights, scaled so activations stay O(1)."""
    torch.manual_seed(seed)
    model = CausalWanModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.1)
            elif p.ndim >= 2:
                torch.nn.init.normal_(p, 0, (1.0 / p[0].numel()) ** 0.5)
    return model.eval().requires_grad_(False)


def tiny_text(prompt: str, text_dim: int = TEXT_DIM, tokens: int = 16) -> torch.Tensor:
    """A deterministic stand-in for the umT5 embedding of a prompt, [1, tokens, text_dim]."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.randn(1, tokens, text_dim, generator=torch.Generator().manual_seed(seed))


def write_bert_vocab(folder: str | os.PathLike, size: int = BERT_VOCAB_SIZE) -> None:
    """A vocab.txt laid out like bert-base-uncased's (specials, a few words, filler)."""
    os.makedirs(folder, exist_ok=True)
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += "a an the of in on with and red fox running through fresh snow golden hour cat dog".split()
    words += [f"[unused{i}]" for i in range(99, 99 + size - len(words))]
    Path(folder, "vocab.txt").write_text("\n".join(words[:size]) + "\n", encoding="utf-8")


_VISION_TO_ORIGINAL = (  # BlipVisionModel name -> BLIP ViT name (inverse of the router's renames)
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.", "patch_embed.proj."),
    ("post_layernorm.", "norm."),
    ("encoder.layers.", "blocks."),
    (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
    (".self_attn.qkv.", ".attn.qkv."), (".self_attn.projection.", ".attn.proj."),
)


def image_reward_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """An ImageReward-layout state dict (original key names) for the tiny router config."""
    from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(**VISION, layer_norm_eps=1e-6, hidden_act="gelu"))
    text = BlipTextModel(text_config_from_med(MED_CONFIG, VISION["hidden_size"]), add_pooling_layer=False)
    head = RewardHead(MED_CONFIG["hidden_size"])
    with torch.no_grad():  # BERT-style 0.02 init makes every frame score alike; widen it
        for module in (vision, text, head):
            for m in module.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, 0, m.in_features ** -0.5)
    sd = {}
    for name, t in vision.state_dict().items():
        for new, old in _VISION_TO_ORIGINAL:
            name = name.replace(new, old)
        sd["blip.visual_encoder." + name] = t
    sd.update({"blip.text_encoder." + k: t for k, t in text.state_dict().items()
               if not k.endswith("position_ids")})
    sd.update({"mlp." + k: t for k, t in head.state_dict().items()})
    assert HEAD_WIDTHS[-1] == 1
    return sd


def write_image_reward_folder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """ImageReward.pt + med_config.json + bert-base-uncased/, as models/image_reward/ holds them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(image_reward_state_dict(seed), folder / CHECKPOINT_FILE)
    (folder / MED_CONFIG_FILE).write_text(json.dumps(MED_CONFIG, indent=2))
    write_bert_vocab(folder / TOKENIZER_DIR)
    return folder


@dataclass
class TinySystem:
    """Everything a session needs, tiny and random."""

    drafter: CausalWanModel
    target: CausalWanModel
    vae: StreamingVAE
    scorer: ImageRewardScorer
    text: torch.Tensor
    prompt: str

    def session_kwargs(self) -> dict:
        return dict(drafter=self.drafter, target=self.target, vae=self.vae, scorer=self.scorer,
                    text=self.text, prompt=self.prompt)


def build_tiny_scorer(seed: int = 0) -> ImageRewardScorer:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer is read from a real vocab.txt
        write_bert_vocab(tmp)
        tokenizer = load_bert_tokenizer(tmp)
    return ImageRewardScorer.from_state_dict(image_reward_state_dict(seed), MED_CONFIG, tokenizer)


def build_tiny_system(seed: int = 0, prompt: str = "a red fox running through fresh snow",
                      drafter: WanConfig = DRAFTER, target: WanConfig = TARGET) -> TinySystem:
    return TinySystem(drafter=tiny_wan(drafter, seed + 1), target=tiny_wan(target, seed + 2),
                      vae=StreamingVAE(tiny_wan_vae(VAE_BASE_DIM, seed=seed + 3)),
                      scorer=build_tiny_scorer(seed + 4), text=tiny_text(prompt), prompt=prompt)


def write_tiny_model_files(models_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Write a ComfyUI-style models folder of tiny files in the real formats.

    - ``diffusion_models/sdvg_tiny_drafter.pt``: a Self-Forcing dict {generator, generator_ema}
      with ``model.``-prefixed keys (the two variants differ);
    - ``diffusion_models/sdvg_tiny_target.safetensors``: Krea-style, ``model.`` prefix;
    - ``vae/sdvg_tiny_vae.safetensors``: ComfyUI's original Wan key layout;
    - ``image_reward/``: ImageReward.pt, med_config.json, bert-base-uncased/vocab.txt.
    """
    root = Path(models_dir)
    for sub in ("diffusion_models", "vae", "image_reward"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    prefixed = lambda m: {f"model.{k}": v.contiguous() for k, v in m.state_dict().items()}  # noqa: E731
    drafter = root / "diffusion_models" / "sdvg_tiny_drafter.pt"
    torch.save({"generator_ema": prefixed(tiny_wan(DRAFTER, seed + 1)),
                "generator": prefixed(tiny_wan(DRAFTER, seed + 11))}, drafter)
    target = root / "diffusion_models" / "sdvg_tiny_target.safetensors"
    save_file(prefixed(tiny_wan(TARGET, seed + 2)), target)
    vae = root / "vae" / "sdvg_tiny_vae.safetensors"
    save_file({k: v.contiguous() for k, v in
               original_wan_vae_state_dict(tiny_wan_vae(VAE_BASE_DIM, seed=seed + 3)).items()}, vae)
    router = write_image_reward_folder(root / "image_reward", seed + 4)
    return {"drafter": drafter, "target": target, "vae": vae, "router": router,
            "text_dim": TEXT_DIM, "sizes": {"width": 128, "height": 80}}


def write_tiny_text_encoder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A transformers-format umT5 encoder (d_model = TEXT_DIM) with a spiece.model tokenizer."""
    import io

    import sentencepiece
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sentences = ["a red fox running through fresh snow at golden hour",
                 "a stylish woman walks down a tokyo street filled with neon",
                 "several giant wooly mammoths approach through a snowy meadow"]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 20), model_writer=proto, vocab_size=40,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, minloglevel=2)
    (folder / "spiece.model").write_bytes(proto.getvalue())
    config = UMT5Config(vocab_size=40, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        dropout_rate=0.0)
    torch.manual_seed(seed)
    UMT5EncoderModel(config).save_pretrained(folder)
    return folder
