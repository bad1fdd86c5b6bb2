"""Tiny random-weight models of the real architectures, in memory and as real files.

The demo and the tests run the real code paths on these: a causal Wan DiT drafter and target
(same head width, different depth and width), a Wan 2.1 VAE with the real structure and a
narrow base width, and an ImageReward router (BLIP ViT at 224 with 16-pixel patches, BERT
with cross-attention, the reward MLP). ``write_tiny_model_files`` writes them in the formats
users have on disk (a Self-Forcing ``.pt`` dict, a Krea-style ``model.``-prefixed
safetensors, ComfyUI's original-layout VAE, an ImageReward folder), so loaders are exercised
exactly as with real weights. Weights come from ``random_models``, as the benchmarks' do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .random_models import RouterSize, System, random_router, random_system, random_vae, random_wan
from .router import (BERT_VOCAB_SIZE, CHECKPOINT_FILE, MED_CONFIG_FILE, TOKENIZER_DIR, VISION_CONFIG_FILE,
                     ImageRewardScorer, load_bert_tokenizer, original_vision_name)
from .vae import original_wan_vae_state_dict
from .wan import CausalWanModel, WanConfig

TEXT_DIM = 32
DRAFTER = WanConfig.tiny(dim=32, num_layers=2, ffn_dim=64, text_dim=TEXT_DIM)
TARGET = WanConfig.tiny(dim=64, num_layers=3, ffn_dim=128, text_dim=TEXT_DIM)
VAE_BASE_DIM = 4
# 64-wide heads as BLIP's; 64 is not a BLIP ViT width, so files state the head count.
ROUTER = RouterSize(vision_hidden=64, vision_layers=2, vision_heads=1, vision_mlp=128,
                    text_hidden=32, text_layers=2, text_heads=2, text_mlp=64, text_positions=40,
                    vocab_size=BERT_VOCAB_SIZE + 2)
ROUTER_VISION_CONFIG = {"num_attention_heads": ROUTER.vision_heads}  # what vision_config.json states


def tiny_wan(cfg: WanConfig, seed: int) -> CausalWanModel:
    """A Wan DiT of ``cfg`` with seeded random weights."""
    return random_wan(cfg, seed=seed)


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


def tiny_tokenizer():
    with tempfile.TemporaryDirectory() as tmp:  # read from a real vocab.txt, as from a folder
        write_bert_vocab(tmp)
        return load_bert_tokenizer(tmp)


def build_tiny_scorer(seed: int = 0) -> ImageRewardScorer:
    return random_router(ROUTER, seed=seed, tokenizer=tiny_tokenizer())


def image_reward_state_dict(scorer: ImageRewardScorer) -> dict[str, torch.Tensor]:
    """The scorer's weights under ImageReward.pt's key names (the file layout users have)."""
    sd = {"blip.visual_encoder." + original_vision_name(k): t for k, t in scorer.vision.state_dict().items()}
    sd.update({"blip.text_encoder." + k: t for k, t in scorer.text.state_dict().items()
               if not k.endswith("position_ids")})
    sd.update({"mlp." + k: t for k, t in scorer.head.state_dict().items()})
    return {k: v.contiguous() for k, v in sd.items()}


def write_image_reward_folder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """ImageReward.pt + med_config.json + vision_config.json + bert-base-uncased/, as
    models/image_reward/ holds them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(image_reward_state_dict(build_tiny_scorer(seed)), folder / CHECKPOINT_FILE)
    (folder / MED_CONFIG_FILE).write_text(json.dumps(ROUTER.med_config(), indent=2))
    (folder / VISION_CONFIG_FILE).write_text(json.dumps(ROUTER_VISION_CONFIG))
    write_bert_vocab(folder / TOKENIZER_DIR)
    return folder


def build_tiny_system(seed: int = 0, prompt: str = "a red fox running through fresh snow",
                      drafter: WanConfig = DRAFTER, target: WanConfig = TARGET) -> System:
    return random_system(drafter, target, vae_base_dim=VAE_BASE_DIM, router=ROUTER, text=tiny_text(prompt),
                         prompt=prompt, seed=seed, tokenizer=tiny_tokenizer())


def write_tiny_model_files(models_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Write a ComfyUI-style models folder of tiny files in the real formats.

    - ``diffusion_models/sdvg_tiny_drafter.pt``: a Self-Forcing dict {generator, generator_ema}
      with ``model.``-prefixed keys (the two variants differ);
    - ``diffusion_models/sdvg_tiny_target.safetensors``: Krea-style, ``model.`` prefix;
    - ``vae/sdvg_tiny_vae.safetensors``: ComfyUI's original Wan key layout;
    - ``image_reward/``: ImageReward.pt, med_config.json, vision_config.json, bert-base-uncased/vocab.txt.
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
               original_wan_vae_state_dict(random_vae(VAE_BASE_DIM, seed=seed + 3).vae).items()}, vae)
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


# Tiny models that ComfyUI's own loaders accept, for the end-to-end tests in a real ComfyUI: its
# Wan detection fixes 128-wide heads, a 4096-wide text embedding and a 256-wide frequency
# embedding, and its VAE loader (v0.3.64) builds only the full-size Wan 2.1 VAE.
COMFY_TEXT_DIM = 4096
COMFY_DRAFTER = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2)
COMFY_TARGET = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
COMFY_LORA_LAYERS = ("blocks.0.self_attn.q", "blocks.1.ffn.0")


def write_comfy_model_files(models_dir: str | os.PathLike, seed: int = 0) -> dict:
    """A ComfyUI models folder of tiny files its loaders accept, in the layouts users have:

    - ``diffusion_models/sdvg_comfy_drafter.pt``: a Self-Forcing dict, ``model.`` prefix;
    - ``diffusion_models/sdvg_comfy_target.safetensors``: ComfyUI's repackaged layout
      (``model.diffusion_model.`` prefix), for Load Target and core's Load Diffusion Model;
    - ``vae/sdvg_wan21_vae_random.safetensors``: a full-size Wan 2.1 VAE, original layout, bf16;
    - ``loras/sdvg_tiny_target_lora.safetensors``: a rank-4 LoRA on two target layers;
    - ``image_reward/``: the tiny router.
    """
    root = Path(models_dir)
    for sub in ("diffusion_models", "vae", "loras", "image_reward"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    drafter = root / "diffusion_models" / "sdvg_comfy_drafter.pt"
    weights = {f"model.{k}": v.contiguous() for k, v in tiny_wan(COMFY_DRAFTER, seed + 1).state_dict().items()}
    torch.save({"generator_ema": weights, "generator": weights}, drafter)
    target_model = tiny_wan(COMFY_TARGET, seed + 2)
    target = root / "diffusion_models" / "sdvg_comfy_target.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in target_model.state_dict().items()}, target)
    vae = root / "vae" / "sdvg_wan21_vae_random.safetensors"
    full = random_vae(None, seed=seed + 3).vae
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in original_wan_vae_state_dict(full).items()}, vae)
    lora = root / "loras" / "sdvg_tiny_target_lora.safetensors"
    save_file(tiny_lora(target_model, seed + 5), lora)
    router = write_image_reward_folder(root / "image_reward", seed + 4)
    return {"drafter": drafter, "target": target, "vae": vae, "lora": lora, "router": router,
            "text_dim": COMFY_TEXT_DIM}


def tiny_lora(model: CausalWanModel, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA for ComfyUI's loaders (``diffusion_model.<layer>.lora_A/B.weight`` + ``alpha``), big
    enough to change the output visibly at strength 1."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for layer in COMFY_LORA_LAYERS:
        rows, cols = model.get_submodule(layer).weight.shape
        out[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) / cols ** 0.5
        out[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) / rank ** 0.5
        out[f"diffusion_model.{layer}.alpha"] = torch.tensor(float(rank))
    return out


def write_wan_gguf(model: CausalWanModel, path: str | os.PathLike) -> Path:
    """The model as a Q8_0 GGUF file for city96's ComfyUI-GGUF loader (needs the ``gguf`` package).

    As its converter does: the 2-D Linear weights of the blocks in Q8_0; the other 2-D weights in
    F16; 1-D and small tensors, the raw ``modulation`` parameters and the 5-D patch embedding in F32.
    """
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(path=None, arch="wan")  # general.architecture = "wan": what the loader checks
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if data.ndim != 2 or data.size <= 1024 or "modulation" in name:
            kind = q.F32
        elif name.startswith("blocks.") and data.shape[-1] % 32 == 0:
            kind = q.Q8_0
        else:
            kind = q.F16
        writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), kind), raw_dtype=kind)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
