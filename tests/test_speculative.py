"""The speculative block loop: invariants, model-call accounting, modes and options."""

from dataclasses import replace

import pytest
import torch

from sdvg_core import schedule
from sdvg_core.errors import IncompatibleModelsError, InputError, SDVGError
from sdvg_core.speculative import SDVGConfig, SDVGSession
from sdvg_core.tiny import build_tiny_system, tiny_wan
from sdvg_core.wan import WanConfig

INF = float("inf")
BASE = SDVGConfig(width=32, height=16, num_blocks=4, seed=5)


@pytest.fixture(scope="module")
def system():
    return build_tiny_system(seed=0, prompt="a red fox running through fresh snow")


_runs = {}


def run(system, **changes):
    """A whole video for a config; memoised, since runs are deterministic (tested below)."""
    config = replace(BASE, **changes)
    if config not in _runs:
        _runs[config] = SDVGSession(**system.session_kwargs(), config=config).run()
    return _runs[config]


def calls(result, block=None):
    if block is None:
        return result.summary["model_calls"]
    return result.blocks[block].model_calls


def test_tau_plus_inf_is_bit_identical_to_target_only(system):
    sdvg = run(system, tau=INF)
    target_only = run(system, mode="target_only")
    assert [b.decision for b in sdvg.blocks] == ["target"] + ["rejected"] * 3
    assert torch.equal(sdvg.frames, target_only.frames)
    assert torch.equal(sdvg.latents, target_only.latents)


def test_tau_minus_inf_accepts_drafts_equal_to_the_drafter_on_that_history(system):
    result = run(system, tau=-INF)
    assert [b.decision for b in result.blocks] == ["target"] + ["accepted"] * 3
    # Rebuild each accepted block from docs/algorithm.md with the model API directly: context pass over
    # the committed history (with the re-encoded anchor for b >= 2), then the 5 denoising passes.
    plan = schedule.NoisePlan(BASE.seed, BASE.num_blocks, (16, BASE.height // 8, BASE.width // 8))
    system.vae.reset()
    pixels = system.vae.decode(result.latents[:, :3])
    model = system.drafter
    text = model.encode_text(system.text)
    tokens = model.cfg.frame_tokens(BASE.height // 8, BASE.width // 8)
    for b in range(1, BASE.num_blocks):
        s = 3 * b
        if b == 1:
            context = result.latents[:, 0:3]
        else:
            anchor = system.vae.encode_frame(pixels[:, 4 * (s - 3)])
            context = torch.cat([anchor, result.latents[:, s - 2:s]], dim=1)
        cache = model.new_cache(1, 6, tokens)
        model(context, torch.zeros(1, 3), text, cache, slot=0, rope_start=0)
        x = plan.block_noise(b)
        for i, t in enumerate(schedule.TIMESTEPS):
            v = model(x, torch.full((1, 3), t), text, cache, slot=3, rope_start=3)
            x0 = (x.double() - schedule.SIGMAS[i] * v.double()).float()
            if i + 1 < len(schedule.TIMESTEPS):
                s_next = schedule.SIGMAS[i + 1]
                x = ((1 - s_next) * x0.double() + s_next * plan.step_noises(b)[i].double()).float()
        torch.testing.assert_close(result.latents[:, s:s + 3], x0, rtol=0, atol=1e-6)
        pixels = torch.cat([pixels, system.vae.decode(result.latents[:, s:s + 3])], dim=1)


def test_model_calls_per_mode(system):
    target_only = run(system, mode="target_only")
    assert calls(target_only)["drafter"] == 0 and calls(target_only)["router"] == 0
    assert calls(target_only, 0)["target"] == 5                       # block 0: no context
    assert all(calls(target_only, b)["target"] == 6 for b in (1, 2, 3))

    accepted = run(system, tau=-INF)
    assert calls(accepted)["target"] == 5                              # only block 0
    assert calls(accepted, 0)["drafter"] == 0                          # block 0 is not drafted
    assert all(calls(accepted, b) == {"drafter": 6, "target": 0, "router": 1, "vae_decode": 1,
                                      "vae_encode": int(b >= 2)} for b in (1, 2, 3))

    rejected = run(system, tau=INF)
    for b in (1, 2, 3):  # the draft, then one target context pass + 5 passes and a second decode
        assert calls(rejected, b) == {"drafter": 6, "target": 1 + 5, "router": 1, "vae_decode": 2,
                                      "vae_encode": int(b >= 2)}

    draft_only = run(system, mode="draft_only")
    assert calls(draft_only)["target"] == 0 and calls(draft_only)["router"] == 0
    assert calls(draft_only, 0)["drafter"] == 5


def test_hybrid_resume_runs_five_minus_k_target_passes(system):
    for k in (1, 3, 4):
        result = run(system, tau=INF, hybrid_k=k)
        assert calls(result, 0)["target"] == 5                         # block 0 stays pure target
        assert all(calls(result, b)["target"] == 1 + 5 - k for b in (1, 2, 3))
    pure = run(system, tau=INF)
    hybrid = run(system, tau=INF, hybrid_k=3)
    assert torch.equal(pure.latents[:, :3], hybrid.latents[:, :3])
    assert not torch.equal(pure.latents[:, 3:6], hybrid.latents[:, 3:6])


def test_same_seed_same_video_and_decisions(system):
    pattern = (True, False, True)
    a = run(system, accept_pattern=pattern)
    b = SDVGSession(**system.session_kwargs(), config=replace(BASE, accept_pattern=pattern)).run()
    assert torch.equal(a.frames, b.frames)
    assert [x.decision for x in a.blocks] == [x.decision for x in b.blocks] == \
        ["target", "accepted", "rejected", "accepted"]
    assert [x.scores for x in a.blocks] == [x.scores for x in b.blocks]
    c = run(system, accept_pattern=pattern, seed=6)
    assert not torch.equal(a.frames, c.frames)


def test_accept_pattern_forces_decisions_while_the_router_still_runs(system):
    result = run(system, tau=INF, accept_pattern=(True,))
    assert [b.decision for b in result.blocks[1:]] == ["accepted"] * 3
    assert all(b.model_calls["router"] == 1 and len(b.scores) == 12 for b in result.blocks[1:])


def test_interrupt_from_the_progress_callback_leaves_no_corrupted_state(system):
    fresh = run(system, accept_pattern=(False, True))

    def explode(event):
        if event.block == 2:
            raise KeyboardInterrupt("user pressed cancel")

    session = SDVGSession(**system.session_kwargs(), config=replace(BASE, accept_pattern=(False, True)),
                          on_block=explode)
    with pytest.raises(KeyboardInterrupt):
        session.run()
    session.on_block = None
    again = session.run()
    assert torch.equal(again.frames, fresh.frames)
    assert [b.decision for b in again.blocks] == [b.decision for b in fresh.blocks]


def test_interrupt_between_model_calls(system):
    count = {"n": 0}

    def check():
        count["n"] += 1
        if count["n"] == 9:
            raise InterruptedError("processing interrupted")

    session = SDVGSession(**system.session_kwargs(), config=replace(BASE, tau=INF), check_interrupt=check)
    with pytest.raises(InterruptedError):
        session.run()
    session.check_interrupt = lambda: None
    assert torch.equal(session.run().frames, run(system, tau=INF).frames)


def test_steps_one_by_one_equal_run_and_refuse_wrong_order(system):
    config = replace(BASE, accept_pattern=(True, False))
    session = SDVGSession(**system.session_kwargs(), config=config)
    with pytest.raises(SDVGError, match="out of order"):
        session.step("verify", 0)
    for b in range(BASE.num_blocks):
        assert session.next_step == (b, "draft")
        session.step("draft", b)
        assert session.next_step == (b, "verify")
        with pytest.raises(SDVGError, match="out of order"):
            session.step("commit", b)
        with pytest.raises(SDVGError, match="out of order"):
            session.step("verify", b + 1)
        decision = session.step("verify", b)
        assert decision == ("target" if b == 0 else ["accepted", "rejected"][(b - 1) % 2])
        session.step("regenerate", b)
        stats = session.step("commit", b)
        assert stats.block == b and stats.decision == decision
    assert session.done and session.next_step is None
    with pytest.raises(SDVGError, match="committed"):
        session.step("draft", BASE.num_blocks)
    assert torch.equal(session.result().frames, run(system, accept_pattern=(True, False)).frames)


def test_a_step_that_failed_asks_for_a_reset(system):
    calls = {"n": 0}

    def fail_once():  # the 4th check is inside the target's first pass (block 0's regenerate step)
        calls["n"] += 1
        if calls["n"] == 4:
            raise InterruptedError("cancelled")

    session = SDVGSession(**system.session_kwargs(), config=replace(BASE, tau=-INF), check_interrupt=fail_once)
    session.step("draft")
    with pytest.raises(InterruptedError):
        while True:
            session.step(session.next_step[1])
    with pytest.raises(SDVGError, match="reset"):
        session.step(session.next_step[1])
    session.reset()
    assert session.next_step == (0, "draft")


def test_output_frames_and_drop_option(system):
    kept = run(system, tau=-INF, drop_first_frames=False)
    dropped = run(system, tau=-INF)
    assert kept.frames.shape == (9 + 12 * 3, BASE.height, BASE.width, 3)
    assert torch.equal(dropped.frames, kept.frames[3:])
    assert 0 <= float(kept.frames.min()) and float(kept.frames.max()) <= 1
    assert kept.latents.shape == (1, 12, 16, BASE.height // 8, BASE.width // 8)
    assert [b.pixel_frames for b in kept.blocks] == [9, 12, 12, 12]


def test_first_block_drafted_when_the_rule_is_off(system):
    result = run(system, tau=-INF, force_target_first=False)
    assert result.blocks[0].decision == "accepted"
    assert calls(result, 0)["drafter"] == 5 and calls(result)["target"] == 0


def test_cascade_scores_a_subset_first(system):
    early_reject = run(system, tau=INF, cascade=True)
    assert all(b.scoring == "cascade_reject" and len(b.scores) == 4 for b in early_reject.blocks[1:])
    early_accept = run(system, tau=-INF, cascade=True)
    assert all(b.scoring == "cascade_accept" for b in early_accept.blocks[1:])
    # Undecided by the subset: tau just below the subset minimum, inside the margin.
    full = run(system, tau=-INF)
    tau = min(full.blocks[1].scores) - 1e-4
    mixed = run(system, tau=tau, cascade=True, cascade_margin=10.0, num_blocks=2)
    assert mixed.blocks[1].scoring == "cascade_full" and len(mixed.blocks[1].scores) == 12
    assert mixed.blocks[1].model_calls["router"] == 2


def test_uniform_skip_never_skips_block_one_or_two_in_a_row(system):
    result = run(system, tau=-INF, skip="uniform", skip_every=2, num_blocks=6)
    decisions = [b.decision for b in result.blocks]
    assert decisions == ["target", "accepted", "skipped", "accepted", "skipped", "accepted"]
    skipped = [b for b in result.blocks if b.decision == "skipped"]
    assert all(b.model_calls["router"] == 0 and b.model_calls["vae_decode"] == 1 for b in skipped)
    assert result.summary["decisions"]["skipped"] == 2
    assert result.summary["scored_blocks"] == 3


def test_dynamic_skip_needs_margin_and_drafter_agreement(system):
    never = run(system, tau=-INF, skip="dynamic", skip_margin=INF)
    assert "skipped" not in [b.decision for b in never.blocks]
    always = run(system, tau=-INF, skip="dynamic", skip_margin=0.0, skip_cosine=-1.0, num_blocks=6)
    assert [b.decision for b in always.blocks] == ["target", "accepted", "skipped", "accepted",
                                                    "skipped", "accepted"]
    strict = run(system, tau=-INF, skip="dynamic", skip_margin=0.0, skip_cosine=1.1)
    assert "skipped" not in [b.decision for b in strict.blocks]
    assert all(-1 <= b.draft_agreement <= 1 for b in strict.blocks[1:])


def test_bad_configuration_fails_before_any_model_runs(system):
    for changes, word in (({"width": 100}, "width 100"), ({"height": 40}, "height 40"),
                          ({"hybrid_k": 5}, "hybrid_k"), ({"mode": "fast"}, "mode"),
                          ({"cascade": True, "aggregation": "mean"}, "cascade"),
                          ({"tau": float("nan")}, "NaN")):
        with pytest.raises(InputError, match=word):
            SDVGSession(**system.session_kwargs(), config=replace(BASE, **changes))
    kwargs = system.session_kwargs()
    with pytest.raises(InputError, match="target"):
        SDVGSession(**dict(kwargs, target=None), config=BASE)
    other = tiny_wan(WanConfig.tiny(dim=64, num_layers=1, text_dim=48), 0)
    with pytest.raises(IncompatibleModelsError, match="text_dim"):
        SDVGSession(**dict(kwargs, target=other), config=BASE)


def test_nan_from_a_model_is_named(system):
    bad = tiny_wan(system.target.cfg, 0)
    with torch.no_grad():
        bad.head.head.bias.fill_(float("nan"))
    session = SDVGSession(**dict(system.session_kwargs(), target=bad), config=BASE)
    with pytest.raises(SDVGError, match="target.*NaN"):
        session.run()


def test_progress_events_carry_stats_and_a_preview(system):
    events = []
    session = SDVGSession(**system.session_kwargs(), config=replace(BASE, tau=-INF),
                          on_block=events.append)
    session.run()
    assert [e.block for e in events] == [0, 1, 2, 3]
    assert events[0].stats.decision == "target"
    assert events[-1].preview.shape == (BASE.height, BASE.width, 3)
    assert all(e.num_blocks == 4 for e in events)


def test_fast_preprocessing_scores_close_to_the_exact_path(system):
    exact = run(system, tau=-INF)
    fast = run(system, tau=-INF, exact_preprocess=False)
    assert torch.equal(exact.latents, fast.latents)  # all accepted: same blocks, scored twice
    for a, b in zip(exact.blocks[1:], fast.blocks[1:]):
        assert len(b.scores) == 12
        torch.testing.assert_close(torch.tensor(b.scores), torch.tensor(a.scores), rtol=0, atol=0.05)
