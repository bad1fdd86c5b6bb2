"""The inputs the SDVG Sampler and SDVG Begin share, and the SDVGConfig they make."""

from __future__ import annotations

from sdvg_core.config import AGGREGATIONS, MAX_SEED, MODES, SKIP_POLICIES, SDVGConfig

TAU_MIN, TAU_MAX = -3.0, 2.0

TAU_TOOLTIP = (
    "Routing threshold on the ImageReward score of a drafted block's worst frame. A draft is "
    "kept when its score >= tau; otherwise the target regenerates the block. Lower tau keeps "
    "more drafts: faster, slightly lower quality. Paper (Krea 14B target, 1.3B drafter): "
    "-0.7 -> 1.59x at 98.1% quality, -1.5 -> 1.88x, -2.5 -> 2.09x at 95.7%. After a run the "
    "node shows the accept rate the logged scores would give at the slider's value.")
PROMPT_TOOLTIP = (
    "The prompt text. ImageReward scores every drafted frame against it, so it must be the "
    "text you encoded into 'positive' (connect one String node to both to be sure).")


def model_inputs() -> dict:
    """The four models and the text, as the sampler and SDVG Begin take them."""
    return {
        "drafter": ("MODEL", {"tooltip": "The small Wan 2.1 model that drafts every block: Load Drafter "
            "(Self-Forcing 1.3B), or any Wan 2.1 T2V MODEL (core's Load Diffusion Model, a GGUF loader, "
            "LoRA loaders in between)."}),
        "target": ("MODEL", {"tooltip": "The large Wan 2.1 model that regenerates rejected blocks: Load "
            "Target (Krea Realtime 14B), or any Wan 2.1 T2V MODEL of the same family."}),
        "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE, from core's Load VAE (wan_2.1_vae.safetensors)."}),
        "router": ("SDVG_ROUTER", {"tooltip": "From Load ImageReward Router."}),
        "positive": ("CONDITIONING", {"tooltip":
            "The prompt embedding: CLIPTextEncode with a CLIPLoader of type 'wan' (umT5-XXL)."}),
        "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
    }


def video_inputs() -> dict:
    """Size, length, seed and the routing knobs (widget order is the workflows' order)."""
    return {
        "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip":
            "Pixels; a multiple of 16 (VAE stride 8 x patch 2). The models were trained at 832x480."}),
        "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip":
            "Pixels; a multiple of 16."}),
        "num_blocks": ("INT", {"default": 9, "min": 1, "max": 128, "tooltip":
            "Blocks of 3 latent frames: block 0 gives 9 pixel frames, every later block 12."}),
        "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED, "control_after_generate": True,
            "tooltip": "Seed of the initial noise; drafter and target share it."}),
        "tau": ("FLOAT", {"default": -0.7, "min": TAU_MIN, "max": TAU_MAX, "step": 0.05,
            "round": 0.01, "display": "slider", "tooltip": TAU_TOOLTIP}),
        "aggregation": (list(AGGREGATIONS), {"default": "min", "tooltip":
            "How the frame scores of a block become one: min (the paper: worst frame), mean, "
            "or the 10% quantile."}),
        "hybrid_k": ("INT", {"default": 0, "min": 0, "max": 4, "tooltip":
            "0: a rejected block is regenerated from noise by the target. k>0: the target resumes "
            "from the drafter's latent at step k (k=3 runs only the last 2 target passes)."}),
        "skip": (list(SKIP_POLICIES), {"default": "none", "tooltip":
            "Verification skipping: none scores every draft; uniform skips the router on every "
            "2nd block; dynamic skips it when the previous block cleared tau by 0.5 and the "
            "drafter's last two estimates agree."}),
        "drop_first_frames": ("BOOLEAN", {"default": True, "tooltip":
            "Drop block 0's first 3 pixel frames, as the reference code does."}),
        "mode": (list(MODES), {"default": "sdvg", "tooltip":
            "sdvg: speculative decoding. target_only / draft_only: the baselines, for a side-by-side "
            "comparison with the same seed; they run only the model they need."}),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.05, "tooltip":
            "Video-to-video (with an input 'video'): how far each input block is noised. 1 = text-to-video "
            "(the input is ignored); lower keeps more of the input: 0.75 runs 4 passes a block, 0.5 three, "
            "0.25 two."}),
    }


def optional_inputs() -> dict:
    return {"video": ("IMAGE", {"tooltip":
        "Video-to-video: input frames at width x height, at least 12 x num_blocks - 3 of them (Load Video "
        "-> Get Video Components). Used when strength < 1."})}


def make_config(*, width, height, num_blocks, seed, tau, aggregation, hybrid_k, skip,
                drop_first_frames, mode="sdvg", strength=1.0, **_ignored) -> SDVGConfig:
    """The validated config; raises InputError (e.g. a size not divisible by 16) before any model runs."""
    return SDVGConfig(
        mode=mode, tau=float(tau), aggregation=aggregation, width=int(width), height=int(height),
        num_blocks=int(num_blocks), seed=int(seed), hybrid_k=int(hybrid_k), skip=skip,
        drop_first_frames=bool(drop_first_frames), strength=float(strength),
    ).validate()
