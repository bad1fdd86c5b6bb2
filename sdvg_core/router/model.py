"""ImageReward v1.0 on transformers' BLIP: frames + prompt -> normalised rewards.

A BLIP ViT encodes each frame, a BERT text encoder cross-attends from the prompt to the image
tokens, the [CLS] output goes through a small MLP, and the reward is normalised with the
training set's mean and std (docs/algorithm.md, section 3). We do not depend on the
``image-reward`` package (it does not import with transformers 5 and pulls in torchvision).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from transformers import BlipTextModel, BlipVisionModel

from ..errors import InputError
from .checkpoint import HEAD_WIDTHS, RouterFiles, check_parts, inspect_folder, load_into
from .preprocess import frames_to_pil, preprocess_pil, preprocess_tensor

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
PROMPT_MAX_LENGTH = 35  # ImageReward tokenises with padding="max_length", max_length=35
_PROMPTS_KEPT = 16

log = logging.getLogger("sdvg")


class RewardHead(nn.Module):
    """ImageReward's MLP: width -> 1024 -> 128 -> 64 -> 16 -> 1, no activations.

    Indices match the original ``nn.Sequential`` (Linear, Dropout, Linear, Dropout, Linear,
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
    def from_folder(cls, folder: str, *, device="cpu", dtype: torch.dtype = torch.float32) -> "ImageRewardScorer":
        """Load ``ImageReward.pt``, ``med_config.json`` and ``bert-base-uncased/`` from ``folder``
        (ComfyUI: models/image_reward/). Everything is checked before a weight is read."""
        return cls.from_files(inspect_folder(folder), device=device, dtype=dtype)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], med_config: Mapping[str, Any], tokenizer, *,
                        vision_config: Mapping[str, Any] | None = None, device="cpu",
                        dtype: torch.dtype = torch.float32) -> "ImageRewardScorer":
        """From an ImageReward-layout state dict (original key names), checked strictly.
        ``vision_config``: what a vision_config.json would state (only for non-BLIP widths)."""
        return cls.from_files(check_parts(state_dict, med_config, tokenizer, vision_config),
                              device=device, dtype=dtype)

    @classmethod
    def from_files(cls, files: RouterFiles, *, device="cpu", dtype: torch.dtype = torch.float32) -> "ImageRewardScorer":
        """From checked files. The reward head stays float32 whatever ``dtype`` is (ImageReward
        casts the feature to float before it)."""
        with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
            vision = BlipVisionModel(files.vision_config)
            text = BlipTextModel(files.text_config, add_pooling_layer=False)
            head = RewardHead(files.text_config.hidden_size)
        load_into(vision, files.parts.vision, device, dtype)
        load_into(text, files.parts.text, device, dtype)
        load_into(head, files.parts.head, device, torch.float32)
        # The only non-persistent buffer: BERT's position ids (the checkpoint's copy is arange too).
        positions = files.text_config.max_position_embeddings
        text.embeddings.position_ids = torch.arange(positions, device=device).expand(1, -1)
        return cls(vision, text, head, files.tokenizer)

    @property
    def device(self) -> torch.device:
        return self.head.layers[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    def encode_prompt(self, prompt: str) -> dict[str, Tensor]:
        """Tokenise as ImageReward does (max_length 35, padded); cached per prompt. Warns once per
        prompt when it is longer than the 35 tokens ImageReward reads."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}.")
        cached = self._prompt_cache.get(prompt)
        if cached is None or cached["input_ids"].device != self.device:
            if cached is None:
                length = len(self.tokenizer(prompt, truncation=False)["input_ids"])
                if length > PROMPT_MAX_LENGTH:
                    log.warning("ImageReward reads the first %d of this prompt's %d tokens; the rest does not "
                                "affect routing: %.60s...", PROMPT_MAX_LENGTH, length, prompt)
            tokens = self.tokenizer(prompt, padding="max_length", truncation=True,
                                    max_length=PROMPT_MAX_LENGTH, return_tensors="pt")
            cached = {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}
            if len(self._prompt_cache) >= _PROMPTS_KEPT:
                self._prompt_cache.clear()
            self._prompt_cache[prompt] = cached
        return cached

    @torch.inference_mode()
    def score_images(self, pixel_values: Tensor, prompt) -> Tensor:
        """Preprocessed ``[T, 3, 224, 224]`` + prompt (string or ``encode_prompt`` output) -> ``[T]`` float32 on CPU."""
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

    def score(self, frames: Tensor, prompt: str, *, exact_preprocess: bool | None = None) -> Tensor:
        """Decoder frames ``[T, 3, H, W]`` in [-1, 1] -> ``[T]`` float32 normalised rewards (CPU).

        ``exact_preprocess``: True, the PIL path ImageReward uses (on the CPU); False, on the
        frames' device (``preprocess_tensor``, its measured deviation there); None, the PIL path
        for frames on the CPU and the on-device path for frames on a GPU, where it saves the copy
        and the CPU work at scores 1e-4 apart (README, "Router preprocessing").
        """
        if exact_preprocess is None:
            exact_preprocess = frames.device.type == "cpu"
        pixel_values = preprocess_pil(frames_to_pil(frames)) if exact_preprocess else preprocess_tensor(frames)
        return self.score_images(pixel_values, prompt)
