"""Text conditioning for the Wan DiTs: umT5-XXL embeddings zero-padded to 512 tokens.

Both models (drafter and target) read the same `[B, 512, 4096]` context. Two ways in:

- `pad_text`: from ComfyUI's CONDITIONING (CLIPTextEncode with the umT5 CLIPLoader, type
  `wan`) or a plain tensor.
- `UMT5TextEncoder`: standalone, from a local transformers-format umT5 folder (CLI, tests).

What ComfyUI hands us (comfy/text_encoders/wan.py, comfy/sd1_clip.py, read at a125cd8): the
umT5 tokenizer appends </s>, has no start token, does not truncate, and pads with id 0 to at
least 512 tokens (`min_length=512`); the encoder runs with the padding attention mask and
`zero_out_masked=True` multiplies the padding rows by 0. So CONDITIONING is
`[[tensor [1, max(512, n + 1), 4096], {"pooled_output": None}]]` with every row past the
real tokens (n words + </s>) exactly zero, and no "attention_mask" in the dict (that key
appears only for encoders built with `return_attention_masks`; if present we apply it).
The Wan reference (wan/modules/t5.py and Krea's WanTextEncoder) tokenises to 512 with
truncation, runs with the mask, keeps the real rows and zero-pads: the same tensor for
prompts up to 511 tokens. Longer prompts: ComfyUI encodes them whole and we cut the rows
to 512, while Wan truncates before encoding; the first 512 rows then differ slightly.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, MissingFileError, SDVGError

TEXT_LEN = 512
PAD_ID = 0  # umT5's <pad>, also what ComfyUI pads with
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

log = logging.getLogger("sdvg")


def pad_text(conditioning: Any, *, text_len: int = TEXT_LEN, dim: int | None = None) -> Tensor:
    """ComfyUI CONDITIONING or a tensor `[L, D]` / `[B, L, D]` -> float32 `[B, text_len, D]`.

    Takes the first entry of a CONDITIONING list (its tensor; its "attention_mask", if any,
    zeroes the masked rows), then zero-pads or truncates the token axis to `text_len`.
    `dim`, if given, is the required embedding width (4096 for umT5-XXL).
    """
    if not isinstance(text_len, int) or text_len < 1:
        raise InputError(f"text_len: expected a positive int, got {text_len!r}.")
    tensor, mask = _unpack_conditioning(conditioning)
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3 or not tensor.is_floating_point():
        raise InputError(
            f"text conditioning: expected a float tensor [L, D] or [B, L, D], got {tuple(tensor.shape)} "
            f"{tensor.dtype}. Connect the CONDITIONING of a CLIPTextEncode fed by the umT5 CLIPLoader (type wan)."
        )
    if dim is not None and tensor.shape[-1] != dim:
        raise InputError(
            f"text conditioning: embeddings are {tensor.shape[-1]} wide, Wan needs {dim} (umT5-XXL). "
            f"Load umt5_xxl in a CLIPLoader with type wan and encode the prompt with it."
        )
    if mask is not None:
        tensor = _apply_mask(tensor, mask)
    length = tensor.shape[1]
    if length > text_len and bool(tensor[:, text_len:].abs().amax() > 0):
        log.warning("the prompt's embedding has %d tokens; Wan reads %d, the rest does not condition the video.",
                    length, text_len)
    if length >= text_len:
        tensor = tensor[:, :text_len]
    else:
        tensor = F.pad(tensor, (0, 0, 0, text_len - length))
    return tensor.float().contiguous()


def _unpack_conditioning(conditioning: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(conditioning, Tensor):
        return conditioning, None
    entry = conditioning[0] if isinstance(conditioning, (list, tuple)) and conditioning else None
    if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], Tensor):
        extras = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        return entry[0], extras.get("attention_mask")
    described = type(conditioning).__name__
    if isinstance(conditioning, (list, tuple)):
        described += f" of {len(conditioning)} items" + (f", first a {type(entry).__name__}" if conditioning else "")
    raise InputError(
        f"text conditioning: expected ComfyUI CONDITIONING (a list of [tensor, dict]) or a tensor, got {described}."
    )


def _apply_mask(tensor: Tensor, mask: Tensor) -> Tensor:
    mask = torch.as_tensor(mask, device=tensor.device)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2 or mask.shape[1] != tensor.shape[1] or mask.shape[0] not in (1, tensor.shape[0]):
        raise InputError(
            f"text conditioning: attention_mask {tuple(mask.shape)} does not fit embeddings {tuple(tensor.shape)}."
        )
    return tensor * mask.to(tensor.dtype).unsqueeze(-1)


@dataclass(frozen=True)
class PackedText:
    """An embedding without its trailing zero rows, to ship between processes (a few hundred KB
    instead of 8 MB for a 512 x 4096 float32 context); ``unpack`` restores it bit for bit."""

    rows: Tensor   # [1, n, D]
    length: int    # the token count it came with (512)

    @classmethod
    def pack(cls, text: Tensor) -> "PackedText":
        padding = ((text == 0) & ~torch.signbit(text)).all(dim=-1).all(dim=0)  # [L]: rows of +0.0 only
        real = (~padding).nonzero()
        n = int(real.max()) + 1 if len(real) else 0
        return cls(text[:, :n].clone(), text.shape[1])

    def unpack(self) -> Tensor:
        return F.pad(self.rows, (0, 0, 0, self.length - self.rows.shape[1]))


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'`: unescape HTML twice, collapse whitespace, strip.

    (Wan also runs ftfy.fix_text, which only repairs mojibake; we do not depend on ftfy.)
    """
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class _TokenizersFile:
    """tokenizer.json through the `tokenizers` library (what Wan's AutoTokenizer runs)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(path)
        self.eos_id = self._tokenizer.token_to_id("</s>")
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids


class _SentencePieceFile:
    """spiece.model through sentencepiece (what ComfyUI runs; needs no protobuf)."""

    def __init__(self, path: str):
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor(model_file=path, add_bos=False, add_eos=False)
        self.eos_id = self._processor.eos_id()
        self.vocab_size = self._processor.get_piece_size()

    def ids(self, text: str) -> list[int]:
        return self._processor.encode(text)


class UMT5TextEncoder:
    """umT5 encoder + tokenizer from local files: prompts -> `[B, 512, D]`, padding rows zero."""

    def __init__(self, model, tokenizer, *, text_len: int = TEXT_LEN):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_folder(
        cls, model_dir: str, tokenizer_dir: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32
    ) -> "UMT5TextEncoder":
        """`UMT5EncoderModel.from_pretrained(model_dir)` (config.json + weights, transformers
        format) and the umT5 tokenizer (tokenizer.json or spiece.model) from `tokenizer_dir`,
        by default the same folder. Nothing is downloaded."""
        from transformers import UMT5EncoderModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # the CLI prints its own progress
        tokenizer_dir = tokenizer_dir or model_dir
        cls.inspect_folder(model_dir, tokenizer_dir)
        tokenizer = _load_tokenizer(tokenizer_dir)
        model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype).to(device)
        if not model.config.vocab_size // 2 <= tokenizer.vocab_size <= model.config.vocab_size:
            raise SDVGError(
                f"umT5 tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} tokens but the model in {model_dir} "
                f"expects {model.config.vocab_size}: they do not belong together. Use the google/umt5-xxl tokenizer "
                f"files (tokenizer.json or spiece.model) that ship with the model."
            )
        return cls(model, tokenizer)

    @staticmethod
    def inspect_folder(model_dir: str, tokenizer_dir: str | None = None) -> int:
        """Check the folders hold a transformers-format umT5 encoder and its tokenizer, without
        loading the weights; returns the encoder's width (4096 for umT5-XXL)."""
        tokenizer_dir = tokenizer_dir or model_dir
        _require_folder(model_dir, "the umT5 model folder")
        config = os.path.join(model_dir, "config.json")
        if not os.path.isfile(config):
            raise MissingFileError(
                f"umT5 encoder: {config} is missing. Use a transformers-format umT5 folder (config.json "
                "plus model.safetensors), e.g. a local copy of google/umt5-xxl.")
        if not any(os.path.isfile(os.path.join(model_dir, f)) for f in WEIGHT_FILES):
            raise MissingFileError(
                f"umT5 encoder: {model_dir} holds no weights ({' / '.join(WEIGHT_FILES)}). Put the "
                "transformers-format umT5 weights next to its config.json.")
        _require_folder(tokenizer_dir, "the umT5 tokenizer folder")
        if not any(os.path.isfile(os.path.join(tokenizer_dir, f)) for f in TOKENIZER_FILES):
            raise MissingFileError(
                f"umT5 tokenizer: {tokenizer_dir} has neither {TOKENIZER_FILES[0]} nor {TOKENIZER_FILES[1]}. Copy "
                "them from google/umt5-xxl (the Wan2.1 release ships them under google/umt5-xxl/).")
        try:
            with open(config, encoding="utf-8") as handle:
                return int(json.load(handle)["d_model"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SDVGError(f"umT5 encoder: {config} is not a umT5 config ({error}); use google/umt5-xxl's.") from None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """As Wan: clean, append </s>, truncate to text_len (keeping </s>), pad with 0.
        Returns `(input_ids, attention_mask)`, both `[B, text_len]` int64."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompts: expected a string or a non-empty list of strings, got {prompts!r}.")
        ids = torch.full((len(prompts), self.text_len), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(prompts), self.text_len), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.tokenizer.ids(clean_prompt(prompt))
            if len(tokens) >= self.text_len:
                log.warning("umT5 reads the first %d of this prompt's %d tokens; the rest does not condition the "
                            "video: %.60s...", self.text_len - 1, len(tokens), prompt)
            tokens = tokens[: self.text_len - 1] + [self.tokenizer.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    @torch.inference_mode()
    def encode(self, prompts: str | Sequence[str]) -> Tensor:
        """Prompts -> float32 `[B, 512, D]` on the encoder's device; rows past each prompt's
        tokens are exactly zero (Wan keeps the real rows and zero-pads)."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)  # +0.0 rows, so PackedText is exact


def _require_folder(path: str, what: str) -> None:
    if not path or not os.path.isdir(path):
        raise MissingFileError(f"umT5 encoder: {what} {path!r} does not exist. Point it at a local folder.")


def _load_tokenizer(folder: str):
    _require_folder(folder, "the umT5 tokenizer folder")
    json_path, spiece_path = (os.path.join(folder, f) for f in TOKENIZER_FILES)
    if os.path.isfile(json_path):
        return _TokenizersFile(json_path)
    if os.path.isfile(spiece_path):
        return _SentencePieceFile(spiece_path)
    raise MissingFileError(
        f"umT5 tokenizer: {folder} has neither {TOKENIZER_FILES[0]} nor {TOKENIZER_FILES[1]}. Copy them "
        f"from google/umt5-xxl (the Wan2.1 release ships them under google/umt5-xxl/)."
    )
