"""The verifier: aggregation, tau, block 0's rule, modes, skipping, cascade, forced patterns.

A stub scorer rates a frame by its mean brightness, so which frames were scored, and how the
scores became a decision, can be checked by hand.
"""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError, NumericalError
from sdvg_core.verifier import Verifier, aggregate, evenly_spaced

PROMPT = "a red cat sits on the mat"
BASE = SDVGConfig(tau=0.0, num_blocks=6)


class BrightnessScorer:
    """A frame's score is its mean brightness; remembers how many frames each call scored."""

    def __init__(self):
        self.calls = []

    def score(self, frames, prompt):
        self.calls.append(frames.shape[0])
        return frames.mean(dim=(1, 2, 3))


def draft(frames, agreement=1.0):
    """What the block loop hands the verifier: decoded frames [B, T, 3, H, W] and an agreement."""
    return SimpleNamespace(pixels=frames.unsqueeze(0), agreement=agreement)


def block_with_one_dark_frame(frames=12):
    block = torch.full((frames, 3, 8, 8), 0.5)
    block[7] = -0.9  # one planted dark frame
    return block


def verifier(**changes):
    scorer = BrightnessScorer()
    return Verifier(replace(BASE, **changes).validate(), scorer), scorer


def test_min_rejects_a_block_with_one_dark_frame_that_mean_accepts():
    block = block_with_one_dark_frame()
    by_min, _ = verifier(aggregation="min")
    by_mean, _ = verifier(aggregation="mean")
    v_min, v_mean = by_min.verify(1, draft(block), PROMPT), by_mean.verify(1, draft(block), PROMPT)
    assert v_mean.decision == "accepted" and v_mean.aggregate == pytest.approx((11 * 0.5 - 0.9) / 12)
    assert v_min.decision == "rejected" and v_min.aggregate == pytest.approx(-0.9)
    assert len(v_min.scores) == 12 and v_min.tau == 0.0 and v_min.scoring == "full"


def test_infinite_tau_is_absolute_and_the_scorer_runs_once_per_block():
    block = block_with_one_dark_frame()
    accept_all, scorer = verifier(tau=float("-inf"))
    assert accept_all.verify(1, draft(block), PROMPT).decision == "accepted"
    reject_all, _ = verifier(tau=float("inf"))
    assert reject_all.verify(1, draft(block * 0 + 1), PROMPT).decision == "rejected"
    assert scorer.calls == [12]


def test_block_zero_and_modes():
    v, scorer = verifier()
    assert not v.wants_draft(0) and v.wants_draft(1)
    target = v.verify(0, None, PROMPT)
    assert target.decision == "target" and target.tau == 0.0 and not target.keeps_draft
    assert verifier(force_target_first=False)[0].wants_draft(0)
    assert not verifier(mode="target_only")[0].wants_draft(3)
    drafts_only, scorer = verifier(mode="draft_only")
    assert drafts_only.wants_draft(0)
    kept = drafts_only.verify(2, draft(block_with_one_dark_frame()), PROMPT)
    assert kept.decision == "accepted" and kept.keeps_draft and kept.scores == () and scorer.calls == []


def test_cascade_rejects_exactly_accepts_early_or_scores_everything():
    bright = torch.full((12, 3, 4, 4), 0.9)
    dark_in_subset = bright.clone()
    dark_in_subset[evenly_spaced(12, 4)[1]] = -0.5
    dark_elsewhere = bright.clone()
    dark_elsewhere[1] = -0.5  # frame 1 is not among the 4 evenly spaced ones
    assert 1 not in evenly_spaced(12, 4) and evenly_spaced(12, 4)[0] == 0 and evenly_spaced(12, 4)[-1] == 11

    v, scorer = verifier(cascade=True, cascade_margin=0.5)
    assert v.verify(1, draft(dark_in_subset), PROMPT).scoring == "cascade_reject" and scorer.calls == [4]
    early = v.verify(2, draft(dark_elsewhere), PROMPT)  # subset min 0.9 >= 0 + 0.5: accepted early
    assert early.scoring == "cascade_accept" and early.decision == "accepted"  # the approximation
    v, scorer = verifier(cascade=True, cascade_margin=2.0)
    full = v.verify(1, draft(dark_elsewhere), PROMPT)
    assert full.scoring == "cascade_full" and full.decision == "rejected" and scorer.calls == [4, 12]


def test_skipping_rules():
    block = torch.full((12, 3, 4, 4), 0.9)
    v, scorer = verifier(skip="uniform", skip_every=2)
    decisions = [v.verify(b, draft(block), PROMPT).decision for b in range(1, 6)]
    assert decisions == ["accepted", "skipped", "accepted", "skipped", "accepted"]
    v, _ = verifier(skip="dynamic", skip_margin=0.5, skip_cosine=0.99)
    assert v.verify(1, draft(block), PROMPT).decision == "accepted"        # block 1 is never skipped
    assert v.verify(2, draft(block, agreement=0.5), PROMPT).decision == "accepted"  # drafter unsure
    assert v.verify(3, draft(block), PROMPT).decision == "skipped"         # 0.9 >= 0 + 0.5, agreed
    assert v.verify(4, draft(block), PROMPT).decision == "accepted"        # never two in a row
    v.reset()
    assert v.verify(2, draft(block), PROMPT).decision == "accepted"        # a new video forgets


def test_a_forced_pattern_decides_while_the_scorer_still_runs():
    v, scorer = verifier(tau=float("inf"), accept_pattern=(True, False))
    decisions = [v.verify(b, draft(torch.zeros(12, 3, 4, 4)), PROMPT) for b in (1, 2, 3)]
    assert [d.decision for d in decisions] == ["accepted", "rejected", "accepted"]
    assert scorer.calls == [12, 12, 12] and all(len(d.scores) == 12 for d in decisions)


def test_aggregate_matches_numpy():
    scores = torch.tensor([0.3, -1.2, 0.8, 0.1, -0.4, 2.0, 0.0])
    values = scores.numpy().astype(np.float64)
    assert aggregate(scores, "min") == pytest.approx(values.min())
    assert aggregate(scores, "mean") == pytest.approx(values.mean())
    for q in (0.0, 0.1, 0.25, 0.5):
        assert aggregate(scores, "quantile", q) == pytest.approx(np.quantile(values, q, method="linear"), abs=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="min, mean, quantile"):
        aggregate(torch.tensor([1.0]), "median")
    with pytest.raises(InputError, match="min, mean, quantile"):
        SDVGConfig(aggregation="max").validate()
    with pytest.raises(InputError, match="quantile"):
        aggregate(torch.tensor([1.0]), "quantile", 1.5)
    with pytest.raises(InputError, match="no scores"):
        aggregate(torch.tensor([]), "min")
    with pytest.raises(NumericalError):
        aggregate(torch.tensor([0.0, float("nan")]), "min")
    with pytest.raises(InputError, match="NaN"):
        SDVGConfig(tau=float("nan")).validate()
    v = Verifier(BASE, scorer=None)
    with pytest.raises(InputError, match="router"):
        v.verify(1, draft(torch.zeros(12, 3, 4, 4)), PROMPT)
