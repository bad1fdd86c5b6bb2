"""Weight files that cannot be used: each loader (Wan DiT, VAE, ImageReward) says which of three
things is wrong, truncated, not a model file, or holding code, and what to do; never torch's
unpickler advice. Weights holding NaN/Inf are refused at load, naming the file and the tensor."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from sdvg_core.errors import CheckpointError
from sdvg_core.files import NotAModelFileError, TruncatedFileError, UnsafeFileError
from sdvg_core.router import ImageRewardScorer
from sdvg_core.tiny import write_tiny_model_files
from sdvg_core.vae import StreamingVAE, inspect_vae
from sdvg_core.wan import inspect_wan, load_wan

TORCH_ADVICE = ("weights_only=False", "Please file an issue", "will likely succeed")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("models"))


def load(kind: str, path):
    if kind == "dit":
        return load_wan(path)
    if kind == "vae":
        return StreamingVAE.from_single_file(path)
    folder = path.parent
    return ImageRewardScorer.from_folder(str(folder))


def place(kind: str, files, tmp_path, name: str):
    """Where a broken file of this kind goes (the router's is inside a copy of its folder)."""
    if kind == "router":
        folder = tmp_path / "image_reward"
        shutil.copytree(files["router"], folder)
        return folder / "ImageReward.pt"
    return tmp_path / name


def assert_honest(error: BaseException, path, *words: str) -> None:
    message = str(error)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert not any(advice in message for advice in TORCH_ADVICE), message


SOURCES = {"dit": "target", "vae": "vae", "router": "router"}


@pytest.mark.parametrize("kind", ["dit", "vae", "router"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_truncated_pytorch_file_is_called_truncated(files, tmp_path, kind, container):
    path = place(kind, files, tmp_path, "model.pt")
    source = files[SOURCES[kind]]
    tensors = (torch.load(source / "ImageReward.pt", weights_only=True) if kind == "router"
               else dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(source)))
    torch.save(tensors, path, _use_new_zipfile_serialization=container == "zip")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TruncatedFileError) as error:
        load(kind, path)
    assert_honest(error.value, path, "truncated or corrupt", "download it again")


@pytest.mark.parametrize("kind", ["dit", "vae"])
def test_a_truncated_safetensors_file_is_called_truncated(files, tmp_path, kind):
    path = tmp_path / "model.safetensors"
    data = files[SOURCES[kind]].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError) as error:
        load(kind, path)
    assert_honest(error.value, path, "truncated or corrupt", "download it again")


@pytest.mark.parametrize("kind", ["dit", "vae", "router"])
@pytest.mark.parametrize("content, says", [
    (b"<!DOCTYPE html><html><body>Sign in to download</body></html>", "web page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (b"this is just some text, not weights", "text file"),
])
def test_a_file_that_is_no_model_says_what_it_is(files, tmp_path, kind, content, says):
    path = place(kind, files, tmp_path, "model.safetensors")
    path.write_bytes(content)
    with pytest.raises(NotAModelFileError) as error:
        load(kind, path)
    assert_honest(error.value, path, says, "not a weights file")


@pytest.mark.parametrize("kind", ["dit", "vae", "router"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_file_holding_code_is_refused_for_safety(files, tmp_path, kind, container, capfd):
    path = place(kind, files, tmp_path, "model.pt")
    torch.save({"weight": torch.zeros(2), "payload": RunsCode()}, path,
               _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(UnsafeFileError) as error:
        load(kind, path)
    assert_honest(error.value, path, "refused for safety", "system", ".safetensors")
    assert "truncated" not in str(error.value) and "download it again" not in str(error.value)
    assert "this must never run" not in capfd.readouterr().out


def test_header_inspection_reads_no_weights(files, tmp_path, monkeypatch):
    """inspect_wan / inspect_vae read shapes only: a file whose tensor bytes are garbage passes them."""
    cfg = inspect_wan(files["target"])
    assert cfg.dim == 64 and cfg.num_layers == 3
    assert inspect_vae(files["vae"]) == 4  # base width
    monkeypatch.setattr(torch.Tensor, "float", lambda self: pytest.fail("a weight was read"))
    inspect_wan(files["target"])


@pytest.mark.parametrize("kind", ["dit", "vae"])
def test_weights_holding_nan_are_refused_at_load(files, tmp_path, kind):
    from safetensors.torch import load_file

    tensors = load_file(files[SOURCES[kind]])
    name = sorted(k for k, v in tensors.items() if v.ndim >= 2)[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    path = tmp_path / "broken.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as error:
        load(kind, path)
    assert_honest(error.value, path, name, "NaN", "download it again")
