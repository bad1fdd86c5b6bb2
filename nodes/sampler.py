"""SDVG Sampler: the whole speculative video in one node."""

from __future__ import annotations

from . import session as sdvg
from .settings import make_config, model_inputs, optional_inputs, video_inputs


class SDVGSampler:
    """Drafts every block with the small model, keeps the drafts ImageReward scores at or
    above tau, and lets the large model regenerate the rest."""

    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("frames", "latent", "stats_json", "timeline")
    OUTPUT_TOOLTIPS = (
        "Video frames (connect to Create Video -> Save Video).",
        "Wan 2.1 latents [1, 16, F, h, w], decodable by VAE Decode with the Wan 2.1 VAE.",
        "Per-block decisions, scores, model calls and seconds, as JSON.",
        "Timeline: one column per block coloured by decision, scores against tau.",
    )
    FUNCTION = "sample"
    CATEGORY = "SDVG"
    DESCRIPTION = ("Speculative decoding for block-autoregressive video: a 1.3B drafter "
                   "proposes each block, ImageReward accepts or rejects it, the 14B target "
                   "regenerates rejected blocks.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**sdvg_inputs()}, "optional": optional_inputs(), "hidden": {"unique_id": "UNIQUE_ID"}}

    def sample(self, drafter, target, vae, router, positive, prompt, unique_id=None, video=None, **settings):
        config = make_config(**settings)  # size errors surface here, before any model runs
        session, _ = sdvg.start_session(drafter=drafter, target=target, vae=vae, router=router,
                                        positive=positive, prompt=prompt, config=config, video=video,
                                        node_id=unique_id)
        try:
            result = session.run()
        finally:
            session.release()  # the KV caches are invisible to ComfyUI's memory manager
        return sdvg.outputs(result, config, prompt, unique_id)


def sdvg_inputs() -> dict:
    """Model inputs first, then the widgets, in the order the workflows store them."""
    return {**model_inputs(), **video_inputs()}
