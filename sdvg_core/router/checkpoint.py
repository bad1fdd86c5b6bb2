"""ImageReward's files: ``ImageReward.pt``, ``med_config.json``, the ``bert-base-uncased/`` tokenizer.

``inspect_folder`` reads and checks all three without loading a weight (the checkpoint is
memory-mapped): every tensor must belong to ImageReward v1.0, the vision tower must be one of
BLIP's ViTs at 224 pixels (its head count is not in the weights, so an unknown width is
refused unless ``vision_config.json`` states it), ``med_config.json`` must describe the
checkpoint's text encoder, and the tokenizer must have bert-base-uncased's vocabulary.
Messages name tensors as the file names them.

The renames from ImageReward's key names onto transformers' ``BlipVisionModel`` /
``BlipTextModel`` are in ``split_state_dict``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from ..errors import CheckpointError, MissingFileError
from ..files import read_tensors
from .preprocess import IMAGE_SIZE

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
VISION_CONFIG_FILE = "vision_config.json"  # optional: only for a vision tower that is not BLIP's ViT-B/L
TOKENIZER_DIR = "bert-base-uncased"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")  # either one is enough
BERT_VOCAB_SIZE = 30522  # bert-base-uncased; anything smaller is the offline fallback trap
HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # ImageReward's MLP after the 768-wide [CLS] feature
BLIP_VITS = {768: ("ViT-B/16", 12), 1024: ("ViT-L/16", 16)}  # width -> (name, heads of 64)


def where_to_put(folder: str | None = None) -> str:
    """The fix for a bad router folder; it names the folder that was read when there is one."""
    place = folder.rstrip("/\\") + os.sep if folder else "ComfyUI/models/image_reward/ (or a sub-folder of it)"
    return ("Put ImageReward.pt and med_config.json (huggingface.co/THUDM/ImageReward) and a "
            "bert-base-uncased/ folder holding vocab.txt (huggingface.co/google-bert/bert-base-uncased) "
            f"in {place}.")


WHERE_TO_PUT = where_to_put()

# Tensors of an ImageReward checkpoint that its scoring forward never reads:
# BLIP_Pretrain's contrastive projections and BERT's position_ids buffer (always arange).
UNUSED_CHECKPOINT_KEYS = re.compile(
    r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|^blip\.text_encoder\.embeddings\.position_ids$"
)
PREFIXES = {"vision": "blip.visual_encoder.", "text": "blip.text_encoder.", "head": "mlp."}

_VISION_RENAMES = (  # BLIP/timm ViT name in the file -> BlipVisionModel name (regex, replacement)
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layers.\1.mlp.\2."),
)
_VISION_TO_ORIGINAL = (  # BlipVisionModel name piece -> BLIP ViT name piece
    ("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.", "patch_embed.proj."), ("post_layernorm.", "norm."),
    ("encoder.layers.", "blocks."), (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
    (".self_attn.qkv.", ".attn.qkv."), (".self_attn.projection.", ".attn.proj."),
)


@dataclass
class ImageRewardParts:
    """A checkpoint split into the three modules' state dicts (their own key names)."""

    vision: dict[str, Tensor] = field(default_factory=dict)
    text: dict[str, Tensor] = field(default_factory=dict)
    head: dict[str, Tensor] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)   # file keys nothing accounts for

    def group(self, name: str) -> dict[str, Tensor]:
        return getattr(self, name)


def split_state_dict(state_dict: Mapping[str, Tensor]) -> ImageRewardParts:
    """``blip.visual_encoder.*`` renamed to BlipVisionModel names, ``blip.text_encoder.*`` one to
    one onto BlipTextModel, ``mlp.layers.*`` the reward head; known-unused tensors dropped."""
    parts = ImageRewardParts()
    for key, tensor in state_dict.items():
        if UNUSED_CHECKPOINT_KEYS.match(key):
            continue
        if key.startswith(PREFIXES["vision"]) and (name := _rename(key[len(PREFIXES["vision"]):])):
            parts.vision[name] = tensor
        elif key.startswith(PREFIXES["text"]):
            parts.text[key[len(PREFIXES["text"]):]] = tensor
        elif key.startswith("mlp.layers."):
            parts.head[key[len(PREFIXES["head"]):]] = tensor
        else:
            parts.leftovers.append(key)
    return parts


def file_key(group: str, name: str) -> str:
    """The key a module's tensor has in ImageReward.pt (the inverse of ``split_state_dict``)."""
    if group == "vision":
        name = original_vision_name(name)
    return PREFIXES[group] + name


def original_vision_name(name: str) -> str:
    """BlipVisionModel name -> BLIP ViT name (the inverse of ``_VISION_RENAMES``)."""
    for new, old in _VISION_TO_ORIGINAL:
        name = name.replace(new, old)
    return name


def _rename(name: str) -> str | None:
    for pattern, replacement in _VISION_RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return None


# ----------------------------------------------------------------------------- configs


def vision_config(vision: Mapping[str, Tensor], stated: Mapping[str, Any] | None = None,
                  source: str = CHECKPOINT_FILE) -> BlipVisionConfig:
    """The BLIP ViT config of converted vision weights: sizes from the shapes, the head count
    from BLIP's known ViTs (or ``stated``, a vision_config.json), 224-pixel input enforced."""
    try:
        hidden = int(vision["embeddings.class_embedding"].shape[-1])
        patch = int(vision["embeddings.patch_embedding.weight"].shape[-1])
        positions = int(vision["embeddings.position_embedding"].shape[1])
        intermediate = int(vision["encoder.layers.0.mlp.fc1.weight"].shape[0])
    except KeyError as missing:
        raise CheckpointError(
            f"{source}: the vision tower has no tensor {file_key('vision', missing.args[0])!r}; this is "
            f"not an ImageReward checkpoint. {WHERE_TO_PUT}") from None
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    stated = dict(stated or {})
    heads = stated.get("num_attention_heads")
    if heads is None:
        if hidden not in BLIP_VITS:
            raise CheckpointError(
                f"{source}: its vision tower is {hidden} wide, which is neither BLIP's ViT-B (768) nor ViT-L "
                f"(1024, ImageReward v1.0), so its attention head count cannot be verified. Use the original "
                f"ImageReward.pt, or state the head count in {VISION_CONFIG_FILE} beside it: "
                '{"num_attention_heads": N}.')
        heads = BLIP_VITS[hidden][1]
    if not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise CheckpointError(f"{VISION_CONFIG_FILE}: num_attention_heads {heads!r} does not divide the "
                              f"vision width {hidden}.")
    grid = math.isqrt(positions - 1)
    image_size = grid * patch
    if grid * grid != positions - 1 or image_size != IMAGE_SIZE:
        raise CheckpointError(
            f"{source}: its vision tower takes {image_size}x{image_size} images ({positions} position "
            f"embeddings, {patch}-pixel patches); ImageReward v1.0 and its preprocessing use "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}. This is not the ImageReward v1.0 checkpoint. {WHERE_TO_PUT}")
    if stated.get("image_size", image_size) != image_size:
        raise CheckpointError(f"{VISION_CONFIG_FILE} says image_size {stated['image_size']}, but the "
                              f"checkpoint's position embeddings are for {image_size}; they disagree.")
    return BlipVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=image_size, patch_size=patch,
        layer_norm_eps=1e-6,  # timm ViT's partial(nn.LayerNorm, eps=1e-6)
        hidden_act="gelu",  # nn.GELU, exact erf form
    )


def text_config_from_med(med_config: Mapping[str, Any], encoder_width: int) -> BlipTextConfig:
    """BlipTextConfig from ImageReward's med_config.json (a BERT config with cross-attention).

    BLIP_Pretrain overwrites ``encoder_width`` with the ViT width, so it comes from the vision
    tower, not from the file. ``is_decoder=True`` only makes transformers build the
    cross-attention layers; the forward is called with ``is_decoder=False`` (bidirectional).
    Dropouts are zero: this is inference.
    """
    if not med_config.get("add_cross_attention", False):
        raise CheckpointError(
            f"{MED_CONFIG_FILE}: add_cross_attention is not true; ImageReward's text encoder "
            f"cross-attends to the image. Use the med_config.json shipped with ImageReward. {WHERE_TO_PUT}")
    try:
        return BlipTextConfig(
            vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
            encoder_hidden_size=encoder_width, intermediate_size=med_config["intermediate_size"],
            num_hidden_layers=med_config["num_hidden_layers"],
            num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            hidden_act=med_config.get("hidden_act", "gelu"),
            layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
            pad_token_id=med_config.get("pad_token_id", 0),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            is_decoder=True, use_cache=False,
        )
    except KeyError as missing:
        raise CheckpointError(f"{MED_CONFIG_FILE}: missing the field {missing}. {WHERE_TO_PUT}") from None


def load_bert_tokenizer(folder: str) -> BertTokenizer:
    """The bert-base-uncased tokenizer from a local folder, prepared as BLIP's ``init_tokenizer``.

    Refuses a vocabulary smaller than bert-base-uncased's: without its files, transformers
    silently builds a 5-token tokenizer that turns every word into [UNK].
    """
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise MissingFileError(
            f"ImageReward tokenizer: {folder} must be a folder holding vocab.txt (or tokenizer.json) of "
            f"bert-base-uncased. {WHERE_TO_PUT}")
    tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
    vocab_size = len(tokenizer.get_vocab())
    if vocab_size < BERT_VOCAB_SIZE:
        raise CheckpointError(
            f"ImageReward tokenizer in {folder} has only {vocab_size} tokens, bert-base-uncased has "
            f"{BERT_VOCAB_SIZE}. With a vocabulary that small every prompt word becomes [UNK] and the "
            f"router scores images against an empty prompt without any error. Put the real vocab.txt "
            f"of bert-base-uncased in that folder. {WHERE_TO_PUT}")
    # BLIP's init_tokenizer adds these two (ids 30522, 30523; med_config's vocab_size is 30524).
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


# ----------------------------------------------------------------------------- the folder


@dataclass
class RouterFiles:
    """A checked router folder: the split checkpoint (memory-mapped), configs, tokenizer."""

    parts: ImageRewardParts
    vision_config: BlipVisionConfig
    text_config: BlipTextConfig
    tokenizer: BertTokenizer


def inspect_folder(folder: str) -> RouterFiles:
    """Read and check the router folder without loading a weight (see the module docstring)."""
    try:
        return _inspect_folder(folder)
    except (CheckpointError, MissingFileError) as error:  # the fix names the folder the user chose
        raise type(error)(str(error).replace(WHERE_TO_PUT, where_to_put(folder))) from error.__cause__


def _inspect_folder(folder: str) -> RouterFiles:
    paths = {name: os.path.join(folder, name) for name in (CHECKPOINT_FILE, MED_CONFIG_FILE, TOKENIZER_DIR)}
    missing = [p + (os.sep if n == TOKENIZER_DIR else "") for n, p in paths.items()
               if not (os.path.isdir(p) if n == TOKENIZER_DIR else os.path.isfile(p))]
    if missing:
        raise MissingFileError(f"ImageReward router: missing {', '.join(missing)}. {WHERE_TO_PUT}")
    med_config = _read_json(paths[MED_CONFIG_FILE])
    stated = os.path.join(folder, VISION_CONFIG_FILE)
    stated = _read_json(stated) if os.path.isfile(stated) else None
    tokenizer = load_bert_tokenizer(paths[TOKENIZER_DIR])
    return check_parts(read_checkpoint(paths[CHECKPOINT_FILE]), med_config, tokenizer, stated)


def read_checkpoint(path: str) -> dict[str, Tensor]:
    loaded = read_tensors(path, "ImageReward checkpoint")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and set(loaded) == {wrapper} and isinstance(loaded[wrapper], dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors; this is not ImageReward.pt. {WHERE_TO_PUT}")
    return loaded


def check_parts(state_dict: Mapping[str, Tensor], med_config: Mapping[str, Any], tokenizer,
                stated_vision: Mapping[str, Any] | None = None) -> RouterFiles:
    """Split and check a checkpoint against its configs: every tensor present, none left over,
    every shape what the configs imply."""
    parts = split_state_dict(state_dict)
    if parts.leftovers:
        raise CheckpointError(
            f"{CHECKPOINT_FILE}: {len(parts.leftovers)} tensors belong to no part of ImageReward: "
            f"{_preview(parts.leftovers)}. This is not an ImageReward v1.0 checkpoint. {WHERE_TO_PUT}")
    vision = vision_config(parts.vision, stated_vision)
    text = text_config_from_med(med_config, encoder_width=vision.hidden_size)
    with torch.device("meta"):
        expected = {"vision": BlipVisionModel(vision).state_dict(),
                    "text": BlipTextModel(text, add_pooling_layer=False).state_dict(),
                    "head": _head_shapes(text.hidden_size)}
    for group, shapes in expected.items():
        _check_group(group, parts.group(group), shapes)
    return RouterFiles(parts, vision, text, tokenizer)


def _head_shapes(width: int) -> dict[str, Tensor]:
    from .model import RewardHead

    return RewardHead(width).state_dict()


def _check_group(group: str, tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    missing = [file_key(group, k) for k in expected if k not in tensors]
    unexpected = [file_key(group, k) for k in tensors if k not in expected]
    if missing or unexpected:
        found = []
        if missing:
            found.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            found.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        raise CheckpointError(
            f"{CHECKPOINT_FILE}: its {group} tensors do not match ImageReward's structure ({'; '.join(found)}). "
            f"Use the original ImageReward.pt with its med_config.json. {WHERE_TO_PUT}")
    wrong = [f"{file_key(group, k)} is {tuple(tensors[k].shape)}, expected {tuple(v.shape)}"
             for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        why = (f"{MED_CONFIG_FILE} and {CHECKPOINT_FILE} disagree: use the med_config.json that came with "
               "this checkpoint" if group == "text" else f"{CHECKPOINT_FILE} is not ImageReward v1.0")
        raise CheckpointError(f"{why} ({len(wrong)} tensors differ: {'; '.join(wrong[:3])}). {WHERE_TO_PUT}")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}). {WHERE_TO_PUT}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object of settings. {WHERE_TO_PUT}")
    return value


def load_into(module: nn.Module, tensors: Mapping[str, Tensor], device, dtype: torch.dtype) -> None:
    """Assign checked tensors to a meta-built module, cast to ``dtype`` on ``device``."""
    cast = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in tensors.items()}
    module.load_state_dict(cast, strict=True, assign=True)


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
