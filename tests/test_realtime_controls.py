"""Prompt schedules (prompt travel) and video-to-video: two more inputs of the same block loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError
from sdvg_core.prompts import PromptSchedule, Segment, parse_schedule
from sdvg_core.schedule import NUM_STEPS, start_step_for
from sdvg_core.speculative import SDVGSession
from sdvg_core.tiny import build_tiny_system, tiny_text

INF = float("inf")
BASE = SDVGConfig(width=32, height=16, num_blocks=4, seed=5, accept_pattern=(True, False))
SECOND = "the red fox leaps into a snowdrift"


@pytest.fixture(scope="module")
def system():
    return build_tiny_system(seed=0)


class RecordingScorer:
    """Wraps a scorer and records the prompt of every call."""

    def __init__(self, scorer):
        self.scorer, self.prompts = scorer, []

    def score(self, frames, prompt, **options):
        self.prompts.append(prompt)
        return self.scorer.score(frames, prompt, **options)


def count_encodings(model, monkeypatch) -> list:
    seen = []
    real = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda text: seen.append(text) or real(text))
    return seen


def two_segments(system, switch=2):
    return PromptSchedule([Segment(0, system.prompt, system.text), Segment(switch, SECOND, tiny_text(SECOND))])


def run(system, config=BASE, **kwargs):
    parts = system.session_kwargs()
    if "prompts" in kwargs:  # a schedule instead of the one prompt
        del parts["text"], parts["prompt"]
    return SDVGSession(**{**parts, **kwargs}, config=config).run()


# ----------------------------------------------------------------------------- prompt schedules


def test_a_one_segment_schedule_is_todays_video(system):
    single = run(system)
    scheduled = run(system, prompts=PromptSchedule.single(system.prompt, system.text))
    assert torch.equal(single.frames, scheduled.frames) and torch.equal(single.latents, scheduled.latents)
    assert [b.prompt for b in scheduled.blocks] == [system.prompt] * BASE.num_blocks


def test_the_text_switches_exactly_at_its_block(system, monkeypatch):
    encodings = {role: count_encodings(getattr(system, role), monkeypatch) for role in ("drafter", "target")}
    scorer = RecordingScorer(system.scorer)
    result = run(system, prompts=two_segments(system, switch=2), scorer=scorer)
    # Each model encodes each prompt once, when it first needs it (the target runs block 0 and
    # the rejected block 2; the drafter drafts blocks 1-3).
    assert [t.shape[1] for t in encodings["target"]] == [16, 16] and len(encodings["drafter"]) == 2
    assert torch.equal(encodings["drafter"][1].cpu(), tiny_text(SECOND))
    assert scorer.prompts == [system.prompt, SECOND, SECOND]          # blocks 1, 2, 3
    assert [b.prompt for b in result.blocks] == [system.prompt] * 2 + [SECOND] * 2
    single = run(system)
    assert torch.equal(result.latents[:, :6], single.latents[:, :6]), "blocks before the switch are unchanged"
    assert not torch.equal(result.latents[:, 6:], single.latents[:, 6:]), "the new prompt conditions the rest"


def test_schedules_are_checked():
    text = tiny_text("a")
    with pytest.raises(InputError, match="start at block 0"):
        PromptSchedule([Segment(1, "a", text)])
    with pytest.raises(InputError, match="same block"):
        PromptSchedule([Segment(0, "a", text), Segment(0, "b", text)])
    with pytest.raises(InputError, match=r"block\(s\) \[7\].*4 blocks"):
        PromptSchedule([Segment(0, "a", text), Segment(7, "b", text)]).check(4)
    assert parse_schedule("# prompt travel\n0: a fox\n\n 4 : the fox leaps \n") == [(0, "a fox"), (4, "the fox leaps")]
    with pytest.raises(InputError, match="line 2.*'BLOCK: prompt'"):
        parse_schedule("0: a fox\nthe fox leaps")


# ----------------------------------------------------------------------------- video-to-video


@pytest.fixture(scope="module")
def input_video(system):
    """A 4-block video at the test size, as an IMAGE: the input of video-to-video."""
    return run(system, replace(BASE, drop_first_frames=False, seed=11)).frames


def calls(result, component):
    return [b.model_calls[component] for b in result.blocks]


@pytest.mark.parametrize("strength, passes", [(0.9, 4), (0.75, 4), (0.5, 3), (0.3, 2), (0.1, 1)])
def test_strength_skips_the_passes_above_it(strength, passes):
    assert NUM_STEPS - start_step_for(strength) == passes


def test_strength_one_is_text_to_video_bit_for_bit(system, input_video):
    t2v = run(system)
    assert torch.equal(run(system, replace(BASE, strength=1.0), video=input_video).frames, t2v.frames)


@pytest.mark.parametrize("strength, passes", [(0.5, 3), (0.25, 2)])
def test_strength_runs_the_documented_passes_per_block(system, input_video, strength, passes):
    result = run(system, replace(BASE, mode="target_only", strength=strength), video=input_video)
    assert calls(result, "target") == [passes] + [1 + passes] * (BASE.num_blocks - 1)  # + the context pass
    assert calls(result, "vae_decode") == [1] * BASE.num_blocks
    sdvg = run(system, replace(BASE, strength=strength, accept_pattern=(False,)), video=input_video)
    assert calls(sdvg, "drafter")[1:] == [1 + passes] * (BASE.num_blocks - 1)
    assert calls(sdvg, "target")[1:] == [1 + passes] * (BASE.num_blocks - 1)


def test_video_to_video_keeps_the_input_and_tau_inf_is_target_only(system, input_video):
    low = replace(BASE, strength=0.3)
    rejected_all = run(system, replace(low, tau=INF, accept_pattern=None), video=input_video)
    target_only = run(system, replace(low, mode="target_only", accept_pattern=None), video=input_video)
    assert torch.equal(rejected_all.frames, target_only.frames) and torch.equal(rejected_all.latents, target_only.latents)
    # The lowest strength runs only the t = 0 pass on the input's latents noised to sigma 0.005: even
    # random weights keep them (random VAEs do not reconstruct pixels, so compare latents).
    session = SDVGSession(**system.session_kwargs(), video=input_video,
                          config=replace(low, mode="target_only", accept_pattern=None, strength=0.1))
    faithful = session.run()
    t2v = run(system, replace(BASE, mode="target_only", accept_pattern=None))
    near = (faithful.latents - session.input_latents).norm() / session.input_latents.norm()
    far = (t2v.latents - session.input_latents).norm() / session.input_latents.norm()
    assert near < 0.05 and far > 0.5, "a low strength keeps the input video"


def test_hybrid_resume_on_video_to_video_starts_at_the_later_step(system, input_video):
    config = replace(BASE, strength=0.5, hybrid_k=4, accept_pattern=(False,))
    result = run(system, config, video=input_video)
    assert calls(result, "target")[1:] == [1 + 1] * (BASE.num_blocks - 1)  # resumes at k = 4: one pass
    shallow = run(system, replace(config, hybrid_k=1), video=input_video)  # k below the strength's start
    assert calls(shallow, "target")[1:] == [1 + 3] * (BASE.num_blocks - 1)


def test_inputs_that_do_not_fit_are_named(system, input_video):
    v2v = replace(BASE, strength=0.5)
    with pytest.raises(InputError, match="needs an input video"):
        run(system, v2v)
    with pytest.raises(InputError, match=r"has 30 frames; 4 blocks need 45.*at most 2 blocks"):
        run(system, v2v, video=input_video[:30])
    with pytest.raises(InputError, match=r"is 32x16.*48x16.*Upscale Image"):
        run(system, replace(v2v, width=48), video=input_video)
    with pytest.raises(InputError, match="strength"):
        replace(BASE, strength=0.0).validate()
