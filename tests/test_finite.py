"""NaN and Inf are errors, caught where they are made, naming the component, the block and the
likely causes for that component and dtype; and bad knobs (types) are refused with their name."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError, NumericalError
from sdvg_core.finite import check_finite, likely_causes
from sdvg_core.speculative import SDVGSession
from sdvg_core.text import pad_text
from sdvg_core.tiny import build_tiny_system, tiny_wan

BASE = SDVGConfig(width=32, height=16, num_blocks=3, seed=5, tau=float("-inf"))


@pytest.fixture()
def system():
    return build_tiny_system(seed=0)


def poison(module: torch.nn.Module, value: float) -> None:
    """Put ``value`` into the first weight of the module's last conv or linear layer."""
    layer = [m for m in module.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))][-1]
    with torch.no_grad():
        layer.weight.view(-1)[0] = value


@pytest.mark.parametrize("mode", ["sdvg", "target_only"])
def test_a_nan_in_the_vae_stops_block_zero_and_blames_the_vae(system, mode):
    poison(system.vae.vae.decoder, float("nan"))
    with pytest.raises(NumericalError) as error:
        SDVGSession(**system.session_kwargs(), config=replace(BASE, mode=mode)).run()
    message = str(error.value)
    assert "the VAE produced NaN in block 0" in message and "float32" in message
    assert "drafter" not in message.split("(")[0] and "VAE weights" in message


def test_an_inf_in_the_vae_is_caught_before_the_clamp_would_hide_it(system):
    layer = [m for m in system.vae.vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        layer.bias.fill_(float("inf"))
    with pytest.raises(NumericalError, match="the VAE produced Inf in block 0"):
        SDVGSession(**system.session_kwargs(), config=BASE).run()


def test_the_last_block_is_checked_too(system):
    def break_the_vae(event):
        if event.block == BASE.num_blocks - 2:
            poison(system.vae.vae.decoder, float("nan"))

    session = SDVGSession(**system.session_kwargs(), config=BASE, on_block=break_the_vae)
    with pytest.raises(NumericalError, match=f"the VAE produced NaN in block {BASE.num_blocks - 1}"):
        session.run()


def test_a_nan_in_the_targets_float32_weights_is_not_called_an_overflow(system):
    target = tiny_wan(system.target.cfg, 0)
    poison(target, float("nan"))
    target.source = "krea-realtime-video-14b.safetensors"
    session = SDVGSession(**dict(system.session_kwargs(), target=target), config=BASE)
    with pytest.raises(NumericalError) as error:
        session.run()
    message = str(error.value)
    assert "the target (Wan DiT) produced NaN in block 0" in message and "float32" in message
    assert "krea-realtime-video-14b.safetensors" in message and "hold NaN/Inf" in message
    assert "float16 overflows" not in message


def test_likely_causes_follow_the_component_and_dtype():
    assert "float16 overflows" in likely_causes("target", torch.float16)
    assert "float16 overflows" not in likely_causes("target", torch.bfloat16)
    assert "VAE" in likely_causes("vae", torch.float32) and "fp32" in likely_causes("router", torch.bfloat16)
    with pytest.raises(NumericalError, match="the drafter .*produced NaN/Inf in block 4"):
        check_finite(torch.tensor([float("nan"), float("inf")]), "drafter", 4, dtype=torch.float16)


def test_a_router_whose_scores_are_nan_is_named(system):
    class BrokenScorer:
        def score(self, frames, prompt):
            return torch.full((frames.shape[0],), float("nan"))

    session = SDVGSession(**dict(system.session_kwargs(), scorer=BrokenScorer()), config=replace(BASE, tau=0.0))
    with pytest.raises(NumericalError, match="router: frame scores contain NaN"):
        session.run()


@pytest.mark.parametrize("field, value", [("num_blocks", 2.5), ("seed", 1.5), ("seed", -1), ("width", "832"),
                                          ("hybrid_k", True), ("tau", "high")])
def test_knobs_of_the_wrong_type_are_named(system, field, value):
    with pytest.raises(InputError, match=field):
        SDVGSession(**system.session_kwargs(), config=replace(BASE, **{field: value}))


def test_a_text_embedding_longer_than_wan_reads_warns_once(caplog):
    long = torch.randn(1, 600, 8)
    with caplog.at_level("WARNING", logger="sdvg"):
        assert pad_text(long).shape == (1, 512, 8)
        pad_text(torch.cat([torch.randn(1, 20, 8), torch.zeros(1, 580, 8)], dim=1))  # padding only: quiet
    assert [r.getMessage() for r in caplog.records if "600 tokens" in r.getMessage()] and len(caplog.records) == 1
