"""What a video should cost, predicted from what each component costs (the benchmark's bound).

Per video of N blocks (the paper: 9), with accept rate ``a`` over the N-1 scored blocks and
hybrid resume step ``k`` (0 = off), in the window-cache regime of docs/algorithm.md, section 2:

* block 0 is the target's in every mode but draft-only: 5 passes without context, decode;
* target-only, block b >= 1: target context pass + 5 target passes + decode;
* draft-only, block b >= 1: drafter context pass + 5 drafter passes + decode;
* sdvg, block b >= 1: drafter context + 5 drafter passes + decode + router, and on a reject
  (fraction 1 - a) the target's context pass + (5 - k) target passes + a second decode
  (the draft's decode is rolled back and the target's block decoded);
* every mode, blocks b >= 2: one VAE encode of the anchor frame.

Component seconds are PER BLOCK: ``target_block`` is all 5 denoising passes of one block
(a pass costs ``target_block / 5``, so a hybrid resume at step k costs ``(5-k)/5`` of it).
Block 0 attends only to itself (no context in the cache), so it is cheaper than a later
block; ``*_first`` keys give its own measured cost and default to the later-block cost.

Not modelled (measured in the benchmark as the gap between measured and predicted time):
the text's cross-attention keys (once per video per model, under 0.1% of a video at
832x480), Python and tensor bookkeeping between calls, and the conversion of frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import InputError
from .schedule import NUM_STEPS

REQUIRED_KEYS = ("target_context", "target_block", "drafter_context", "drafter_block",
                 "vae_decode_block", "router_block")
MODES = ("target_only", "draft_only", "sdvg")

# The paper's operating points (speedup over target-only, accept rate), for reference.
PAPER_POINTS = ((0.731, 1.59), (0.875, 2.05))


@dataclass(frozen=True)
class ComponentSeconds:
    """Seconds one component takes for one block (see the module docstring)."""

    target_context: float
    target_block: float
    drafter_context: float
    drafter_block: float
    vae_decode_block: float
    router_block: float
    target_block_first: float | None = None    # block 0: 5 passes, no context in the cache
    drafter_block_first: float | None = None   # block 0 of draft-only
    vae_decode_first: float | None = None      # block 0's decode (9 pixel frames, not 12)
    vae_encode_anchor: float = 0.0             # one anchor frame, blocks b >= 2

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise InputError(f"component_seconds.{f.name} must be a number >= 0 seconds, "
                                 f"got {value!r}.")

    @classmethod
    def from_dict(cls, data: dict, source: str = "component_seconds") -> "ComponentSeconds":
        """Read the ``component_seconds`` object of a benchmark JSON; extra keys are ignored."""
        if not isinstance(data, dict):
            raise InputError(f"{source} must be an object of seconds per component, got "
                             f"{type(data).__name__}.")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise InputError(f"{source} lacks {', '.join(missing)}: it is not the output of "
                             "`python -m sdvg_core bench`. Run the benchmark again.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def first_target(self) -> float:
        return self.target_block if self.target_block_first is None else self.target_block_first

    @property
    def first_drafter(self) -> float:
        return self.drafter_block if self.drafter_block_first is None else self.drafter_block_first

    @property
    def first_decode(self) -> float:
        return self.vae_decode_block if self.vae_decode_first is None else self.vae_decode_first


def video_breakdown(c: ComponentSeconds, mode: str, *, num_blocks: int = 9,
                    accept_rate: float | None = None, hybrid_k: int = 0,
                    num_steps: int = NUM_STEPS, skipped: float = 0.0) -> dict[str, float]:
    """Predicted seconds per component for one video: target, drafter, vae_decode, vae_encode, router.

    ``accept_rate`` is over the scored blocks (sdvg only): the ``num_blocks - 1`` later blocks
    less the ``skipped`` ones, which verification skipping accepts without the router;
    ``hybrid_k`` is the step a rejected block's target resumes at (0 = from noise).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}.")
    if num_blocks < 1:
        raise InputError(f"num_blocks must be at least 1, got {num_blocks}.")
    if not 0 <= hybrid_k < num_steps:
        raise InputError(f"hybrid_k must be in 0..{num_steps - 1}, got {hybrid_k}.")
    if mode == "sdvg" and (accept_rate is None or not 0.0 <= accept_rate <= 1.0):
        raise InputError(f"sdvg needs an accept_rate in [0, 1], got {accept_rate!r}.")

    later = num_blocks - 1
    cost = {"target": 0.0, "drafter": 0.0, "vae_decode": c.first_decode,
            "vae_encode": max(num_blocks - 2, 0) * c.vae_encode_anchor, "router": 0.0}
    if mode == "draft_only":
        cost["drafter"] = c.first_drafter + later * (c.drafter_context + c.drafter_block)
        cost["vae_decode"] += later * c.vae_decode_block
        return cost

    cost["target"] = c.first_target
    if mode == "target_only":
        cost["target"] += later * (c.target_context + c.target_block)
        cost["vae_decode"] += later * c.vae_decode_block
        return cost

    if not 0.0 <= skipped <= later:
        raise InputError(f"skipped must be in 0..{later} blocks, got {skipped}.")
    scored = later - skipped
    rejected = scored * (1.0 - accept_rate)
    resumed_passes = (num_steps - hybrid_k) / num_steps
    cost["drafter"] = later * (c.drafter_context + c.drafter_block)
    cost["router"] = scored * c.router_block
    cost["target"] += rejected * (c.target_context + resumed_passes * c.target_block)
    cost["vae_decode"] += (later + rejected) * c.vae_decode_block
    return cost


def video_seconds(c: ComponentSeconds, mode: str, **kwargs) -> float:
    """Predicted seconds for one whole video (the sum of ``video_breakdown``)."""
    return sum(video_breakdown(c, mode, **kwargs).values())


def predicted_speedup(c: ComponentSeconds, mode: str = "sdvg", *, num_blocks: int = 9,
                      accept_rate: float | None = None, hybrid_k: int = 0,
                      skipped: float = 0.0) -> float:
    """The bound: predicted target-only time over the predicted time of ``mode``."""
    baseline = video_seconds(c, "target_only", num_blocks=num_blocks)
    return baseline / video_seconds(c, mode, num_blocks=num_blocks, accept_rate=accept_rate,
                                    hybrid_k=hybrid_k, skipped=skipped)


# ---------------------------------------------------------------------- the real system's FLOPs

# count_reference_flops() at 832x480, kept as numbers so the benchmark need not recount
# (tests/test_bench.py recounts them). FLOPs per block, keys as in ComponentSeconds.
REFERENCE_FLOPS = {
    "target_context": 131_799_137_648_640,
    "target_block": 748_707_918_643_200,
    "target_block_first": 658_995_688_243_200,
    "drafter_context": 16_184_580_243_456,
    "drafter_block": 101_108_153_057_280,
    "drafter_block_first": 80_922_901_217_280,
    "vae_decode_block": 40_650_001_367_040,
    "vae_decode_first": 31_452_197_437_440,
    "vae_encode_anchor": 2_718_293_360_640,
    "router_block": 1_653_354_528_768,
}


def reference_ratios() -> dict[str, float]:
    """Each component's FLOPs over the target's 5-pass block: the proportions a preset aims at."""
    return {k: v / REFERENCE_FLOPS["target_block"] for k, v in REFERENCE_FLOPS.items()}


def count_reference_flops(width: int = 832, height: int = 480) -> dict[str, float]:
    """FLOPs of each component of the REAL system for one block, counted on the meta device.

    Same keys as ComponentSeconds. Counted with torch's FlopCounterMode (matmuls, convolutions,
    attention; 2 FLOPs per multiply-add) on diffusers' WanTransformer3DModel (1.3B and 14B widths;
    the full depth from a one- and a two-layer model, exactly), diffusers' AutoencoderKLWan (Wan 2.1) streaming decode, and transformers' BLIP ViT-L/16 +
    BERT-base text encoder on 12 frames. No weights are allocated.

    The DiT runs in the window regime: a denoising pass has 3 frames of queries attending to
    a 6-frame cache, so the self-attention matmuls of a 3-frame forward are counted twice
    (they are linear in the key length); the context pass and block 0 attend to 3 frames.
    The text's cross-attention keys/values and text projection are cached once per video by
    our engine, so they are left out.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> tuple[int, dict]:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        by_module = {name: {str(op): n for op, n in ops.items()}
                     for name, ops in counter.get_flop_counts().items()}
        return counter.get_total_flops(), by_module

    from diffusers import WanTransformer3DModel

    from .wan import WanConfig

    lat_h, lat_w = height // 8, width // 8

    def dit_pass(cfg: WanConfig, num_layers: int) -> tuple[int, int]:
        """(FLOPs of a 3-frame pass less the cached text work, its self-attention products)."""
        with torch.device("meta"):
            model = WanTransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                          ffn_dim=cfg.ffn_dim, num_layers=num_layers,
                                          in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                          text_dim=cfg.text_dim, freq_dim=cfg.freq_dim)
            x = torch.empty(1, cfg.in_dim, 3, lat_h, lat_w)
            t = torch.full((1,), 500.0)
            text = torch.empty(1, cfg.text_len, cfg.text_dim)
        total, by_module = count(lambda: model(x, t, text))
        cached_text = sum(sum(ops.values()) for name, ops in by_module.items()
                          if name.endswith(("condition_embedder.text_embedder",
                                            "attn2.to_k", "attn2.to_v")))
        # Query-key and attention-value products of self-attention: linear in the key length.
        self_attention = sum(n for name, ops in by_module.items() if name.endswith("attn1")
                             for op, n in ops.items() if "bmm" in op or "attention" in op)
        return total - cached_text, self_attention

    flops: dict[str, float] = {}
    for role, cfg in {"drafter": WanConfig.wan_1_3b(), "target": WanConfig.wan_14b()}.items():
        # The layers are identical, so the counts are exactly linear in their number: a one-layer and
        # a two-layer model give the full depth's (and count in a tenth of the time).
        one, two = dit_pass(cfg, 1), dit_pass(cfg, 2)
        three_frames, self_attention = (a + (cfg.num_layers - 1) * (b - a) for a, b in zip(one, two))
        flops[f"{role}_context"] = three_frames
        flops[f"{role}_block_first"] = NUM_STEPS * three_frames
        flops[f"{role}_block"] = NUM_STEPS * (three_frames + self_attention)

    flops.update(_vae_flops(count, lat_h, lat_w, height, width))
    flops["router_block"] = _router_flops(count, frames=12)
    return {k: float(v) for k, v in flops.items()}


def _vae_flops(count, lat_h: int, lat_w: int, height: int, width: int) -> dict[str, float]:
    import torch

    from .vae import LATENT_CHANNELS, wan21_autoencoder

    with torch.device("meta"):
        vae = wan21_autoencoder()
        z = torch.empty(1, LATENT_CHANNELS, 3, lat_h, lat_w)
        frame = torch.empty(1, 3, 1, height, width)
    vae.clear_cache()  # sizes its cache lists
    cache = [None] * len(vae._feat_map)

    def decode_block(first: bool):
        x = vae.post_quant_conv(z)
        for i in range(x.shape[2]):  # one latent frame at a time, cache carried (streaming)
            vae.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first and i == 0)

    first, _ = count(lambda: decode_block(True))
    later, _ = count(lambda: decode_block(False))
    encode, _ = count(lambda: vae.quant_conv(
        vae.encoder(frame, feat_cache=[None] * len(vae._enc_feat_map), feat_idx=[0])))
    return {"vae_decode_first": first, "vae_decode_block": later, "vae_encode_anchor": encode}


def _router_flops(count, frames: int) -> float:
    import torch
    from transformers import BlipTextModel, BlipVisionModel

    from .random_models import RouterSize
    from .router import IMAGE_SIZE, PROMPT_MAX_LENGTH, text_config_from_med

    size = RouterSize()  # ImageReward v1.0: BLIP ViT-L/16 + BERT-base
    with torch.device("meta"):
        vision = BlipVisionModel(size.vision_config())
        text = BlipTextModel(text_config_from_med(size.med_config(), size.vision_hidden), add_pooling_layer=False)
        pixels = torch.empty(frames, 3, IMAGE_SIZE, IMAGE_SIZE)
        ids = torch.zeros(frames, PROMPT_MAX_LENGTH, dtype=torch.long)

    def score():
        image = vision(pixel_values=pixels).last_hidden_state
        text(input_ids=ids, encoder_hidden_states=image, is_decoder=False)

    total, _ = count(score)
    # The reward head (768->1024->128->64->16->1) on token 0 is under 0.01% of this.
    return total
