"""ImageReward router: checkpoint mapping, forward, preprocessing, aggregation, routing.

The checkpoint here is a tiny ImageReward-layout state dict with random weights whose key
names are generated from ImageReward's ORIGINAL module structure (BLIP's timm-style ViT,
BLIP's med.py BERT, ImageReward's MLP), and the forward is checked against a plain-torch
re-implementation of ImageReward.score written from that code, reading those original keys.
"""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertTokenizer

from sdvg_core.errors import CheckpointError, InputError, MissingFileError, NumericalError
from sdvg_core.router import (
    CLIP_MEAN,
    CLIP_STD,
    REWARD_MEAN,
    REWARD_STD,
    ImageRewardScorer,
    frames_to_pil,
    preprocess_pil,
    preprocess_tensor,
    split_state_dict,
)

# Tiny but real structure: ViT at 224 with 16-pixel patches (197 tokens) so preprocessing
# is the real one; BERT with cross-attention whose encoder_width is the ViT width.
VIT = dict(width=32, depth=2, heads=2, patch=16, image=224, mlp_ratio=4)
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,  # BLIP_Pretrain overwrites this with the ViT width (32 here)
    "add_cross_attention": True,
}
BLIP_EMBED_DIM = 256  # BLIP_Pretrain's vision_proj / text_proj width (unused by scoring)
MLP_WIDTHS = [1024, 128, 64, 16, 1]
PROMPT = "a red cat sits on the mat next to a dog"
UNUSED = {
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
}
STATED_VISION = {"num_attention_heads": VIT["heads"]}  # vision_config.json: 32 wide is no BLIP ViT


# ----------------------------------------------------------------------------- fixtures


def write_bert_vocab(folder, size=30522):
    """A vocab.txt laid out like bert-base-uncased: [PAD], [unused*], specials, words, filler."""
    os.makedirs(folder, exist_ok=True)
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += ["a", "red", "cat", "sits", "on", "the", "mat", "next", "to", "dog", "blue", "sky", "##s", "."]
    i = 99
    while len(words) < size:
        words.append(f"[unused{i}]")
        i += 1
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(words[:size]) + "\n")


def original_state_dict(seed=0):
    """ImageReward.state_dict() key names and shapes, from the original modules:
    ImageReward.blip = BLIP_Pretrain(visual_encoder=VisionTransformer, text_encoder=med.BertModel
    (add_pooling_layer=False), vision_proj, text_proj); ImageReward.mlp = MLP (layers Sequential)."""
    g = torch.Generator().manual_seed(seed)

    def linear(name, fan_in, fan_out, sd):
        sd[f"{name}.weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
        sd[f"{name}.bias"] = 0.1 * torch.randn(fan_out, generator=g)

    def norm(name, width, sd):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(width, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(width, generator=g)

    sd = {}
    w, p = VIT["width"], VIT["patch"]
    v = "blip.visual_encoder"
    sd[f"{v}.cls_token"] = torch.randn(1, 1, w, generator=g)
    sd[f"{v}.pos_embed"] = 0.5 * torch.randn(1, (VIT["image"] // p) ** 2 + 1, w, generator=g)
    sd[f"{v}.patch_embed.proj.weight"] = torch.randn(w, 3, p, p, generator=g) / math.sqrt(3 * p * p)
    sd[f"{v}.patch_embed.proj.bias"] = 0.1 * torch.randn(w, generator=g)
    for i in range(VIT["depth"]):
        b = f"{v}.blocks.{i}"
        norm(f"{b}.norm1", w, sd)
        linear(f"{b}.attn.qkv", w, 3 * w, sd)
        linear(f"{b}.attn.proj", w, w, sd)
        norm(f"{b}.norm2", w, sd)
        linear(f"{b}.mlp.fc1", w, w * VIT["mlp_ratio"], sd)
        linear(f"{b}.mlp.fc2", w * VIT["mlp_ratio"], w, sd)
    norm(f"{v}.norm", w, sd)

    h, t = MED_CONFIG["hidden_size"], "blip.text_encoder"
    sd[f"{t}.embeddings.position_ids"] = torch.arange(MED_CONFIG["max_position_embeddings"]).expand(1, -1)
    sd[f"{t}.embeddings.word_embeddings.weight"] = torch.randn(MED_CONFIG["vocab_size"], h, generator=g)
    sd[f"{t}.embeddings.position_embeddings.weight"] = torch.randn(MED_CONFIG["max_position_embeddings"], h, generator=g)
    norm(f"{t}.embeddings.LayerNorm", h, sd)
    for i in range(MED_CONFIG["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{i}"
        for attn, kv_width in (("attention", h), ("crossattention", w)):  # cross K/V read the ViT width
            linear(f"{layer}.{attn}.self.query", h, h, sd)
            linear(f"{layer}.{attn}.self.key", kv_width, h, sd)
            linear(f"{layer}.{attn}.self.value", kv_width, h, sd)
            linear(f"{layer}.{attn}.output.dense", h, h, sd)
            norm(f"{layer}.{attn}.output.LayerNorm", h, sd)
        linear(f"{layer}.intermediate.dense", h, MED_CONFIG["intermediate_size"], sd)
        linear(f"{layer}.output.dense", MED_CONFIG["intermediate_size"], h, sd)
        norm(f"{layer}.output.LayerNorm", h, sd)
    linear("blip.vision_proj", w, BLIP_EMBED_DIM, sd)
    linear("blip.text_proj", h, BLIP_EMBED_DIM, sd)

    # MLP.layers = Sequential(Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear)
    widths = [h] + MLP_WIDTHS
    for index, layer in enumerate([0, 2, 4, 6, 7]):
        linear(f"mlp.layers.{layer}", widths[index], widths[index + 1], sd)
    return sd


def reference_rewards(sd, pixel_values, input_ids, attention_mask):
    """ImageReward.score / inference_rank in plain torch, reading the ORIGINAL keys."""

    def lin(x, name):
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def ln(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def heads(x, n):
        return x.view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)

    # BLIP VisionTransformer.forward (timm Block: pre-norm, fused qkv, exact GELU, eps 1e-6)
    v = "blip.visual_encoder"
    x = F.conv2d(pixel_values, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=VIT["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{v}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[f"{v}.pos_embed"]
    batch, tokens, width = x.shape
    for i in range(VIT["depth"]):
        b = f"{v}.blocks.{i}"
        qkv = lin(ln(x, f"{b}.norm1", 1e-6), f"{b}.attn.qkv").reshape(batch, tokens, 3, VIT["heads"], -1)
        q, k, vv = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (width // VIT["heads"]) ** -0.5).softmax(-1)
        x = x + lin((attn @ vv).transpose(1, 2).reshape(batch, tokens, width), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image_embeds = ln(x, f"{v}.norm", 1e-6)

    # med.BertModel.forward, mode='multimodal', is_decoder=False, image_atts all ones
    t, n, eps = "blip.text_encoder", MED_CONFIG["num_attention_heads"], MED_CONFIG["layer_norm_eps"]
    ids = input_ids.expand(batch, -1)
    length = ids.shape[1]
    h = sd[f"{t}.embeddings.word_embeddings.weight"][ids] + sd[f"{t}.embeddings.position_embeddings.weight"][:length]
    h = ln(h, f"{t}.embeddings.LayerNorm", eps)
    extended = (1.0 - attention_mask.expand(batch, -1)[:, None, None, :].float()) * -10000.0
    head_dim = MED_CONFIG["hidden_size"] // n

    def attention(name, hidden, context, mask):
        q, k, vv = (heads(lin(src, f"{name}.self.{p}"), n) for p, src in (("query", hidden), ("key", context), ("value", context)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if mask is not None:
            scores = scores + mask
        out = (scores.softmax(-1) @ vv).transpose(1, 2).reshape(hidden.shape)
        return ln(lin(out, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", eps)

    for i in range(MED_CONFIG["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{i}"
        h = attention(f"{layer}.attention", h, h, extended)
        h = attention(f"{layer}.crossattention", h, image_embeds, None)
        h = ln(lin(F.gelu(lin(h, f"{layer}.intermediate.dense")), f"{layer}.output.dense") + h, f"{layer}.output.LayerNorm", eps)

    r = h[:, 0, :].float()
    for layer in (0, 2, 4, 6, 7):  # dropouts are inactive in eval
        r = lin(r, f"mlp.layers.{layer}")
    return ((r - REWARD_MEAN) / REWARD_STD).squeeze(-1)


def reference_preprocess(images):
    """torchvision Compose([Resize(224, BICUBIC), CenterCrop(224), ToTensor(), Normalize]) by hand."""
    out = []
    for image in images:
        w, h = image.size
        if w <= h:
            size = (224, int(224 * h / w))
        else:
            size = (int(224 * w / h), 224)
        resized = image.resize(size, resample=Image.BICUBIC)
        array = np.array(resized).astype(np.float64) / 255.0  # H, W, C
        top = int(round((size[1] - 224) / 2.0))
        left = int(round((size[0] - 224) / 2.0))
        array = array[top : top + 224, left : left + 224]
        array = (array - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
        out.append(torch.from_numpy(array.transpose(2, 0, 1).copy()).float())
    return torch.stack(out)


def reference_tokens(vocab_folder, prompt):
    tokenizer = BertTokenizer(vocab=os.path.join(vocab_folder, "vocab.txt"))
    tokens = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


def make_folder(root, sd=None):
    folder = os.path.join(root, "image_reward")
    os.makedirs(folder, exist_ok=True)
    torch.save(sd if sd is not None else original_state_dict(), os.path.join(folder, "ImageReward.pt"))
    with open(os.path.join(folder, "med_config.json"), "w") as handle:
        json.dump(MED_CONFIG, handle)
    with open(os.path.join(folder, "vision_config.json"), "w") as handle:
        json.dump(STATED_VISION, handle)
    write_bert_vocab(os.path.join(folder, "bert-base-uncased"))
    return folder


def video_frames(count=5, height=96, width=160, seed=1):
    """Frames in [-1, 1] that differ from each other (smooth patterns plus noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    frames = []
    for i in range(count):
        base = torch.stack([torch.sin((3 + i) * xx + c) * torch.cos((2 + c) * yy - i) for c in range(3)])
        frames.append((0.8 * base + 0.2 * torch.randn(3, height, width, generator=g)).clamp(-1, 1))
    return torch.stack(frames)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = original_state_dict()
    folder = make_folder(str(tmp_path_factory.mktemp("ir")), sd)
    return sd, folder


@pytest.fixture(scope="module")
def scorer(checkpoint):
    _, folder = checkpoint
    return ImageRewardScorer.from_folder(folder)


# ----------------------------------------------------------------------------- checkpoint


def test_every_checkpoint_tensor_is_used_and_none_missing(checkpoint, scorer):
    sd, _ = checkpoint
    parts = split_state_dict(sd)
    assert parts.leftovers == []
    # Only BLIP_Pretrain's unused projections and the arange buffer are dropped.
    assert len(parts.vision) + len(parts.text) + len(parts.head) == len(sd) - len(UNUSED)

    # Match the scorer's tensors to the checkpoint's by value (random weights are unique),
    # independently of any key mapping: every used tensor appears exactly once, nothing else.
    def fingerprint(tensor):
        return tuple(tensor.shape), tensor.detach().float().contiguous().numpy().tobytes()

    wanted = {fingerprint(v): k for k, v in sd.items() if k not in UNUSED}
    assert len(wanted) == len(sd) - len(UNUSED)
    loaded = [fingerprint(v) for k, v in scorer.state_dict().items()]
    assert len(loaded) == len(wanted)
    assert set(loaded) == set(wanted), sorted(wanted[f] for f in set(wanted) - set(loaded))


def test_checkpoint_with_extra_or_missing_tensors_is_refused(checkpoint):
    sd, _ = checkpoint
    extra = dict(sd)
    extra["blip.visual_encoder.head.weight"] = torch.zeros(3, 3)
    extra["itm_head.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"blip\.visual_encoder\.head\.weight.*itm_head\.bias"):
        ImageRewardScorer.from_state_dict(extra, MED_CONFIG, tokenizer=None, vision_config=STATED_VISION)

    short = {k: v for k, v in sd.items() if k != "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1: blip\.text_encoder\.encoder\.layer\.1\.crossattention\.self\.key\.weight"):
        ImageRewardScorer.from_state_dict(short, MED_CONFIG, tokenizer=None, vision_config=STATED_VISION)
    # A missing vision tensor is named as ImageReward.pt names it, not by transformers' name.
    no_qkv = {k: v for k, v in sd.items() if k != "blip.visual_encoder.blocks.1.attn.qkv.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1: blip\.visual_encoder\.blocks\.1\.attn\.qkv\.weight"):
        ImageRewardScorer.from_state_dict(no_qkv, MED_CONFIG, tokenizer=None, vision_config=STATED_VISION)


def test_vision_config_is_read_off_the_weights(checkpoint):
    sd, _ = checkpoint
    scorer = ImageRewardScorer.from_state_dict(sd, MED_CONFIG, tokenizer=None, vision_config=STATED_VISION)
    config = scorer.vision.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 2, 128)
    assert (config.patch_size, config.image_size, config.layer_norm_eps) == (16, 224, 1e-6)
    assert config.num_attention_heads == VIT["heads"]
    assert scorer.text.config.encoder_hidden_size == 32  # from the ViT, not med_config's 768


def test_head_count_is_known_or_stated_never_guessed(checkpoint):
    from sdvg_core.router import vision_config

    sd, _ = checkpoint
    vision = split_state_dict(sd).vision
    with pytest.raises(CheckpointError, match=r"32 wide.*head count.*vision_config\.json"):
        vision_config(vision)  # neither BLIP's ViT-B (768) nor ViT-L (1024): not guessed
    widened = {k: torch.empty(tuple(1024 if d == 32 else d for d in v.shape), device="meta") for k, v in vision.items()}
    assert vision_config(widened).num_attention_heads == 16  # ViT-L/16: 16 heads of 64
    with pytest.raises(CheckpointError, match="does not divide"):
        vision_config(vision, {"num_attention_heads": 3})


def test_a_checkpoint_not_at_224_pixels_is_refused(checkpoint):
    sd, _ = checkpoint
    grid = 384 // VIT["patch"]
    bigger = dict(sd, **{"blip.visual_encoder.pos_embed": torch.zeros(1, grid * grid + 1, VIT["width"])})
    with pytest.raises(CheckpointError, match=r"384x384.*224x224"):
        ImageRewardScorer.from_state_dict(bigger, MED_CONFIG, tokenizer=None, vision_config=STATED_VISION)


def test_med_config_that_disagrees_with_the_checkpoint_is_named(checkpoint):
    sd, _ = checkpoint
    wrong = dict(MED_CONFIG, hidden_size=64, intermediate_size=128)
    with pytest.raises(CheckpointError) as error:
        ImageRewardScorer.from_state_dict(sd, wrong, tokenizer=None, vision_config=STATED_VISION)
    message = str(error.value)
    assert "med_config.json and ImageReward.pt disagree" in message
    assert "blip.text_encoder.embeddings.word_embeddings.weight" in message
    assert "size mismatch" not in message and len(message) < 900  # no torch dump


# ----------------------------------------------------------------------------- forward


def test_scores_match_a_plain_torch_imagereward_forward(checkpoint, scorer):
    sd, folder = checkpoint
    frames = video_frames()
    input_ids, attention_mask = reference_tokens(os.path.join(folder, "bert-base-uncased"), PROMPT)
    assert (input_ids[0, 1:10] > 103).all()  # real word ids, not [UNK] (100)
    assert attention_mask.sum() < 35  # the prompt is padded, so the padding mask matters

    pixel_values = reference_preprocess(frames_to_pil(frames))
    expected = reference_rewards(sd, pixel_values, input_ids, attention_mask)
    got = scorer.score(frames, PROMPT)
    assert got.dtype == torch.float32 and got.shape == (5,)
    assert expected.std() > 1e-3  # frames get different rewards: the comparison is not vacuous
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_batched_scores_equal_one_frame_at_a_time(scorer):
    frames = video_frames(count=4, seed=7)
    batched = scorer.score(frames, PROMPT)
    single = torch.cat([scorer.score(frames[i : i + 1], PROMPT) for i in range(4)])
    assert batched.std() > 1e-3
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_prompt_matters_and_is_cached(scorer):
    frames = video_frames(count=2)
    first = scorer.encode_prompt(PROMPT)
    assert scorer.encode_prompt(PROMPT) is first
    other = scorer.score(frames, "the blue sky")
    assert not torch.allclose(scorer.score(frames, PROMPT), other)


# ----------------------------------------------------------------------------- preprocessing


def test_frames_to_pil_maps_minus_one_one_to_uint8():
    # Values a hair outside [-1, 1] (float rounding of a clamped decode) are clamped.
    frames = torch.tensor([-1.0005, -1.0, 0.0, 1.0, 1.0005]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    image = frames_to_pil(frames)[0]
    assert image.mode == "RGB" and image.size == (5, 1)
    assert np.array(image)[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # (0+1)/2*255 = 127.5 -> 128


@pytest.mark.parametrize("size", [(480, 832), (832, 480), (96, 160), (300, 300), (231, 389)])
def test_preprocess_pil_equals_the_torchvision_transform_by_hand(size):
    frames = video_frames(count=2, height=size[0], width=size[1])
    images = frames_to_pil(frames)
    got = preprocess_pil(images)
    assert got.shape == (2, 3, 224, 224) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_preprocess(images), rtol=0, atol=1e-5)


def test_preprocess_tensor_deviation_is_bounded():
    g = torch.Generator().manual_seed(3)
    smooth = video_frames(count=2, height=480, width=832)
    noise = torch.rand(2, 3, 480, 832, generator=g) * 2 - 1
    blocky = F.interpolate(torch.rand(2, 3, 30, 52, generator=g) * 2 - 1, size=(480, 832), mode="nearest")
    for frames in (smooth, noise, blocky, noise.transpose(-1, -2)):
        exact = preprocess_pil(frames_to_pil(frames))
        fast = preprocess_tensor(frames)
        levels = ((exact - fast) * torch.tensor(CLIP_STD).view(1, 3, 1, 1)).abs() * 255  # in 8-bit levels
        assert levels.max() <= 1.001  # at most one 8-bit level apart
        assert (levels > 0.01).float().mean() < 0.005  # and almost every value identical


def test_exact_and_fast_preprocessing_score_alike(scorer):
    frames = video_frames(count=3, height=120, width=208)
    exact = scorer.score(frames, PROMPT, exact_preprocess=True)
    fast = scorer.score(frames, PROMPT, exact_preprocess=False)
    torch.testing.assert_close(fast, exact, rtol=0, atol=0.05)


def test_bad_frames_are_refused(scorer):
    with pytest.raises(InputError, match=r"\[T, 3, H, W\]"):
        scorer.score(torch.zeros(3, 64, 64), PROMPT)
    with pytest.raises(InputError, match="dtype"):
        frames_to_pil(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    for path in (True, False):
        with pytest.raises(InputError, match=r"\[-1, 1\].*got \[0, 255\]"):
            scorer.score(torch.full((2, 3, 32, 32), 255.0).index_fill_(0, torch.tensor([0]), 0.0), PROMPT,
                         exact_preprocess=path)
        with pytest.raises(NumericalError, match="NaN"):
            scorer.score(torch.full((1, 3, 32, 32), float("nan")), PROMPT, exact_preprocess=path)


def test_a_prompt_longer_than_imagereward_reads_warns_once(scorer, caplog):
    long = " ".join(["a red cat sits on the mat next to a dog"] * 6)
    frames = video_frames(count=1)
    with caplog.at_level("WARNING", logger="sdvg"):
        scorer.score(frames, long)
        scorer.score(frames, long)
    warnings = [r for r in caplog.records if "ImageReward reads the first 35" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="sdvg"):
        scorer.score(frames, PROMPT)
    assert not caplog.records


# ----------------------------------------------------------------------------- files


def test_small_tokenizer_vocabulary_is_refused(checkpoint, tmp_path):
    _, folder = checkpoint
    small = str(tmp_path / "image_reward")
    shutil.copytree(folder, small)
    write_bert_vocab(os.path.join(small, "bert-base-uncased"), size=1000)
    with pytest.raises(CheckpointError, match=r"only 1000 tokens.*\[UNK\].*vocab\.txt"):
        ImageRewardScorer.from_folder(small)


@pytest.mark.parametrize("name", ["ImageReward.pt", "med_config.json", "bert-base-uncased"])
def test_each_missing_file_is_named(checkpoint, tmp_path, name):
    _, folder = checkpoint
    copy = str(tmp_path / "image_reward")
    shutil.copytree(folder, copy)
    path = os.path.join(copy, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with pytest.raises(MissingFileError) as error:
        ImageRewardScorer.from_folder(copy)
    message = str(error.value)
    assert os.path.join(copy, name) in message and "Put ImageReward.pt" in message
    assert message.endswith(f"in {copy}{os.sep}."), "the fix names the folder that was read"
    others = {"ImageReward.pt", "med_config.json", "bert-base-uncased"} - {name}
    assert not any(os.path.join(copy, other) in message for other in others)


def test_empty_tokenizer_folder_is_named(checkpoint, tmp_path):
    _, folder = checkpoint
    copy = str(tmp_path / "image_reward")
    shutil.copytree(folder, copy)
    os.remove(os.path.join(copy, "bert-base-uncased", "vocab.txt"))
    with pytest.raises(MissingFileError, match="bert-base-uncased.*vocab.txt"):
        ImageRewardScorer.from_folder(copy)


def test_unreadable_checkpoint_is_a_checkpoint_error(checkpoint, tmp_path):
    _, folder = checkpoint
    copy = str(tmp_path / "image_reward")
    shutil.copytree(folder, copy)
    with open(os.path.join(copy, "ImageReward.pt"), "wb") as handle:
        handle.write(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="ImageReward.pt"):
        ImageRewardScorer.from_folder(copy)


def test_preprocessing_path_by_device(scorer, monkeypatch):
    """None (the default) takes ImageReward's PIL path for frames on the CPU; False the tensor path."""
    from sdvg_core.router import model

    used = []
    monkeypatch.setattr(model, "preprocess_pil", lambda images: used.append("pil") or preprocess_pil(images))
    monkeypatch.setattr(model, "preprocess_tensor", lambda frames: used.append("tensor") or preprocess_tensor(frames))
    frames = video_frames(count=2, height=64, width=96)
    default = scorer.score(frames, PROMPT)
    assert used == ["pil"]
    torch.testing.assert_close(default, scorer.score(frames, PROMPT, exact_preprocess=True), rtol=0, atol=0)
    scorer.score(frames, PROMPT, exact_preprocess=False)
    assert used == ["pil", "pil", "tensor"]
