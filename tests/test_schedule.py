"""The few-step block sampler against independent references."""

import pytest
import torch

from sdvg_core import schedule
from sdvg_core.errors import InputError


def self_forcing_grid(shift=5.0, steps=1000):
    """Self-Forcing's FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True), set_timesteps(1000)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas * 1000, sigmas


def test_timesteps_match_self_forcing_warped_list():
    timesteps, sigmas = self_forcing_grid()
    # Self-Forcing indexes the grid with 1000 - step for its list [1000, 750, 500, 250].
    expected = [float(timesteps[1000 - s]) for s in (1000, 750, 500, 250)] + [0.0]
    assert schedule.TIMESTEPS == pytest.approx(expected, abs=1e-9)
    assert schedule.TIMESTEPS == pytest.approx([1000, 937.5, 833.3333333, 625, 0], abs=1e-6)
    # t = 0 maps to the grid's smallest sigma, as the reference does (nearest grid timestep).
    assert schedule.SIGMA_MIN == pytest.approx(float(sigmas.min()), abs=1e-12)
    assert schedule.SIGMAS[-1] == schedule.SIGMA_MIN
    assert schedule.SIGMAS[:4] == pytest.approx([1.0, 0.9375, 0.8333333333, 0.625])


def exact_flow_model(x0, calls):
    """A model that knows x0: under x_t = (1-s) x0 + s eps its exact flow is (x_t - x0) / s."""
    sigma_for = {1000.0: 1.0, 937.5: 0.9375, 625.0: 0.625}

    def flow(x_t, t):
        calls.append(t)
        if t == 0:
            s = 0.005 / 1.004
        elif abs(t - 2500 / 3) < 1e-6:
            s = 2.5 / 3
        else:
            s = sigma_for[t]
        return (x_t.double() - x0.double()) / s

    return flow


def test_exact_flow_recovers_known_x0():
    plan = schedule.NoisePlan(seed=7, num_blocks=2, latent_shape=(4, 3, 5))
    x0 = torch.randn(1, 3, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    calls = []
    sample = schedule.denoise_block(exact_flow_model(x0, calls), plan.step_noises(1), plan.block_noise(1))
    assert len(calls) == 5
    torch.testing.assert_close(sample.latents, x0, rtol=0, atol=1e-5)
    # Every intermediate estimate is x0 as well, and each pass input sits at its noise level.
    for i, est in enumerate(sample.x0s):
        torch.testing.assert_close(est, x0, rtol=0, atol=1e-5)
    for i in range(1, 5):
        s = schedule.SIGMAS[i]
        expected = (1 - s) * x0 + s * plan.step_noises(1)[i - 1]
        torch.testing.assert_close(sample.inputs[i], expected, rtol=0, atol=1e-5)


def test_resume_from_step_runs_only_remaining_passes():
    plan = schedule.NoisePlan(seed=3, num_blocks=1, latent_shape=(2, 2, 2))
    x0 = torch.randn(1, 3, 2, 2, 2)
    full = schedule.denoise_block(exact_flow_model(x0, []), plan.step_noises(0), plan.block_noise(0))
    calls = []
    resumed = schedule.denoise_block(exact_flow_model(x0, calls), plan.step_noises(0),
                                     full.input_at(3), start_step=3)
    assert calls == [625.0, 0.0]
    torch.testing.assert_close(resumed.latents, full.latents)
    with pytest.raises(InputError):
        full.input_at(5)


def test_noise_plan_is_seeded_and_path_independent():
    a = schedule.NoisePlan(seed=42, num_blocks=3, latent_shape=(4, 6, 8))
    b = schedule.NoisePlan(seed=42, num_blocks=3, latent_shape=(4, 6, 8))
    c = schedule.NoisePlan(seed=43, num_blocks=3, latent_shape=(4, 6, 8))
    # Asking for blocks in a different order gives the same draws.
    steps_b = [b.step_noises(k) for k in (2, 0, 1)]
    steps_a = [a.step_noises(k) for k in (2, 0, 1)]
    for x, y in zip(steps_a, steps_b):
        assert torch.equal(x, y)
    assert torch.equal(a.initial, b.initial)
    assert not torch.equal(a.initial, c.initial)
    assert not torch.equal(a.step_noises(1), c.step_noises(1))
    assert not torch.equal(a.step_noises(0), a.step_noises(1))
    assert a.block_noise(1).shape == (1, 3, 4, 6, 8)
    assert torch.equal(a.block_noise(2), a.initial[:, 6:9])
    assert a.step_noises(0).shape == (4, 1, 3, 4, 6, 8)
    with pytest.raises(InputError):
        a.block_noise(3)


def test_same_seed_same_block_different_seed_different_block():
    x0 = torch.randn(1, 3, 2, 3, 3)

    def run(seed):
        plan = schedule.NoisePlan(seed=seed, num_blocks=1, latent_shape=(2, 3, 3))

        def flow(x_t, t):  # a non-trivial deterministic "model"
            return torch.tanh(x_t) * (1 + t / 1000) - x0

        return schedule.denoise_block(flow, plan.step_noises(0), plan.block_noise(0)).latents

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_context_latents_window_regime():
    committed = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1, 1).expand(1, 9, 2, 1, 1)
    anchors = []

    def anchor(block):
        anchors.append(block)
        return torch.full((1, 1, 2, 1, 1), -1.0)

    assert schedule.context_latents(0, committed[:, :0], anchor) is None
    ctx1 = schedule.context_latents(1, committed[:, :3], anchor)
    assert ctx1[0, :, 0, 0, 0].tolist() == [0, 1, 2]
    assert anchors == []
    ctx2 = schedule.context_latents(2, committed[:, :6], anchor)
    assert ctx2[0, :, 0, 0, 0].tolist() == [-1, 4, 5]
    ctx3 = schedule.context_latents(3, committed, anchor)
    assert ctx3[0, :, 0, 0, 0].tolist() == [-1, 7, 8]
    assert anchors == [2, 3]
    with pytest.raises(InputError):
        schedule.context_latents(3, committed[:, :6], anchor)
    # The anchor of block b (s = 3b) is the last pixel frame of latent s-3: pixel 4(s-3).
    assert schedule.anchor_pixel_index(2) == 12
    assert schedule.anchor_pixel_index(3) == 24
