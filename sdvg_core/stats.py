"""Per-block accounting: model calls and seconds per stage, and the video summary."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

COMPONENTS = ("drafter", "target", "router", "vae_decode", "vae_encode")
DECISIONS = ("target", "accepted", "rejected", "skipped")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work so wall-clock stage times are honest."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Counts model calls and accumulates seconds per component for one block."""

    def __init__(self):
        self.calls = {name: 0 for name in COMPONENTS}
        self.seconds = {name: 0.0 for name in COMPONENTS}

    def count(self, component: str, n: int = 1) -> None:
        self.calls[component] += n

    @contextmanager
    def time(self, component: str, device=None):
        synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.seconds[component] += time.perf_counter() - start


@dataclass
class BlockStats:
    """What happened to one block; the JSON schema of ``stats.json``'s ``blocks`` entries."""

    block: int
    decision: str
    prompt: str | None = None           # the prompt that conditioned the block
    scores: list[float] = field(default_factory=list)
    aggregate: float | None = None
    tau: float | None = None
    scoring: str | None = None          # "full", "cascade_reject", "cascade_accept", "cascade_full"
    draft_agreement: float | None = None  # cosine of the drafter's last two x0 estimates
    model_calls: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pixel_frames: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(blocks: list[BlockStats]) -> dict:
    """Accept rate over the blocks the router scored, totals of calls and seconds."""
    scored = [b for b in blocks if b.decision in ("accepted", "rejected") and b.scores]
    accepted = sum(b.decision == "accepted" for b in scored)
    calls = {name: sum(b.model_calls.get(name, 0) for b in blocks) for name in COMPONENTS}
    seconds = {name: sum(b.seconds.get(name, 0.0) for b in blocks) for name in COMPONENTS}
    seconds["total"] = sum(b.seconds.get("total", 0.0) for b in blocks)
    return {
        "blocks": len(blocks),
        "decisions": {d: sum(b.decision == d for b in blocks) for d in DECISIONS},
        "scored_blocks": len(scored),
        "accept_rate": (accepted / len(scored)) if scored else None,
        "model_calls": calls,
        "seconds": seconds,
    }
