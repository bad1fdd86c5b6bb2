"""Every knob of one video, and the one place each is checked (``SDVGConfig.validate``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from .errors import InputError
from .schedule import NUM_STEPS

MODES = ("sdvg", "target_only", "draft_only")
SKIP_POLICIES = ("none", "uniform", "dynamic")
AGGREGATIONS = ("min", "mean", "quantile")
SPATIAL_STRIDE = 16  # VAE stride 8 times patch 2
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed (and ComfyUI's seed widget) accepts


@dataclass(frozen=True)
class SDVGConfig:
    """Every knob of one video. Defaults are the paper's setting at 98% quality."""

    mode: str = "sdvg"
    tau: float = -0.7
    aggregation: str = "min"
    quantile: float = 0.1
    width: int = 832
    height: int = 480
    num_blocks: int = 9
    seed: int = 42
    force_target_first: bool = True   # block 0 is always the target's, and is not drafted
    hybrid_k: int = 0                 # >0: a rejected block resumes the target at step k
    cascade: bool = False             # score a frame subset first, all frames only when undecided
    cascade_frames: int = 4
    cascade_margin: float = 0.5
    skip: str = "none"                # verification skipping: none | uniform | dynamic
    skip_every: int = 2               # uniform: skip the router on every n-th block
    skip_margin: float = 0.5          # dynamic: previous block cleared tau by at least this
    skip_cosine: float = 0.99         # dynamic: drafter's last two x0 estimates agree this well
    drop_first_frames: bool = True    # drop block 0's first 3 pixel frames, as the reference does
    exact_preprocess: bool | None = None  # True: ImageReward's PIL path; False: on the frames' device;
                                          # None: PIL on the CPU, on-device on a GPU (README: router preprocessing)
    strength: float = 1.0             # video-to-video: how far each input block is noised (1 = text-to-video)
    accept_pattern: tuple[bool, ...] | None = None  # benchmarks: force decisions, router still runs

    def validate(self) -> "SDVGConfig":
        """Raise InputError naming the first bad knob and what it accepts; return self."""
        for name in ("width", "height", "num_blocks", "hybrid_k", "cascade_frames", "skip_every"):
            require_int(name, getattr(self, name))
        require_int("seed", self.seed, low=0, high=MAX_SEED)
        for name in ("cascade_margin", "skip_margin", "skip_cosine", "strength"):
            require_number(name, getattr(self, name))
        check_choice("mode", self.mode, MODES)
        check_choice("skip", self.skip, SKIP_POLICIES)
        check_aggregation(self.aggregation, self.quantile)
        check_tau(self.tau)
        if self.exact_preprocess not in (None, True, False):
            raise InputError(f"exact_preprocess must be True, False or None (by device), got {self.exact_preprocess!r}.")
        for name, size in (("width", self.width), ("height", self.height)):
            if size <= 0 or size % SPATIAL_STRIDE:
                lower = max(SPATIAL_STRIDE, size - size % SPATIAL_STRIDE)
                raise InputError(
                    f"{name} {size} is not divisible by {SPATIAL_STRIDE} (VAE stride 8 x patch 2): "
                    f"use {lower} or {lower + SPATIAL_STRIDE}.")
        if self.num_blocks < 1:
            raise InputError(f"num_blocks must be at least 1, got {self.num_blocks}.")
        if not 0 <= self.hybrid_k < NUM_STEPS:
            raise InputError(f"hybrid_k must be in 0..{NUM_STEPS - 1} (0 = off), got {self.hybrid_k}.")
        if self.cascade and self.aggregation != "min":
            raise InputError("cascade scoring is exact only for the 'min' aggregation; "
                             "turn cascade off or use aggregation='min'.")
        if self.cascade_frames < 1:
            raise InputError(f"cascade_frames must be at least 1, got {self.cascade_frames}.")
        if self.skip == "uniform" and self.skip_every < 2:
            raise InputError(f"skip_every must be at least 2, got {self.skip_every}.")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"strength must be in (0, 1] (1 = text-to-video; lower keeps more of the input "
                             f"video), got {self.strength}.")
        if self.accept_pattern is not None and not self.accept_pattern:
            raise InputError("accept_pattern must hold at least one decision, or be None.")
        return self

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def models(self) -> frozenset[str]:
        """The models this mode calls, of "drafter", "target", "router": baselines run only their own."""
        used = {"drafter": self.mode != "target_only", "target": self.mode != "draft_only",
                "router": self.mode == "sdvg"}
        return frozenset(name for name, yes in used.items() if yes)


def require_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool, not a float such as 2.5 or 2.0) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(f"{name} must be a whole number, got {value!r} ({type(value).__name__}).")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be in {low}..{high}, got {value}.")
    return int(value)


def require_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise InputError(f"{name} must be a number, got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def check_aggregation(how: str, quantile: float) -> None:
    """The aggregation of a block's frame scores and, for "quantile", its level."""
    check_choice("aggregation", how, AGGREGATIONS)
    if isinstance(quantile, bool) or not isinstance(quantile, Real) or not 0.0 <= quantile <= 1.0:
        raise InputError(f"quantile {quantile!r} is outside [0, 1]; use e.g. 0.1 for the 10th percentile.")


def check_tau(tau) -> None:
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise InputError(f"tau must be a number (may be +-inf), got {tau!r}.")
    if math.isnan(tau):
        raise InputError("tau is NaN; give a number (-inf accepts every draft, +inf rejects all).")
