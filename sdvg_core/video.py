"""Write frames to a video file: H.264 mp4 through PyAV, animated WebP when no encoder exists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError, MissingFileError

WAN_FPS = 16


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, H, W, 3] floats in [0, 1] -> uint8 array."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = WAN_FPS) -> Path:
    """Write ``frames`` ([T, H, W, 3], 0..1) and return the path actually written.

    Tries ``path`` as mp4 (libx264, then mpeg4); if PyAV or both encoders are missing,
    writes ``path`` with a ``.webp`` suffix instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_uint8(frames)
    if path.suffix.lower() == ".mp4":
        for codec in ("libx264", "mpeg4"):
            try:
                _write_mp4(data, path, fps, codec)
                return path
            except Exception:  # noqa: BLE001 - no PyAV, or this encoder is not built in
                path.unlink(missing_ok=True)
        path = path.with_suffix(".webp")
    images = [Image.fromarray(f) for f in data]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, lossless=False, quality=90)
    return path


def _write_mp4(data: np.ndarray, path: Path, fps: int, codec: str) -> None:
    import av

    height, width = data.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        # yuv420p needs even sizes; our sizes are multiples of 16, tiny test sizes may not be.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        for frame in data:
            vf = av.VideoFrame.from_ndarray(frame[:stream.height, :stream.width], format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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
