"""Reading weight files: safetensors or PyTorch, told apart by their bytes, with honest errors.

Every loader (Wan DiT, VAE, ImageReward) reads through ``read_tensors``. A file that cannot be
used fails with one of three messages, never with torch's unpickler text:

- truncated or corrupt (an interrupted download): download it again;
- not a model file at all (an HTML error page, a Git LFS pointer, text): get the real file;
- holds code (Python objects a pickle would run), refused for safety: use a .safetensors file.

PyTorch files are loaded with ``weights_only=True`` and memory-mapped when they are zip
archives, so reading a file's tensor shapes (``meta=True``) costs seconds, not its size.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import CheckpointError, MissingFileError


class TruncatedFileError(CheckpointError):
    """The file ends early or is damaged: an interrupted download."""


class NotAModelFileError(CheckpointError):
    """The file is no weights file at all (an HTML page, a Git LFS pointer, text...)."""


class UnsafeFileError(CheckpointError):
    """A PyTorch file holding Python objects that would run code when unpickled."""


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def file_kind(path: str | os.PathLike, what: str) -> str:
    """"safetensors", "torch-zip" or "torch-pickle", from the file's first bytes.

    ``what`` names the file's role in messages ("Wan DiT checkpoint", "VAE", ...).
    """
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MissingFileError(f"{what} {path} {state}.")
    size = path.stat().st_size
    if size == 0:
        raise TruncatedFileError(f"{what} {path} is empty (0 bytes): the download was interrupted; download it again.")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:  # pickle PROTO opcode
        return "torch-pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len > size:
            raise TruncatedFileError(
                f"{what} {path} is a truncated or corrupt safetensors file ({size} bytes, shorter than its own "
                f"{header_len}-byte header): the download was interrupted; download it again.")
        return "safetensors"
    raise NotAModelFileError(f"{what} {path} is not a weights file: {_describe_bytes(head)}. "
                             "Download the model file itself (.safetensors or .pt).")


def read_tensors(path: str | os.PathLike, what: str, *, meta: bool = False) -> dict:
    """The file's top-level object: a dict of tensors (or, for PyTorch files, nested dicts).

    ``meta=True`` gives tensors on the meta device for safetensors files (shapes and dtypes from
    the header, no data read) and memory-mapped tensors for PyTorch zip files.
    """
    kind = file_kind(path, what)
    path = str(path)
    if kind == "safetensors":
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                if meta:
                    return {k: _meta_tensor(f.get_slice(k)) for k in f.keys()}
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise TruncatedFileError(
                f"{what} {path} is a damaged safetensors file ({error}): it is truncated or corrupt, often "
                "an interrupted download: download it again.") from None
    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise TruncatedFileError(
                f"{what} {path} is a truncated or corrupt PyTorch file (its zip directory is missing): the download "
                "was interrupted; download it again.") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise NotAModelFileError(f"{what} {path} is a zip archive but not a PyTorch checkpoint "
                                     "(no data.pkl inside). Use the model file itself.")
    return _torch_load(path, what, mmap=kind == "torch-zip")


def _torch_load(path: str, what: str, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError...
        text = str(error)
        code = re.search(r"GLOBAL ([\w.]+) whose module \S+ is blocked", text) or \
            re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if code and not code.group(1).startswith("torch."):
            raise UnsafeFileError(
                f"{what} {path} holds Python code ({code.group(1)}) besides tensors and was refused for "
                "safety: loading it would run that code. Use a .safetensors copy of the model, or one "
                "from its official source.") from None
        raise TruncatedFileError(
            f"{what} {path} is a damaged PyTorch file ({type(error).__name__} while reading it): it is "
            "truncated or corrupt, often an interrupted download: download it again.") from None


def _meta_tensor(tensor_slice) -> Tensor:
    dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.uint8)
    return torch.empty(tensor_slice.get_shape(), dtype=dtype, device="meta")


def _describe_bytes(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "it is a web page (HTML), probably a login or error page saved instead of the file"
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer: the repository was cloned without `git lfs pull`"
    if text.startswith((b"{", b"[")):
        return "it is a JSON file"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "it is a text file"
    return f"its first bytes ({head[:8].hex()}) are neither safetensors nor PyTorch"
