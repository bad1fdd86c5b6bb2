"""The router: ImageReward v1.0 on transformers' BLIP, frame aggregation, threshold policies.

ImageReward (THUDM) scores an image against a prompt: a BLIP ViT encodes the image, a BERT
text encoder cross-attends to the image tokens, the [CLS] output goes through a small MLP,
and the reward is normalised with the training set's mean and std. The router scores every
frame of a drafted block, aggregates (the worst frame by default) and accepts the block iff
the aggregate reaches tau. See SDVG_SPEC.md, sections 2.4 and 3.

The weights load into transformers' `BlipVisionModel` and `BlipTextModel`; the renames from
ImageReward's original key names are in `convert_image_reward_state_dict`. We do not depend on
the `image-reward` package (it does not import with transformers 5 and pulls in torchvision).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from .errors import CheckpointError, InputError, MissingFileError, NumericalError, SDVGError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072

IMAGE_SIZE = 224
PROMPT_MAX_LENGTH = 35  # ImageReward tokenises with padding="max_length", max_length=35
BERT_VOCAB_SIZE = 30522  # bert-base-uncased; anything smaller is the offline fallback trap
HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # ImageReward's MLP after the 768-wide [CLS] feature

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER_DIR = "bert-base-uncased"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")  # either one is enough
WHERE_TO_PUT = (
    "Put ImageReward.pt and med_config.json (huggingface.co/THUDM/ImageReward) and a "
    "bert-base-uncased/ folder holding vocab.txt (huggingface.co/google-bert/bert-base-uncased) "
    "in ComfyUI/models/image_reward/."
)

# Tensors of an ImageReward checkpoint that its scoring forward never reads:
# BLIP_Pretrain's contrastive projections and BERT's position_ids buffer (always arange).
UNUSED_CHECKPOINT_KEYS = re.compile(
    r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|^blip\.text_encoder\.embeddings\.position_ids$"
)

_VISION_RENAMES = (  # original timm/BLIP ViT name -> BlipVisionModel name (regex, replacement)
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


# ----------------------------------------------------------------------------- preprocessing


def frames_to_pil(frames: Tensor) -> list[Image.Image]:
    """Decoder frames `[T, 3, H, W]` in [-1, 1] -> RGB PIL images.

    `(x + 1) / 2`, clamped to [0, 1], scaled by 255 and ROUNDED to uint8 (rounding, not
    truncation: the unbiased choice; the two differ by at most one level).
    """
    _check_frames(frames)
    pixels = ((frames.detach().float() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(frame) for frame in array]


def preprocess_pil(images: Iterable[Image.Image]) -> Tensor:
    """ImageReward's own transform, exactly: `[T, 3, 224, 224]` float32.

    torchvision's `Resize(224, BICUBIC)` (shorter side to 224, longer side truncated to int),
    `CenterCrop(224)` (offsets rounded half-to-even as `int(round(.))`), `ToTensor()` (/255),
    `Normalize(CLIP_MEAN, CLIP_STD)`, written with PIL and numpy only.
    """
    tensors = []
    for image in images:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(IMAGE_SIZE * long / short)
        size = (IMAGE_SIZE, new_long) if width <= height else (new_long, IMAGE_SIZE)
        if (width, height) != size:
            image = image.resize(size, Image.BICUBIC)
        left = int(round((size[0] - IMAGE_SIZE) / 2.0))
        top = int(round((size[1] - IMAGE_SIZE) / 2.0))
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    if not tensors:
        raise InputError("preprocess_pil: got no images; pass at least one frame to score.")
    return _clip_normalise(torch.stack(tensors))


def preprocess_tensor(frames: Tensor) -> Tensor:
    """On-device approximation of `frames_to_pil` + `preprocess_pil`: `[T, 3, 224, 224]` float32.

    Emulates PIL step by step: quantise the input to 8 bits, resize horizontally then
    vertically with torch's antialiased bicubic (the PIL-compatible kernel), rounding and
    clamping to 8 bits after each pass as PIL does, centre crop, CLIP normalise. PIL's
    fixed-point arithmetic is left out. Measured against the PIL path on smooth, noisy and
    blocky frames of 480x832, 832x480, 720x1280, 300x300 and 100x150 (test_router.py::
    test_preprocess_tensor_deviation_is_bounded): over 99.9% of values identical, the rest one
    8-bit level apart, so max |diff| = 1/255 in [0, 1] units (<= 0.015 after normalisation).
    Use it to skip the GPU->CPU copy; the exact path stays the default in `score`.
    """
    _check_frames(frames)
    x = _quantise(((frames.float() + 1) / 2).clamp(0, 1))
    height, width = x.shape[-2:]
    short, long = min(width, height), max(width, height)
    new_long = int(IMAGE_SIZE * long / short)
    new_w, new_h = (IMAGE_SIZE, new_long) if width <= height else (new_long, IMAGE_SIZE)
    if new_w != width:  # PIL resamples horizontally first, into an 8-bit image
        x = _quantise(F.interpolate(x, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False))
    if new_h != height:
        x = _quantise(F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False))
    top = int(round((new_h - IMAGE_SIZE) / 2.0))
    left = int(round((new_w - IMAGE_SIZE) / 2.0))
    x = x[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    return _clip_normalise(x)


def _quantise(x: Tensor) -> Tensor:
    return x.clamp(0, 1).mul(255).round().div(255)


def _clip_normalise(x: Tensor) -> Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x.float() - mean) / std).contiguous()


def _check_frames(frames: Any) -> None:
    if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise InputError(f"frames: expected a tensor [T, 3, H, W] with T >= 1 in [-1, 1], got {got}.")
    if not frames.is_floating_point():
        raise InputError(f"frames: expected floating values in [-1, 1], got dtype {frames.dtype}.")


# ----------------------------------------------------------------------------- checkpoint


def convert_image_reward_state_dict(
    state_dict: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], list[str], list[str]]:
    """Split an ImageReward state dict into (vision, text, head, ignored, leftovers).

    `blip.visual_encoder.*` is renamed to `BlipVisionModel` names, `blip.text_encoder.*` maps
    one to one onto `BlipTextModel`, `mlp.layers.*` is the reward head. `ignored` lists the
    known-unused tensors (UNUSED_CHECKPOINT_KEYS); `leftovers` lists keys nothing accounts for.
    """
    vision, text, head, ignored, leftovers = {}, {}, {}, [], []
    for key, tensor in state_dict.items():
        if UNUSED_CHECKPOINT_KEYS.match(key):
            ignored.append(key)
        elif key.startswith("blip.visual_encoder."):
            name = _rename_vision(key[len("blip.visual_encoder.") :])
            if name is None:
                leftovers.append(key)
            else:
                vision[name] = tensor
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder.") :]] = tensor
        elif key.startswith("mlp.layers."):
            head["layers." + key[len("mlp.layers.") :]] = tensor
        else:
            leftovers.append(key)
    return vision, text, head, ignored, leftovers


def _rename_vision(name: str) -> str | None:
    for pattern, replacement in _VISION_RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return None


def vision_config_from_state_dict(vision: Mapping[str, Tensor], num_attention_heads: int | None = None) -> BlipVisionConfig:
    """The BLIP ViT config implied by converted vision weights (ViT-L/16 at 224 for ImageReward v1.0).

    Head count is not in the shapes: BLIP's ViTs use 64-wide heads (base 12, large 16),
    so it defaults to hidden // 64.
    """
    try:
        hidden = vision["embeddings.class_embedding"].shape[-1]
        patch = vision["embeddings.patch_embedding.weight"].shape[-1]
        positions = vision["embeddings.position_embedding"].shape[1]
        intermediate = vision["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise CheckpointError(
            f"{CHECKPOINT_FILE}: the vision tower has no tensor {missing}; this is not an ImageReward "
            f"checkpoint. {WHERE_TO_PUT}"
        ) from None
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    grid = math.isqrt(positions - 1)
    return BlipVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=num_attention_heads or max(1, hidden // 64),
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,  # timm ViT's partial(nn.LayerNorm, eps=1e-6)
        hidden_act="gelu",  # nn.GELU, exact erf form
    )


def text_config_from_med(med_config: Mapping[str, Any], encoder_width: int) -> BlipTextConfig:
    """BlipTextConfig from ImageReward's med_config.json (a BERT config with cross-attention).

    BLIP_Pretrain overwrites `encoder_width` with the ViT width, so we take it from the vision
    tower, not from the file. `is_decoder=True` only makes transformers build the
    cross-attention layers; the forward is called with `is_decoder=False` (bidirectional).
    Dropouts are zero: this is inference.
    """
    if not med_config.get("add_cross_attention", False):
        raise CheckpointError(
            f"{MED_CONFIG_FILE}: add_cross_attention is not true; ImageReward's text encoder "
            f"cross-attends to the image. Use the med_config.json shipped with ImageReward. {WHERE_TO_PUT}"
        )
    try:
        return BlipTextConfig(
            vocab_size=med_config["vocab_size"],
            hidden_size=med_config["hidden_size"],
            encoder_hidden_size=encoder_width,
            intermediate_size=med_config["intermediate_size"],
            num_hidden_layers=med_config["num_hidden_layers"],
            num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            hidden_act=med_config.get("hidden_act", "gelu"),
            layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
            pad_token_id=med_config.get("pad_token_id", 0),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            is_decoder=True,
            use_cache=False,
        )
    except KeyError as missing:
        raise CheckpointError(f"{MED_CONFIG_FILE}: missing the field {missing}. {WHERE_TO_PUT}") from None


def load_bert_tokenizer(folder: str) -> BertTokenizer:
    """The bert-base-uncased tokenizer from a local folder, prepared as BLIP's `init_tokenizer`.

    Refuses a vocabulary smaller than bert-base-uncased's: without its files, transformers
    silently builds a 5-token tokenizer that turns every word into [UNK].
    """
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise MissingFileError(
            f"ImageReward tokenizer: {folder} must be a folder holding vocab.txt (or tokenizer.json) of "
            f"bert-base-uncased. {WHERE_TO_PUT}"
        )
    tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
    vocab_size = len(tokenizer.get_vocab())
    if vocab_size < BERT_VOCAB_SIZE:
        raise SDVGError(
            f"ImageReward tokenizer in {folder} has only {vocab_size} tokens, bert-base-uncased has "
            f"{BERT_VOCAB_SIZE}. With a vocabulary that small every prompt word becomes [UNK] and the "
            f"router scores images against an empty prompt without any error. Put the real vocab.txt "
            f"of bert-base-uncased in that folder. {WHERE_TO_PUT}"
        )
    # BLIP's init_tokenizer adds these two (ids 30522, 30523; med_config's vocab_size is 30524).
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _load_checkpoint(path: str) -> dict[str, Tensor]:
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot read it as a PyTorch checkpoint ({type(error).__name__}: {error}). "
            f"Download ImageReward.pt again. {WHERE_TO_PUT}"
        ) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and set(loaded) == {wrapper} and isinstance(loaded[wrapper], dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors. {WHERE_TO_PUT}")
    return loaded


# ----------------------------------------------------------------------------- the model


class RewardHead(nn.Module):
    """ImageReward's MLP: width -> 1024 -> 128 -> 64 -> 16 -> 1, no activations.

    Indices match the original `nn.Sequential` (Linear, Dropout, Linear, Dropout, Linear,
    Dropout, Linear, Linear): its dropouts become Identity so scoring never drops out.
    """

    def __init__(self, input_size: int):
        super().__init__()
        w = (input_size,) + HEAD_WIDTHS
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]), nn.Identity(),
            nn.Linear(w[1], w[2]), nn.Identity(),
            nn.Linear(w[2], w[3]), nn.Identity(),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class ImageRewardScorer(nn.Module):
    """ImageReward v1.0: frames + prompt -> normalised rewards, one batched forward per call."""

    def __init__(self, vision: BlipVisionModel, text: BlipTextModel, head: RewardHead, tokenizer):
        super().__init__()
        self.vision = vision
        self.text = text
        self.head = head
        self.tokenizer = tokenizer
        self._prompt_cache: dict[str, dict[str, Tensor]] = {}
        self.eval().requires_grad_(False)

    @classmethod
    def from_folder(
        cls, folder: str, *, device="cpu", dtype: torch.dtype = torch.float32, vision_config: BlipVisionConfig | None = None
    ) -> "ImageRewardScorer":
        """Load `ImageReward.pt`, `med_config.json` and `bert-base-uncased/` from `folder`
        (ComfyUI: models/image_reward/). Every checkpoint tensor must be accounted for."""
        wanted = [
            (os.path.join(folder, CHECKPOINT_FILE), os.path.isfile),
            (os.path.join(folder, MED_CONFIG_FILE), os.path.isfile),
            (os.path.join(folder, TOKENIZER_DIR) + os.sep, os.path.isdir),
        ]
        missing = [path for path, exists in wanted if not exists(path)]
        if missing:
            raise MissingFileError(f"ImageReward router: missing {', '.join(missing)}. {WHERE_TO_PUT}")
        try:
            with open(os.path.join(folder, MED_CONFIG_FILE), encoding="utf-8") as handle:
                med_config = json.load(handle)
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"{os.path.join(folder, MED_CONFIG_FILE)}: not readable JSON ({error}). {WHERE_TO_PUT}"
            ) from error
        tokenizer = load_bert_tokenizer(os.path.join(folder, TOKENIZER_DIR))
        state_dict = _load_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
        return cls.from_state_dict(
            state_dict, med_config, tokenizer, vision_config=vision_config, device=device, dtype=dtype
        )

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        med_config: Mapping[str, Any],
        tokenizer,
        *,
        vision_config: BlipVisionConfig | None = None,
        device="cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "ImageRewardScorer":
        """Build from an ImageReward-layout state dict (original key names), strictly.

        `vision_config` defaults to the one read off the weights' shapes. The reward head
        stays float32 whatever `dtype` is (ImageReward casts the feature to float before it).
        """
        vision_sd, text_sd, head_sd, _ignored, leftovers = convert_image_reward_state_dict(state_dict)
        if leftovers:
            raise CheckpointError(
                f"{CHECKPOINT_FILE}: {len(leftovers)} tensors belong to no part of ImageReward: "
                f"{_preview(leftovers)}. This is not an ImageReward v1.0 checkpoint. {WHERE_TO_PUT}"
            )
        vision_config = vision_config or vision_config_from_state_dict(vision_sd)
        text_config = text_config_from_med(med_config, encoder_width=vision_config.hidden_size)
        with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
            vision = BlipVisionModel(vision_config)
            text = BlipTextModel(text_config, add_pooling_layer=False)
            head = RewardHead(text_config.hidden_size)
        _load_strict(vision, vision_sd, "blip.visual_encoder", device, dtype)
        _load_strict(text, text_sd, "blip.text_encoder", device, dtype)
        _load_strict(head, head_sd, "mlp", device, torch.float32)
        # The only non-persistent buffer: BERT's position ids (the checkpoint's copy is arange too).
        text.embeddings.position_ids = torch.arange(text_config.max_position_embeddings, device=device).expand(1, -1)
        return cls(vision, text, head, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.head.layers[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    def encode_prompt(self, prompt: str) -> dict[str, Tensor]:
        """Tokenise as ImageReward does (max_length 35, padded); cached per prompt."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}.")
        cached = self._prompt_cache.get(prompt)
        if cached is None or cached["input_ids"].device != self.device:
            tokens = self.tokenizer(
                prompt, padding="max_length", truncation=True, max_length=PROMPT_MAX_LENGTH, return_tensors="pt"
            )
            cached = {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}
            if len(self._prompt_cache) >= 16:  # one prompt per video; keep the cache small
                self._prompt_cache.clear()
            self._prompt_cache[prompt] = cached
        return cached

    @torch.inference_mode()
    def score_images(self, pixel_values: Tensor, prompt) -> Tensor:
        """Preprocessed `[T, 3, 224, 224]` + prompt (string or `encode_prompt` output) -> `[T]` float32 on CPU."""
        tokens = self.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        frames = pixel_values.shape[0]
        image_embeds = self.vision(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        text_out = self.text(
            input_ids=tokens["input_ids"].expand(frames, -1),
            attention_mask=tokens["attention_mask"].expand(frames, -1),
            encoder_hidden_states=image_embeds,
            is_decoder=False,  # bidirectional self-attention, as BLIP's mode='multimodal'
        ).last_hidden_state
        rewards = self.head(text_out[:, 0, :].float()).squeeze(-1)
        return ((rewards - REWARD_MEAN) / REWARD_STD).float().cpu()

    def score(self, frames: Tensor, prompt: str, *, exact_preprocess: bool = True) -> Tensor:
        """Decoder frames `[T, 3, H, W]` in [-1, 1] -> `[T]` float32 normalised rewards (CPU).

        `exact_preprocess` uses the PIL path ImageReward uses; False stays on the frames'
        device (see `preprocess_tensor` for its measured deviation).
        """
        pixel_values = preprocess_pil(frames_to_pil(frames)) if exact_preprocess else preprocess_tensor(frames)
        return self.score_images(pixel_values, prompt)


def _load_strict(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, device, dtype: torch.dtype) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview([f'{prefix}.{k}' for k in missing])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview([f'{prefix}.{k}' for k in unexpected])}")
        raise CheckpointError(
            f"{CHECKPOINT_FILE}: {prefix} does not match ImageReward's structure ({'; '.join(parts)}). "
            f"Use the original ImageReward.pt with its med_config.json. {WHERE_TO_PUT}"
        )
    cast = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in state_dict.items()}
    try:
        module.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{CHECKPOINT_FILE}: {prefix} has tensors of the wrong shape: {error}") from error


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ----------------------------------------------------------------------------- routing


AGGREGATIONS = ("min", "mean", "quantile")


def aggregate(scores: Tensor, how: str = "min", quantile: float = 0.1) -> float:
    """One number per block from per-frame scores.

    "min" (the paper's rule: the worst frame decides), "mean", or "quantile" (a low
    quantile, torch.quantile's linear interpolation; robust to a single outlier frame).
    """
    if how not in AGGREGATIONS:
        raise InputError(f"aggregation: {how!r} is not one of {', '.join(AGGREGATIONS)}.")
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
    if scores.numel() == 0:
        raise InputError("aggregate: got no scores; score at least one frame.")
    if not torch.isfinite(scores).all():
        raise NumericalError(f"router: frame scores contain NaN or Inf ({scores.tolist()}); the decoded frames are broken.")
    if how == "min":
        return float(scores.min())
    if how == "mean":
        return float(scores.mean())
    if not 0.0 <= quantile <= 1.0:
        raise InputError(f"quantile: {quantile} is outside [0, 1]; use e.g. 0.1 for the 10th percentile.")
    return float(torch.quantile(scores, quantile, interpolation="linear"))


@runtime_checkable
class ThresholdPolicy(Protocol):
    """Decides acceptance from an aggregate score; `tau` is reported with every decision."""

    tau: float

    def accept(self, aggregate: float) -> bool: ...


@dataclass(frozen=True)
class FixedTau:
    """Accept iff aggregate >= tau. tau = -inf accepts every draft, +inf rejects every draft."""

    tau: float

    def __post_init__(self):
        if not isinstance(self.tau, (int, float)) or math.isnan(self.tau):
            raise InputError(f"tau: expected a number (may be +-inf), got {self.tau!r}.")

    def accept(self, aggregate: float) -> bool:
        return aggregate >= self.tau


class FrameScorer(Protocol):
    """Anything that scores frames against a prompt (ImageRewardScorer, or a stub in tests)."""

    def score(self, frames: Tensor, prompt: str) -> Tensor: ...


@dataclass
class RouteResult:
    """One routing decision, with everything a report or the UI shows."""

    scores: list[float]
    aggregate: float
    tau: float
    accept: bool
    frames_scored: int


class Router:
    """Scores a drafted block's frames, aggregates them and asks the policy."""

    def __init__(self, scorer: FrameScorer, policy: ThresholdPolicy, aggregation: str = "min", quantile: float = 0.1,
                 *, exact_preprocess: bool = True):
        if aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}.")
        if not 0.0 <= quantile <= 1.0:
            raise InputError(f"quantile: {quantile} is outside [0, 1]; use e.g. 0.1 for the 10th percentile.")
        self.scorer = scorer
        self.policy = policy
        self.aggregation = aggregation
        self.quantile = quantile
        self.exact_preprocess = exact_preprocess  # False: preprocess on the frames' device

    def route(self, frames: Tensor, prompt: str) -> RouteResult:
        """Score `frames` `[T, 3, H, W]` in [-1, 1] against `prompt` and decide."""
        options = {} if self.exact_preprocess else {"exact_preprocess": False}
        scores = torch.as_tensor(self.scorer.score(frames, prompt, **options), dtype=torch.float32).flatten()
        value = aggregate(scores, self.aggregation, self.quantile)
        return RouteResult(
            scores=scores.tolist(),
            aggregate=value,
            tau=float(self.policy.tau),
            accept=bool(self.policy.accept(value)),
            frames_scored=scores.numel(),
        )
