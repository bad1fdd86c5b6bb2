"""Write frames to a video file: H.264 mp4 through PyAV, animated WebP when no encoder exists."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError, MissingFileError

WAN_FPS = 16


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, H, W, 3] floats in [0, 1] -> uint8 array."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@dataclass(frozen=True)
class EncodedVideo:
    """A video file's bytes and its suffix: what a Ray worker hands the one writer."""

    data: bytes
    suffix: str  # ".mp4", or ".webp" where no mp4 encoder exists


def encode_video(frames: torch.Tensor, fps: int = WAN_FPS) -> EncodedVideo:
    """``frames`` ([T, H, W, 3], 0..1) as H.264 mp4 through PyAV (libx264, then mpeg4), or as an
    animated WebP when PyAV or both encoders are missing. The same frames give the same bytes."""
    data = to_uint8(frames)
    for codec in ("libx264", "mpeg4"):
        try:
            return EncodedVideo(_mp4_bytes(data, fps, codec), ".mp4")
        except Exception:  # noqa: BLE001 - no PyAV, or this encoder is not built in
            pass
    images = [Image.fromarray(f) for f in data]
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, lossless=False, quality=90)
    return EncodedVideo(buffer.getvalue(), ".webp")


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = WAN_FPS) -> Path:
    """Write ``frames`` to ``path`` (mp4; ``.webp`` suffix if no encoder exists); returns the path written."""
    video = encode_video(frames, fps)
    path = Path(path).with_suffix(video.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(video.data)
    return path


def _mp4_bytes(data: np.ndarray, fps: int, codec: str) -> bytes:
    import av

    height, width = data.shape[1:3]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # x264's macroblock tree gave the same frames different bytes from run to run (measured:
        # 2 of 40 encodes in one process differed; 0 of 60 with it off), and a video must repeat.
        options = {"x264-params": "mbtree=0"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=fps, options=options)
        # yuv420p needs even sizes; our sizes are multiples of 16, tiny test sizes may not be.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        for frame in data:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:stream.height, :stream.width]), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def count_frames(path: str | os.PathLike) -> int:
    """Decode a written video and count its frames (used by tests)."""
    path = Path(path)
    if path.suffix.lower() == ".webp":
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1)
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_video(path: str | os.PathLike, limit: int | None = None) -> torch.Tensor:
    """A video file's frames ``[T, H, W, 3]`` float in [0, 1] (ComfyUI IMAGE layout); at most ``limit``."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--video {path}: no such file.")
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if limit is not None and len(frames) >= limit:
                    break
    except (av.error.FFmpegError, ValueError) as error:
        raise InputError(f"--video {path}: cannot be decoded as a video ({error}).") from None
    if not frames:
        raise InputError(f"--video {path}: holds no video frames.")
    return torch.stack(frames).float() / 255.0
