"""A batch's output folder: one video and one JSON line per prompt, written whole or not at all.

- A video is written to a temporary name and renamed into place; only then is its line appended
  to ``results.jsonl`` (one ``write`` of the whole line, flushed and synced). A crash leaves at most
  a torn last line, which the next run drops; a prompt without its line is not done.
- A rerun into the same folder skips the prompts that have a line; ``redo`` replaces them. Lines
  carry the settings they were made with: a rerun with other settings is refused rather than
  mixing two experiments in one log.
- A prompt that fails is listed in ``failed.jsonl`` with its error, and has no video and no line.

Nothing is created until something is written: a run that fails before its first video leaves
no folder behind. One writer at a time: the process that owns the batch (with Ray, the driver).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .errors import InputError, MissingFileError
from .video import EncodedVideo

RESULTS = "results.jsonl"
FAILED = "failed.jsonl"


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_")[:n] or "prompt"


class ResultsFolder:
    def __init__(self, path: str | os.PathLike, settings: dict, *, redo: bool = False):
        """``settings``: what a line must have been made with to count as done here (JSON-safe)."""
        self.path = Path(path)
        self.settings = settings
        self.redo = redo

    @property
    def log(self) -> Path:
        return self.path / RESULTS

    def check_writable(self) -> None:
        """Fail now, not after loading the models, if the folder cannot be made or written."""
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"--out {self.path}: {existing} is a file, not a folder; choose another --out.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"--out {self.path}: {existing} is not writable; choose a folder you can write to.")
        if self.path.exists():
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass

    def done(self) -> dict[int, dict]:
        """The prompts that have their line here (by index), after dropping a torn last line.
        Raises if the lines were made with other settings (unless ``redo``)."""
        if not self.log.is_file():
            return {}
        text = self.log.read_text(encoding="utf-8")
        lines, good = text.splitlines(keepends=True), []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if record is None or not line.endswith("\n") or "index" not in record:
                if number == len(lines):  # a line torn by a crash: that prompt is not done
                    break
                raise InputError(f"{self.log}: line {number} is not one of this tool's records (edited by hand, or "
                                 "an older version's?); move the file away to start over.")
            good.append((record, line))
        if len(good) < len(lines):
            self._rewrite([line for _, line in good])
        records = {record["index"]: record for record, _ in good}
        other = next((r for r in records.values() if r.get("settings") != self.settings), None)
        if other is not None and not self.redo:
            changed = sorted(k for k in set(self.settings) | set(other.get("settings") or {})
                             if (other.get("settings") or {}).get(k) != self.settings.get(k))
            raise InputError(f"{self.log} holds results made with other settings ({', '.join(changed[:4])} differ): "
                             "choose another --out, or pass --redo to replace those prompts.")
        return records

    def pending(self, indices: list[int]) -> list[int]:
        """The indices still to generate; with ``redo``, their old lines are dropped first. Videos a
        killed run left half-written are removed."""
        done = self.done()
        if self.path.is_dir():
            for partial in self.path.glob(".*.partial.*"):
                partial.unlink()
        if self.redo:
            keep = [json.dumps(r) + "\n" for i, r in sorted(done.items()) if i not in set(indices)]
            if len(keep) < len(done):
                self._rewrite(keep)
            return list(indices)
        return [i for i in indices if i not in done]

    def video_path(self, index: int, prompt: str) -> Path:
        return self.path / f"{index:04d}_{slug(prompt)}.mp4"

    def write(self, index: int, prompt: str, video: EncodedVideo, record: dict) -> Path:
        """The video (atomically), then its line. Returns where the video went."""
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.video_path(index, prompt).with_suffix(video.suffix)
        partial = final.with_name(f".{final.stem}.partial{final.suffix}")
        with open(partial, "wb") as handle:
            handle.write(video.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        self._append(self.log, {"index": index, "prompt": prompt, "video": str(final), **record,
                                "settings": self.settings})
        return final

    def fail(self, index: int, prompt: str, error: str) -> None:
        """``error``: what went wrong, as the user should read it (``"NumericalError: ..."``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._append(self.path / FAILED, {"index": index, "prompt": prompt, "error": error})

    @staticmethod
    def _append(path: Path, record: dict) -> None:
        line = json.dumps(record) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite(self, lines: list[str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".results-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.replace(tmp, self.log)


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a prompts file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--prompts {path}: no such file (one prompt per line).")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
