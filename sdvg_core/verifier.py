"""The verifier: the one place that decides whether a drafted block is kept (docs/algorithm.md, 2.4).

Everything that bears on the decision lives here, apart from how drafts are made (the
drafter) and how frames are scored (the ImageReward scorer), as vLLM keeps acceptance beside
but apart from its proposer:

- block 0 is the target's (``force_target_first``), and a target-only video drafts nothing;
- draft-only keeps every draft unscored;
- verification skipping (``skip``) keeps a draft unscored after a confident block;
- the scorer rates every frame, the frames' scores are aggregated (the worst frame by default),
  and the draft is kept iff the aggregate reaches tau; the cascade scores a subset first;
- benchmarks force the decisions (``accept_pattern``) while the scorer still runs.

``Verifier.verify`` returns a ``Verdict`` carrying the decision and how it was reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import AGGREGATIONS, SDVGConfig, check_aggregation
from .errors import InputError, NumericalError
from .stats import Meter

__all__ = ["AGGREGATIONS", "Verdict", "Verifier", "aggregate", "draft_agreement"]


class FrameScorer(Protocol):
    """Scores frames ``[T, 3, H, W]`` in [-1, 1] against a prompt (ImageRewardScorer, or a test stub)."""

    def score(self, frames: Tensor, prompt: str) -> Tensor: ...


@dataclass(frozen=True)
class Verdict:
    """The decision on one block and how it was reached."""

    decision: str                      # "target" | "accepted" | "rejected" | "skipped"
    tau: float
    scores: tuple[float, ...] = ()     # per scored frame
    aggregate: float | None = None
    scoring: str | None = None         # "full" | "cascade_reject" | "cascade_accept" | "cascade_full"
    agreement: float | None = None     # cosine of the drafter's last two x0 estimates

    @property
    def keeps_draft(self) -> bool:
        return self.decision in ("accepted", "skipped")


def aggregate(scores, how: str = "min", quantile: float = 0.1) -> float:
    """One number per block from per-frame scores.

    "min" (the paper's rule: the worst frame decides), "mean", or "quantile" (a low quantile,
    torch.quantile's linear interpolation; robust to a single outlier frame).
    """
    check_aggregation(how, quantile)
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
    if scores.numel() == 0:
        raise InputError("aggregate: got no scores; score at least one frame.")
    if not torch.isfinite(scores).all():
        raise NumericalError(f"router: frame scores contain NaN or Inf ({scores.tolist()}); the decoded "
                             "frames or the router's weights are broken.")
    if how == "min":
        return float(scores.min())
    if how == "mean":
        return float(scores.mean())
    return float(torch.quantile(scores, quantile, interpolation="linear"))


def draft_agreement(x0s: list[Tensor]) -> float | None:
    """Cosine of the drafter's last two clean estimates (the dynamic skip policy reads it)."""
    if len(x0s) < 2:
        return None
    a, b = x0s[-2].flatten().double(), x0s[-1].flatten().double()
    return float(F.cosine_similarity(a, b, dim=0))


class Verifier:
    """Decides, block by block, whether a draft is kept. One per video (it remembers the
    previous block's verdict for verification skipping); ``reset`` starts a new video."""

    def __init__(self, config: SDVGConfig, scorer: FrameScorer | None = None, *,
                 check_interrupt: Callable[[], None] = lambda: None):
        self.config = config
        self.scorer = scorer
        self.check_interrupt = check_interrupt
        self._previous: Verdict | None = None

    def reset(self) -> None:
        self._previous = None

    def wants_draft(self, block: int) -> bool:
        """Whether the drafter proposes this block at all."""
        mode = self.config.mode
        if mode == "target_only":
            return False
        return not (mode == "sdvg" and block == 0 and self.config.force_target_first)

    def verify(self, block: int, draft, prompt: str, meter: Meter | None = None) -> Verdict:
        """The verdict on a block. ``draft``: None when nothing was drafted, else an object with
        ``pixels`` (its decoded frames ``[B, T, 3, H, W]`` in [-1, 1]) and ``agreement`` (the
        drafter's ``draft_agreement``)."""
        cfg = self.config
        if draft is None:
            verdict = Verdict("target", cfg.tau)
        elif cfg.mode == "draft_only":
            verdict = Verdict("accepted", cfg.tau, agreement=draft.agreement)
        elif self._skips(block, draft.agreement):
            verdict = Verdict("skipped", cfg.tau, agreement=draft.agreement)
        else:
            verdict = self._score(block, draft.pixels[0], prompt, draft.agreement, meter or Meter())
        self._previous = verdict
        return verdict

    # -- the pieces -----------------------------------------------------------------------

    def _skips(self, block: int, agreement: float | None) -> bool:
        """VVS-style verification skipping; never block <= 1, never two blocks in a row."""
        cfg, prev = self.config, self._previous
        if cfg.skip == "none" or block <= 1 or prev is None or prev.decision == "skipped":
            return False
        if cfg.skip == "uniform":
            return block % cfg.skip_every == 0
        cleared = prev.decision == "accepted" and prev.aggregate is not None \
            and prev.aggregate >= cfg.tau + cfg.skip_margin
        return cleared and agreement is not None and agreement >= cfg.skip_cosine

    def _score(self, block: int, frames: Tensor, prompt: str, agreement, meter: Meter) -> Verdict:
        """Score the frames (optionally cascaded: a subset first) and decide against tau."""
        cfg = self.config
        every = list(range(frames.shape[0]))
        scoring, index = "full", every
        if cfg.cascade and cfg.cascade_frames < len(every):
            subset = evenly_spaced(len(every), cfg.cascade_frames)
            scores = self._rate(frames[subset], prompt, meter)
            value = aggregate(scores, cfg.aggregation, cfg.quantile)
            if value < cfg.tau:  # exact: the full minimum can only be lower
                scoring, index = "cascade_reject", subset
            elif value >= cfg.tau + cfg.cascade_margin:  # approximate
                scoring, index = "cascade_accept", subset
            else:
                scoring = "cascade_full"
        if scoring in ("full", "cascade_full"):
            scores = self._rate(frames[index], prompt, meter)
            value = aggregate(scores, cfg.aggregation, cfg.quantile)
        accept = value >= cfg.tau
        if cfg.accept_pattern is not None:  # benchmarks: the pattern decides, the scores are real
            accept = bool(cfg.accept_pattern[(block - 1) % len(cfg.accept_pattern)])
        return Verdict("accepted" if accept else "rejected", cfg.tau, tuple(scores), value, scoring, agreement)

    def _rate(self, frames: Tensor, prompt: str, meter: Meter) -> list[float]:
        if self.scorer is None:
            raise InputError("mode 'sdvg' needs a router to score drafts; none was given.")
        self.check_interrupt()
        path = self.config.exact_preprocess  # None: the scorer picks by the frames' device
        options = {} if path is None else {"exact_preprocess": path}
        with meter.time("router", frames.device):
            scores = self.scorer.score(frames, prompt, **options)
        meter.count("router")
        return torch.as_tensor(scores, dtype=torch.float32).flatten().tolist()


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread over 0..n-1, both ends included."""
    if k <= 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
