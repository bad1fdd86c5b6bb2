"""Which prompt conditions each block: a prompt schedule of (first block, prompt, embedding) segments.

A video's prompt can change while it streams (prompt travel, as Krea Realtime's server allows):
from a segment's first block on, both models attend to that segment's text, and the router
scores the drafts against its prompt. The context each block re-reads carries the scene across
the switch. A single prompt is the schedule of one segment starting at block 0.

The text form (the CLI's ``--prompt-schedule`` file, the ComfyUI schedule node) is one segment a
line, ``BLOCK: prompt``::

    0: a red fox trots through fresh snow at golden hour
    4: the red fox leaps into a snowdrift
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from .errors import InputError

_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.*\S)\s*$")


@dataclass(frozen=True)
class Segment:
    first_block: int
    prompt: str
    text: Tensor   # the prompt's umT5 embedding, [1, L, text_dim]


class PromptSchedule:
    def __init__(self, segments: Sequence[Segment]):
        segments = sorted(segments, key=lambda s: s.first_block)
        if not segments or segments[0].first_block != 0:
            raise InputError("a prompt schedule must start at block 0 (its first line is '0: <prompt>').")
        starts = [s.first_block for s in segments]
        if len(set(starts)) != len(starts):
            raise InputError(f"a prompt schedule starts two segments at the same block: {starts}.")
        for s in segments:
            if not isinstance(s.prompt, str) or not s.prompt.strip():
                raise InputError(f"the prompt of the segment starting at block {s.first_block} is empty.")
            if s.text.dim() != 3 or s.text.shape[0] != 1:
                raise InputError(f"the text of block {s.first_block}'s segment must be [1, tokens, dim], "
                                 f"got {tuple(s.text.shape)}: one prompt per segment.")
        self.segments = list(segments)

    @classmethod
    def single(cls, prompt: str, text: Tensor) -> "PromptSchedule":
        return cls([Segment(0, prompt, text if text.dim() == 3 else text.unsqueeze(0))])

    def __len__(self) -> int:
        return len(self.segments)

    def index_at(self, block: int) -> int:
        """The segment that conditions ``block``."""
        return max(i for i, s in enumerate(self.segments) if s.first_block <= block)

    def at(self, block: int) -> Segment:
        return self.segments[self.index_at(block)]

    def check(self, num_blocks: int) -> None:
        late = [s.first_block for s in self.segments if s.first_block >= num_blocks]
        if late:
            raise InputError(f"the prompt schedule switches at block(s) {late}, but the video has {num_blocks} "
                             f"blocks (0..{num_blocks - 1}): add blocks or move those lines earlier.")


def parse_schedule(text: str, source: str = "prompt schedule") -> list[tuple[int, str]]:
    """``BLOCK: prompt`` lines -> [(block, prompt)], sorted; blank lines and ``#`` comments skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise InputError(f"{source}, line {number}: {line.strip()[:60]!r} is not 'BLOCK: prompt' "
                             "(for example '0: a red fox in snow', then '4: the fox leaps').")
        entries.append((int(match.group(1)), match.group(2)))
    if not entries:
        raise InputError(f"{source} holds no 'BLOCK: prompt' line.")
    return sorted(entries)


def format_schedule(entries: Sequence[tuple[int, str]]) -> str:
    return "\n".join(f"{block}: {prompt}" for block, prompt in entries)
