"""Starting an SDVG session from node inputs, reporting its blocks, and turning its result
into ComfyUI outputs. Shared by the composite sampler and the modular nodes."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image

from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError
from sdvg_core.runner import cache_bytes
from sdvg_core.speculative import BlockEvent, SDVGResult, SDVGSession
from sdvg_core.text import pad_text
from sdvg_core.timeline import render_timeline
from sdvg_core.vae import to_raw_latents

from . import host
from .loaders import LoadedModel

BLOCK_EVENT = "sdvg.block"          # websocket message the web/ extension listens for
UI_BLOCKS = "sdvg_blocks"           # key of the blocks in a node's "ui" output
TIMELINE_SIZE = (768, 256)
_ACTIVATION_MARGIN = 1.25           # KV caches are most of the extra memory; keep headroom


def start_session(*, drafter: LoadedModel, target: LoadedModel, vae: LoadedModel,
                  router: LoadedModel, positive, prompt: str, config: SDVGConfig,
                  node_id: str | None = None) -> SDVGSession:
    """Check the inputs, bring the models onto the compute device and open a session.

    The session gets its own shallow copy of the VAE: the decode stream state lives on that
    object, so two sessions sharing one loaded VAE cannot disturb each other.
    """
    config.validate()
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(
            "prompt is empty: ImageReward needs the prompt text to score drafts. Type the text "
            "you encoded into 'positive' (or feed both from one String node).")
    for name, value, role in (("drafter", drafter, "drafter"), ("target", target, "target"),
                              ("vae", vae, "vae"), ("router", router, "router")):
        if not isinstance(value, LoadedModel) or value.role != role:
            raise InputError(f"{name}: expected the output of the SDVG {role} loader, got {value!r}.")
    text = pad_text(positive, dim=drafter.engine.cfg.text_dim)
    # Baseline modes leave the models they never call where they are.
    needed = config.models | {"vae"}
    ensure_loaded([m for m in (drafter, target, vae, router) if m.role in needed], config)
    use = lambda m: m.engine if m.role in needed else None  # noqa: E731
    return SDVGSession(
        drafter=use(drafter), target=use(target), vae=copy.copy(vae.engine),
        scorer=use(router), text=text, prompt=prompt, config=config,
        on_block=block_reporter(node_id, config), check_interrupt=host.check_interrupt)


def ensure_loaded(models, config: SDVGConfig) -> None:
    """Through ComfyUI's model management: offload other models, keep room for the caches."""
    wan = [m.engine for m in models if m.role in ("drafter", "target")]
    extra = sum(cache_bytes(m.cfg, config.latent_hw, m.compute_dtype) for m in wan) * _ACTIVATION_MARGIN
    host.load_models([m.patcher for m in models], memory_required=int(extra))


def block_payload(stats, tau: float, num_blocks: int, node_id: str | None) -> dict:
    """What the web timeline needs of one committed block (JSON-safe)."""
    d = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    return {
        "node": node_id, "block": d["block"], "num_blocks": num_blocks, "tau": tau,
        "decision": d["decision"], "aggregate": d.get("aggregate"),
        "scores": list(d.get("scores") or []), "scoring": d.get("scoring"),
        "seconds": (d.get("seconds") or {}).get("total"),
    }


def to_pil(frame: torch.Tensor) -> Image.Image:
    """[H, W, 3] float 0..1 -> PIL RGB."""
    return Image.fromarray((frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def block_reporter(node_id: str | None, config: SDVGConfig):
    """The session's on_block: progress bar with a preview, and the live timeline message."""
    def report(event: BlockEvent) -> None:
        host.progress(event.block + 1, event.num_blocks, to_pil(event.preview))
        host.send(BLOCK_EVENT, block_payload(event.stats, config.tau, event.num_blocks, node_id))
    return report


def latent_output(result: SDVGResult) -> dict:
    """ComfyUI's Wan LATENT: raw VAE latents [B, 16, F, h, w] (the core keeps them normalised
    [B, F, 16, h, w]; ComfyUI normalises inside its samplers and VAEDecode takes raw)."""
    return {"samples": to_raw_latents(result.latents).permute(0, 2, 1, 3, 4).contiguous()}


def timeline_image(blocks, tau: float) -> torch.Tensor:
    """The timeline as a ComfyUI IMAGE [1, H, W, 3]."""
    picture = render_timeline(blocks, tau, *TIMELINE_SIZE)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).unsqueeze(0)


def stats_json(result: SDVGResult, config: SDVGConfig, prompt: str) -> str:
    """stats.json: per-block decisions, scores, calls and seconds, the summary and the settings."""
    return json.dumps({**result.stats_dict(), "config": asdict(config), "prompt": prompt}, indent=2)


def outputs(result: SDVGResult, config: SDVGConfig, prompt: str, node_id=None) -> dict:
    """(frames IMAGE, LATENT, stats STRING, timeline IMAGE) plus the blocks for the web timeline."""
    frames = result.frames.float().cpu().contiguous()
    blocks = [block_payload(b, config.tau, len(result.blocks), node_id) for b in result.blocks]
    return {
        "ui": {UI_BLOCKS: blocks},
        "result": (frames, latent_output(result), stats_json(result, config, prompt),
                   timeline_image(result.blocks, config.tau)),
    }
