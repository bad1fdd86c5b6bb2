"""Text conditioning: ComfyUI CONDITIONING padding and the standalone umT5 encoder.

The encoder is a tiny UMT5 saved with save_pretrained and a sentencepiece model trained here
on a few sentences; its real rows are checked against UMT5EncoderModel run on the unpadded
tokens (so the padding mask is exercised), with token ids produced by sentencepiece directly.
"""

import io
import os
import shutil

import pytest
import sentencepiece
import torch
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from sdvg_core.errors import InputError, MissingFileError, SDVGError
from sdvg_core.text import TEXT_LEN, UMT5TextEncoder, clean_prompt, pad_text

SENTENCES = [
    "a red cat sits on the mat",
    "the quick brown fox jumps over the lazy dog",
    "a video of waves crashing on a beach at sunset",
    "an astronaut rides a horse on the moon",
    "close up of a flower in the rain",
]
PROMPTS = ["a red cat on the moon", "waves crashing on a beach at sunset, close up"]
VOCAB = 40


# ----------------------------------------------------------------------------- pad_text


def comfy_conditioning(length=512, real=9, width=16, seed=0):
    """What CLIPTextEncode + umT5 (type wan) returns: [[tensor [1, L, D], {"pooled_output": None}]],
    L >= 512, rows past the real tokens zeroed by zero_out_masked."""
    g = torch.Generator().manual_seed(seed)
    tensor = torch.randn(1, length, width, generator=g)
    tensor[:, real:] = 0
    return [[tensor, {"pooled_output": None}]]


def test_comfy_conditioning_and_plain_tensor_give_the_same_context():
    conditioning = comfy_conditioning()
    tensor = conditioning[0][0]
    from_comfy = pad_text(conditioning)
    assert from_comfy.shape == (1, TEXT_LEN, 16) and from_comfy.dtype == torch.float32
    assert torch.equal(from_comfy, pad_text(tensor[0]))  # [L, D]
    assert torch.equal(from_comfy, pad_text(tensor))  # [B, L, D]
    assert torch.equal(from_comfy, tensor)


def test_short_context_is_zero_padded_and_long_context_truncated():
    short = torch.randn(7, 16)
    padded = pad_text(short)
    assert padded.shape == (1, TEXT_LEN, 16)
    assert torch.equal(padded[0, :7], short) and not padded[0, 7:].any()

    long = torch.randn(2, 600, 16, dtype=torch.float64)  # a >511-token prompt, batch of 2
    cut = pad_text([[long, {}]])
    assert cut.shape == (2, TEXT_LEN, 16) and cut.dtype == torch.float32
    assert torch.equal(cut, long[:, :TEXT_LEN].float())
    assert pad_text(short, text_len=4).shape == (1, 4, 16)


def test_attention_mask_in_the_conditioning_dict_is_respected():
    tensor = torch.randn(1, 10, 16) + 3  # non-zero everywhere, as an encoder without zero_out_masked
    mask = torch.tensor([[1] * 6 + [0] * 4])
    context = pad_text([[tensor, {"attention_mask": mask, "pooled_output": None}]])
    assert torch.equal(context[0, :6], tensor[0, :6]) and not context[0, 6:].any()
    with pytest.raises(InputError, match="attention_mask"):
        pad_text([[tensor, {"attention_mask": torch.ones(1, 9)}]])


def test_only_the_first_conditioning_entry_is_used():
    first, second = comfy_conditioning(seed=1), comfy_conditioning(seed=2)
    assert torch.equal(pad_text(first + second), pad_text(first))


@pytest.mark.parametrize(
    "bad, named",
    [
        (None, "NoneType"),
        ("a prompt", "str"),
        ([], "list of 0 items"),
        ([["not a tensor", {}]], "first a list"),
        (torch.zeros(16), r"\(16,\)"),
        (torch.zeros(1, 1, 4, 16), r"\(1, 1, 4, 16\)"),
        (torch.zeros(4, 16, dtype=torch.long), "int64"),
    ],
)
def test_bad_conditioning_is_refused_by_name(bad, named):
    with pytest.raises(InputError, match=named):
        pad_text(bad)


def test_wrong_embedding_width_is_refused_when_asked():
    with pytest.raises(InputError, match="768 wide.*4096"):
        pad_text(torch.zeros(1, 77, 768), dim=4096)
    assert pad_text(torch.zeros(1, 77, 4096), dim=4096).shape == (1, TEXT_LEN, 4096)


def test_clean_prompt_is_wans_whitespace_clean():
    assert clean_prompt("  a &amp;amp; b \n\t c  ") == "a & b c"


# ----------------------------------------------------------------------------- UMT5TextEncoder


@pytest.fixture(scope="module")
def umt5_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")
    model_dir, spm_dir, json_dir = (str(root / name) for name in ("model", "spm", "json"))
    os.makedirs(spm_dir)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_writer=proto, vocab_size=VOCAB, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    with open(os.path.join(spm_dir, "spiece.model"), "wb") as handle:
        handle.write(proto.getvalue())

    # The same vocabulary as a tokenizer.json (what Wan's google/umt5-xxl folder holds).
    processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(spm_dir, "spiece.model"))
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(json_dir)

    config = UMT5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    UMT5EncoderModel(config).save_pretrained(model_dir)
    return model_dir, spm_dir, json_dir


def test_encoder_zeroes_padding_and_matches_the_unpadded_model_output(umt5_folders):
    model_dir, spm_dir, _ = umt5_folders
    encoder = UMT5TextEncoder.from_folder(model_dir, spm_dir)
    context = encoder.encode(PROMPTS)
    assert context.shape == (2, TEXT_LEN, 32) and context.dtype == torch.float32

    reference_model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True).eval()
    processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(spm_dir, "spiece.model"))
    for row, prompt in enumerate(PROMPTS):
        ids = processor.encode(prompt) + [processor.eos_id()]
        with torch.no_grad():
            expected = reference_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        n = len(ids)
        assert expected.abs().min() > 0  # real rows are non-zero, so zero padding is a real check
        torch.testing.assert_close(context[row, :n], expected, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(context[row, n:]) == 0


def test_tokenizer_json_and_spiece_model_agree(umt5_folders):
    model_dir, spm_dir, json_dir = umt5_folders
    from_spm = UMT5TextEncoder.from_folder(model_dir, spm_dir)
    from_json = UMT5TextEncoder.from_folder(model_dir, json_dir)
    ids_spm, mask_spm = from_spm.tokenize(PROMPTS)
    ids_json, mask_json = from_json.tokenize(PROMPTS)
    assert torch.equal(ids_spm, ids_json) and torch.equal(mask_spm, mask_json)
    assert torch.equal(from_spm.encode(PROMPTS), from_json.encode(PROMPTS))


def test_long_prompt_is_truncated_keeping_the_end_token(umt5_folders, caplog):
    model_dir, spm_dir, _ = umt5_folders
    encoder = UMT5TextEncoder.from_folder(model_dir, spm_dir)
    with caplog.at_level("WARNING", logger="sdvg"):
        ids, mask = encoder.tokenize(" ".join(SENTENCES * 30))
    assert len([r for r in caplog.records if "umT5 reads the first 511" in r.getMessage()]) == 1
    assert ids.shape == (1, TEXT_LEN) and bool(mask.all())
    assert ids[0, -1].item() == 1  # </s>
    ids, mask = encoder.tokenize("a cat")
    assert int(mask.sum()) == int((ids != 0).sum()) and ids[0, int(mask.sum()) - 1].item() == 1


def test_missing_folders_and_files_are_named(umt5_folders, tmp_path):
    model_dir, spm_dir, _ = umt5_folders
    absent = str(tmp_path / "no_such_umt5")
    with pytest.raises(MissingFileError, match="no_such_umt5"):
        UMT5TextEncoder.from_folder(absent, spm_dir)
    with pytest.raises(MissingFileError, match="no_such_umt5"):
        UMT5TextEncoder.from_folder(model_dir, absent)

    no_config = str(tmp_path / "no_config")
    shutil.copytree(model_dir, no_config)
    os.remove(os.path.join(no_config, "config.json"))
    with pytest.raises(MissingFileError, match="config.json"):
        UMT5TextEncoder.from_folder(no_config, spm_dir)

    no_weights = str(tmp_path / "no_weights")
    shutil.copytree(model_dir, no_weights)
    os.remove(os.path.join(no_weights, "model.safetensors"))
    with pytest.raises(MissingFileError, match="model.safetensors"):
        UMT5TextEncoder.from_folder(no_weights, spm_dir)

    with pytest.raises(MissingFileError, match="tokenizer.json.*spiece.model"):
        UMT5TextEncoder.from_folder(model_dir)  # the model folder holds no tokenizer files


def test_tokenizer_that_does_not_fit_the_model_is_refused(umt5_folders, tmp_path):
    _, spm_dir, _ = umt5_folders
    big = str(tmp_path / "big_vocab_model")
    UMT5EncoderModel(UMT5Config(vocab_size=1000, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(big)
    with pytest.raises(SDVGError, match="40 tokens.*1000"):
        UMT5TextEncoder.from_folder(big, spm_dir)


def test_bad_prompts_are_refused(umt5_folders):
    model_dir, spm_dir, _ = umt5_folders
    encoder = UMT5TextEncoder.from_folder(model_dir, spm_dir)
    with pytest.raises(InputError, match="prompts"):
        encoder.encode([])
    with pytest.raises(InputError, match="prompts"):
        encoder.encode(["ok", 3])
