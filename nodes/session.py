"""Starting an SDVG session from node inputs, reporting its blocks, and turning its result
into ComfyUI outputs. Shared by the composite sampler and the modular nodes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError
from sdvg_core.memory import session_plan
from sdvg_core.prompts import PromptSchedule, Segment, format_schedule
from sdvg_core.speculative import BlockEvent, SDVGResult, SDVGSession, check_input_video
from sdvg_core.text import pad_text
from sdvg_core.timeline import render_timeline
from sdvg_core.vae import to_raw_latents
from sdvg_core.wan import check_compatible

from . import host
from .models import RouterModel, patcher_of, vae_stream, wan_network
from .prompt import PROMPT_KEY, SEGMENT_KEY

BLOCK_EVENT = "sdvg.block"          # websocket message the web/ extension listens for
UI_BLOCKS = "sdvg_blocks"           # key of the blocks in a node's "ui" output
TIMELINE_SIZE = (768, 256)


@dataclass
class HostModels:
    """The models a session uses, as ComfyUI's model management sees them, and the room it
    must keep free beside them (the caches and activations it cannot see)."""

    patchers: list
    memory_required: int

    def ensure_loaded(self) -> None:
        """Before every model call that may follow other nodes: ComfyUI may have moved things."""
        host.load_models(self.patchers, memory_required=self.memory_required)


def start_session(*, drafter, target, vae, router, positive, prompt: str, config: SDVGConfig,
                  video=None, node_id: str | None = None) -> tuple[SDVGSession, HostModels]:
    """Check the inputs, bring the models onto their devices, open a session.

    Everything that can be checked without running a model is checked first: the prompt, that
    each MODEL holds a Wan 2.1 T2V DiT, that drafter and target work together, the VAE and router.
    Baseline modes leave the models they never call where they are.
    """
    config.validate()
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(
            "prompt is empty: ImageReward needs the prompt text to score drafts. Type the text "
            "you encoded into 'positive' (or feed both from one String node).")
    needed = config.models
    inputs = {"drafter": drafter, "target": target}
    networks = {role: wan_network(inputs[role], role) for role in ("drafter", "target") if role in needed}
    if len(networks) == 2:
        check_compatible(networks["drafter"], networks["target"])
    if "router" in needed and not isinstance(router, RouterModel):
        raise InputError(f"router: expected the output of Load ImageReward Router, got {type(router).__name__}.")
    stream = vae_stream(vae)
    prompts = prompt_schedule(positive, prompt, next(iter(networks.values())).cfg.text_dim)
    prompts.check(config.num_blocks)
    if config.strength < 1:
        check_input_video(video, config)
    # What ComfyUI cannot see beside the weights it places: caches and activations (sdvg_core/memory.py).
    # Even with every weight streamed from the CPU this much must fit: checked before loading.
    device = host.compute_device()
    plan = session_plan(config, device=device, compute_dtype=next(iter(networks.values())).compute_dtype,
                        vae_dtype=stream.dtype, weights=False, prompts=len(prompts.segments),
                        **{role: network.cfg for role, network in networks.items()})
    plan.check(host.total_memory(device), what="SDVG beside its models")
    used = [inputs[role] for role in networks] + [vae] + ([router] if "router" in needed else [])
    models = HostModels([patcher_of(m) for m in used], plan.beside_weights)
    models.ensure_loaded()
    # After loading: ComfyUI may have patched a model's compute dtype.
    networks = {role: wan_network(inputs[role], role) for role in networks}
    session = SDVGSession(
        drafter=networks.get("drafter"), target=networks.get("target"), vae=stream,
        scorer=router.scorer if "router" in needed else None, prompts=prompts, video=video, config=config,
        on_block=block_reporter(node_id), check_interrupt=host.check_interrupt)
    return session, models


def prompt_schedule(positive, prompt: str, text_dim: int) -> PromptSchedule:
    """The video's prompts: one (CLIPTextEncode / SDVG Encode Prompt), or the segments of SDVG
    Prompt Schedule, whose CONDITIONING entries carry their first block and prompt."""
    entries = positive if isinstance(positive, (list, tuple)) else []
    tagged = [e for e in entries if isinstance(e, (list, tuple)) and len(e) > 1 and isinstance(e[1], dict)
              and SEGMENT_KEY in e[1]]
    if not tagged:
        return PromptSchedule.single(prompt, pad_text(positive, dim=text_dim))
    segments = [Segment(e[1][SEGMENT_KEY], e[1][PROMPT_KEY], pad_text([e], dim=text_dim)) for e in tagged]
    schedule = format_schedule([(s.first_block, s.prompt) for s in segments])
    if prompt.strip() != schedule:
        raise InputError("prompt does not match the prompt schedule in 'positive': connect SDVG Prompt Schedule's "
                         "'prompt' output to the sampler's 'prompt' too.")
    return PromptSchedule(segments)


def block_payload(stats, num_blocks: int, node_id: str | None) -> dict:
    """What the web timeline needs of one committed block (JSON-safe). The tau is the block's own,
    as in stats.json: None for a block the router did not judge."""
    d = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    return {
        "node": node_id, "block": d["block"], "num_blocks": num_blocks, "tau": d.get("tau"),
        "decision": d["decision"], "aggregate": d.get("aggregate"),
        "scores": list(d.get("scores") or []), "scoring": d.get("scoring"), "prompt": d.get("prompt"),
        "seconds": (d.get("seconds") or {}).get("total"),
    }


def to_pil(frame: torch.Tensor) -> Image.Image:
    """[H, W, 3] float 0..1 -> PIL RGB."""
    return Image.fromarray((frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def block_reporter(node_id: str | None):
    """The session's on_block: progress bar with a preview, and the live timeline message."""
    def report(event: BlockEvent) -> None:
        host.progress(event.block + 1, event.num_blocks, to_pil(event.preview))
        host.send(BLOCK_EVENT, block_payload(event.stats, event.num_blocks, node_id))
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
    blocks = [block_payload(b, len(result.blocks), node_id) for b in result.blocks]
    return {
        "ui": {UI_BLOCKS: blocks},
        "result": (frames, latent_output(result), stats_json(result, config, prompt),
                   timeline_image(result.blocks, config.tau)),
    }
