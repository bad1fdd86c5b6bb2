"""The router's scorer: ImageReward v1.0 on transformers' BLIP (docs/algorithm.md, section 3).

- ``preprocess``: decoder frames -> ImageReward's 224x224 CLIP-normalised input;
- ``checkpoint``: ImageReward.pt, med_config.json and the tokenizer, read and checked;
- ``model``: the scorer itself.

What the scores decide is the verifier's business (sdvg_core/verifier.py).
"""

from .checkpoint import (BERT_VOCAB_SIZE, CHECKPOINT_FILE, HEAD_WIDTHS, MED_CONFIG_FILE, TOKENIZER_DIR,
                         VISION_CONFIG_FILE, WHERE_TO_PUT, inspect_folder, load_bert_tokenizer,
                         original_vision_name, split_state_dict, text_config_from_med, vision_config)
from .model import PROMPT_MAX_LENGTH, REWARD_MEAN, REWARD_STD, ImageRewardScorer, RewardHead
from .preprocess import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, frames_to_pil, preprocess_pil, preprocess_tensor

__all__ = [
    "BERT_VOCAB_SIZE", "CHECKPOINT_FILE", "CLIP_MEAN", "CLIP_STD", "HEAD_WIDTHS", "IMAGE_SIZE",
    "MED_CONFIG_FILE", "PROMPT_MAX_LENGTH", "REWARD_MEAN", "REWARD_STD", "TOKENIZER_DIR",
    "VISION_CONFIG_FILE", "WHERE_TO_PUT", "ImageRewardScorer", "RewardHead", "frames_to_pil",
    "inspect_folder", "load_bert_tokenizer", "original_vision_name", "preprocess_pil",
    "preprocess_tensor", "split_state_dict", "text_config_from_med", "vision_config",
]
