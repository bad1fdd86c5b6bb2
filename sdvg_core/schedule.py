"""Few-step flow matching for one block: timesteps, sigmas, x0, re-noise, the noise plan.

Self-Forcing's 4-step list [1000, 750, 500, 250] is warped through shift 5 on the
1000-step training grid, then a fifth pass at t = 0 follows (docs/algorithm.md, 2.3):

    TIMESTEPS = (1000, 937.5, 833.33, 625, 0)

The model predicts the flow v; ``x0 = x_t - sigma * v`` (float64) and, between passes,
``x_next = (1 - sigma_next) * x0 + sigma_next * noise_i``.

Choice for t = 0: like the reference code we use the training grid's smallest sigma
(``SIGMA_MIN`` ~= 0.00498) rather than 0, so the fifth pass is a small correction that
sees the block at almost-clean noise level instead of an exact identity. The model
itself is fed timestep 0, as in the reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import InputError

SHIFT = 5.0
NUM_TRAIN_TIMESTEPS = 1000
SELF_FORCING_STEPS = (1000.0, 750.0, 500.0, 250.0)
FRAMES_PER_BLOCK = 3


def warp(t: float, shift: float = SHIFT) -> float:
    """Map a timestep of the unshifted 1000-step grid through the flow shift."""
    s = t / NUM_TRAIN_TIMESTEPS
    return NUM_TRAIN_TIMESTEPS * shift * s / (1.0 + (shift - 1.0) * s)


# The smallest sigma of Self-Forcing's shifted training grid: linspace(1, 0, 1001)[:-1]
# ends at 0.001, which the shift maps to 0.005 / 1.004.
SIGMA_MIN = warp(1.0) / NUM_TRAIN_TIMESTEPS
TIMESTEPS: tuple[float, ...] = tuple(warp(t) for t in SELF_FORCING_STEPS) + (0.0,)
NUM_STEPS = len(TIMESTEPS)


def sigma_of(t: float) -> float:
    """Noise level of a timestep; t = 0 maps to the grid's smallest sigma (see module doc)."""
    return t / NUM_TRAIN_TIMESTEPS if t > 0 else SIGMA_MIN


SIGMAS: tuple[float, ...] = tuple(sigma_of(t) for t in TIMESTEPS)


def start_step_for(strength: float) -> int:
    """The first pass a block noised to ``strength`` runs (video-to-video, docs/algorithm.md, 9).

    Strength s is the noise level 1000 s on the unshifted training grid, warped like the steps;
    the passes whose timestep is above it are skipped: s = 1 runs all 5, s = 0.75 four (from
    t = 937.5), 0.5 three, 0.25 two, less than 0.25 only the final t = 0 pass.
    """
    threshold = warp(strength * NUM_TRAIN_TIMESTEPS)
    return next(i for i, t in enumerate(TIMESTEPS) if t <= threshold + 1e-9)


def flow_to_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """Clean-sample estimate from a flow prediction, computed in float64."""
    return (x_t.double() - sigma * v.double()).to(x_t.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Put a clean estimate back at noise level sigma with a given noise draw."""
    return ((1.0 - sigma) * x0.double() + sigma * noise.double()).to(x0.dtype)


def _derived_seed(seed: int, *parts: int) -> int:
    """A stable 63-bit seed for a sub-stream (independent of torch's RNG state)."""
    digest = hashlib.sha256(repr((int(seed),) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class NoisePlan:
    """All randomness of one video, fixed by the seed before any model runs.

    The initial noise of the whole video is drawn once; block b uses latent frames
    3b .. 3b+2 of it. Each block's re-noise draws come from their own sub-stream, so
    they do not depend on which model ran earlier blocks: drafter and target see the
    same initial slice and the same step noises, whatever was accepted before.
    Everything is drawn on the CPU in float32, so a seed gives the same video on any device.
    """

    def __init__(self, seed: int, num_blocks: int, latent_shape: tuple[int, int, int],
                 *, batch: int = 1, frames_per_block: int = FRAMES_PER_BLOCK):
        if num_blocks < 1:
            raise InputError(f"num_blocks must be at least 1, got {num_blocks}.")
        self.seed = int(seed)
        self.num_blocks = num_blocks
        self.frames_per_block = frames_per_block
        self.latent_shape = tuple(latent_shape)
        self.batch = batch
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, 0))
        self.initial = torch.randn(batch, num_blocks * frames_per_block, *self.latent_shape,
                                   generator=generator)
        self._steps: dict[int, torch.Tensor] = {}

    def _check(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise InputError(f"block {block} is outside this video's {self.num_blocks} blocks.")

    def block_noise(self, block: int) -> torch.Tensor:
        """Initial noise of a block, [B, 3, C, h, w]."""
        self._check(block)
        f = self.frames_per_block
        return self.initial[:, block * f:(block + 1) * f]

    def step_noises(self, block: int) -> torch.Tensor:
        """Re-noise draws between the passes of a block, [NUM_STEPS - 1, B, 3, C, h, w]."""
        self._check(block)
        if block not in self._steps:
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, 1, block))
            shape = (NUM_STEPS - 1, self.batch, self.frames_per_block) + self.latent_shape
            self._steps[block] = torch.randn(shape, generator=generator)
        return self._steps[block]


FlowFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class BlockSample:
    """The result of denoising one block.

    ``inputs[i]`` is the noisy latent fed to pass ``start_step + i`` (kept so a
    hybrid target can resume from the drafter's trajectory), ``x0s[i]`` its clean estimate.
    """

    latents: torch.Tensor
    start_step: int
    inputs: list[torch.Tensor] = field(default_factory=list)
    x0s: list[torch.Tensor] = field(default_factory=list)

    def input_at(self, step: int) -> torch.Tensor:
        """The noisy latent that entered pass ``step`` (0-based over TIMESTEPS)."""
        if not self.start_step <= step < self.start_step + len(self.inputs):
            raise InputError(f"step {step} was not run in this sample (steps "
                             f"{self.start_step}..{self.start_step + len(self.inputs) - 1}).")
        return self.inputs[step - self.start_step]


def denoise_block(flow: FlowFn, step_noises: torch.Tensor, x_start: torch.Tensor,
                  *, start_step: int = 0) -> BlockSample:
    """Run passes ``start_step .. NUM_STEPS-1`` of the few-step sampler.

    ``flow(x_t, t)`` returns the model's flow prediction for the block. ``x_start`` is the
    latent entering pass ``start_step``: the block's initial noise when starting at 0,
    or (hybrid resume) the drafter's noisy latent at that step.
    """
    if not 0 <= start_step < NUM_STEPS:
        raise InputError(f"start_step must be in 0..{NUM_STEPS - 1}, got {start_step}.")
    sample = BlockSample(latents=x_start, start_step=start_step)
    x = x_start
    for i in range(start_step, NUM_STEPS):
        sample.inputs.append(x)
        v = flow(x, TIMESTEPS[i])
        x0 = flow_to_x0(x, v, SIGMAS[i])
        sample.x0s.append(x0)
        if i + 1 < NUM_STEPS:
            x = renoise(x0, step_noises[i].to(x0.device, x0.dtype), SIGMAS[i + 1])
    sample.latents = sample.x0s[-1]
    return sample


def context_latents(block: int, committed: torch.Tensor,
                    anchor: Callable[[int], torch.Tensor],
                    frames_per_block: int = FRAMES_PER_BLOCK) -> torch.Tensor | None:
    """The clean frames a model re-reads before generating ``block`` (window regime).

    Block 0 has none. Block 1 re-reads committed latent frames 0..2. Block b >= 2
    (s = 3b) re-reads [anchor, latent s-2, latent s-1], where ``anchor(block)`` returns
    the re-encoded last pixel frame of latent s-3, shape [B, 1, C, h, w].
    """
    if block == 0:
        return None
    s = block * frames_per_block
    if committed.shape[1] < s:
        raise InputError(f"block {block} needs {s} committed latent frames, "
                         f"only {committed.shape[1]} are committed.")
    if block == 1:
        return committed[:, 0:frames_per_block]
    tail = committed[:, s - (frames_per_block - 1):s]
    return torch.cat([anchor(block).to(tail.device, tail.dtype), tail], dim=1)


def anchor_pixel_index(block: int, frames_per_block: int = FRAMES_PER_BLOCK) -> int:
    """Index, in the video's full pixel stream, of the frame re-encoded as block's anchor.

    The causal VAE turns latent 0 into pixel 0 and latent j >= 1 into pixels
    4j-3 .. 4j, so the last pixel of latent s-3 is 4(s-3).
    """
    s = block * frames_per_block
    return 4 * (s - frames_per_block)
