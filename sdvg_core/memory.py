"""The memory plan: what a run needs on its device, known before anything loads.

Held for the whole video (resident):
* each DiT's weights: Linear weights at their stored dtype (fp8 is 1 byte), every other
  parameter at the compute dtype, as ``load_wan`` stores them;
* each DiT's caches: the 6-frame self-attention window and the text K/V (runner.cache_bytes);
* the VAE's weights (encoder too: it re-encodes the anchor frame) and the router's.

Needed one at a time (transient; the plan counts the largest):
* a DiT pass: 3 latent frames of queries. Per token: the float32 residual stream and its
  modulated copy, q / k / v / attention output in the compute dtype, and the FFN's hidden
  layer before and after its GELU. Attention is fused (no score matrix), as torch's SDPA is
  on a GPU;
* a VAE block decode: the causal cache (every causal conv keeps its input's last 2 frames),
  the rollback snapshot of it (a copy), and the largest conv's input and output;
* the router on 12 frames: the ViT-L's tokens through one layer, the frames resized on the device.

Weights and caches are exact byte counts (tests/test_memory.py builds the real-size models on
the meta device and compares); the transients are estimates from the layer shapes, which
``make bench-gpu`` prints next to the measured peak of every run.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .errors import InputError
from .runner import WINDOW_FRAMES, cache_bytes
from .wan import WanConfig
from .wan.caches import itemsize
from .wan.checkpoint import FP8_DTYPES

DESCRIPTION = ("The memory one video needs on its GPU, before anything loads: each model's weights, the "
               "DiTs' KV and text caches, the VAE's causal cache, and the largest activation peak, with 10% "
               "headroom; then whether it fits cards of each size, and if not, what would make it fit. The "
               "same plan is checked against the free memory before every generate run, Python session and "
               "ComfyUI run.")
GiB = 2 ** 30
BLOCK_LATENT_FRAMES = 3
ROUTER_FRAMES = 12
# Parameter counts of the fixed architectures (tests/test_memory.py recounts them on meta).
WAN21_VAE_PARAMS = 126_892_531          # diffusers AutoencoderKLWan, Wan 2.1, encoder + decoder
ROUTER_PARAMS = 303_301_632 + 141_977_088 + 927_969  # BLIP ViT-L/16 + BERT-base + reward head (MLP 768-1024-128-64-16-1)
ROUTER_TOKENS = 577                     # 224x224 at patch 16, plus the class token
ROUTER_HIDDEN, ROUTER_MLP = 1024, 4096
SMALL_SIZE = (416, 240)                 # the size a refusal offers: half of 832x480 each way
ALL_OF_THESE = "all of these together"
# Headroom for what no formula sees: the CUDA context's workspace, allocator fragmentation.
HEADROOM = 0.10


@dataclass(frozen=True)
class Line:
    what: str
    bytes: int
    resident: bool


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a run needs on ``device``: resident lines plus the largest transient one."""

    device: str
    lines: tuple[Line, ...]
    options: tuple[tuple[str, int], ...] = field(default=())  # (what to do, the total it would need)

    @property
    def resident(self) -> int:
        return sum(line.bytes for line in self.lines if line.resident)

    @property
    def transient(self) -> int:
        return max((line.bytes for line in self.lines if not line.resident), default=0)

    @property
    def total(self) -> int:
        """Resident + the largest transient, with HEADROOM on top."""
        return int((self.resident + self.transient) * (1 + HEADROOM))

    def bytes_of(self, prefix: str) -> int:
        return sum(line.bytes for line in self.lines if line.what.startswith(prefix))

    @property
    def beside_weights(self) -> int:
        """What a host's model management cannot see: caches and the largest transient (with headroom).
        ComfyUI reserves this when it loads the models (nodes/session.py)."""
        caches = sum(line.bytes for line in self.lines if line.resident and "weights" not in line.what)
        return int((caches + self.transient) * (1 + HEADROOM))

    def table(self) -> str:
        rows = [f"  {line.what:<44} {line.bytes / GiB:7.2f} GiB{'' if line.resident else '  (one at a time)'}"
                for line in self.lines]
        rows.append(f"  {'total (resident + largest transient + 10%)':<44} {self.total / GiB:7.2f} GiB")
        return "\n".join(rows)

    def check(self, free: int | None, *, what: str = "this run") -> None:
        """Raise before anything loads when the plan does not fit in ``free`` bytes (None: unknown, pass)."""
        if free is None or self.total <= free:
            return
        raise InputError(
            f"{what} needs about {self.total / GiB:.1f} GiB on {self.device}, and {free / GiB:.1f} GiB is free:\n"
            f"{self.table()}\nWays to a smaller run:\n{self.describe_options(free)}")

    def verdict(self, free: int) -> str:
        """One line: fits, or which of the options would make it fit."""
        if self.total <= free:
            return f"fits ({self.total / GiB:.1f} GiB of {free / GiB:.1f})"
        alone = [what.split(" (")[0] for what, total in self.options if total <= free and what != ALL_OF_THESE]
        if alone:
            return f"needs {self.total / GiB:.1f} GiB; fits with " + ", or ".join(alone)
        together = dict(self.options).get(ALL_OF_THESE)
        if together is not None and together <= free:
            return f"needs {self.total / GiB:.1f} GiB; fits with all of: " + ", ".join(
                what.split(" (")[0] for what, _ in self.options if what != ALL_OF_THESE)
        return f"needs {self.total / GiB:.1f} GiB; only with ComfyUI's partial loading (weights streamed)"

    def describe_options(self, free: int) -> str:
        rows = [f"  - {what}: {total / GiB:.1f} GiB, {'fits' if total <= free else 'not enough'}"
                for what, total in self.options]
        rows.append("  - in ComfyUI: partial loading streams what does not fit of the target from the CPU "
                    "(slower, exact; --lowvram streams more)")
        return "\n".join(rows)


def wan_weight_bytes(cfg: WanConfig, compute_dtype: torch.dtype, linear_dtype: torch.dtype | None = None) -> int:
    """Bytes of a CausalWanModel's parameters as ``load_wan`` stores them (fp8 ``scale_weight``
    scalars, a few bytes a layer, left out)."""
    d, f = cfg.dim, cfg.ffn_dim
    linear = (cfg.text_dim * d + d * d          # text_embedding
              + cfg.freq_dim * d + d * d        # time_embedding
              + d * 6 * d                       # time_projection
              + cfg.num_layers * (8 * d * d + 2 * d * f)   # self/cross q k v o, ffn
              + d * cfg.patch_channels)         # head
    patch = cfg.in_dim * d * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2] + d
    biases = 2 * d + 2 * d + 6 * d + cfg.num_layers * (8 * d + f + d) + cfg.patch_channels
    norms_and_modulation = cfg.num_layers * (4 * d + 2 * d + 6 * d) + 2 * d
    other = patch + biases + norms_and_modulation
    return linear * itemsize(linear_dtype or compute_dtype) + other * itemsize(compute_dtype)


def dit_pass_bytes(cfg: WanConfig, latent_hw: tuple[int, int], compute_dtype: torch.dtype) -> int:
    """Estimated activations of one pass over a block (see the module docstring)."""
    tokens = BLOCK_LATENT_FRAMES * cfg.frame_tokens(*latent_hw)
    s = itemsize(compute_dtype)
    return tokens * (2 * cfg.dim * 4 + 4 * cfg.dim * s + 2 * cfg.ffn_dim * s)


@lru_cache(maxsize=None)
def _vae_decode_per_pixel(base_dim: int) -> tuple[float, float]:
    """(causal cache elements, largest conv input + output elements) per output pixel of a
    later block's decode, traced once on the meta device through the real decoder."""
    from .vae import LATENT_CHANNELS, wan21_autoencoder

    lat = 4  # any size: both counts scale with the pixels; 4x4 latents = 32x32 pixels
    with torch.device("meta"):
        vae = wan21_autoencoder(base_dim)
        z = torch.empty(1, LATENT_CHANNELS, 1, lat, lat)
    vae.clear_cache()
    cache = [None] * len(vae._feat_map)
    seen = {"largest": 0}

    def hook(module, inputs, output):
        seen["largest"] = max(seen["largest"], inputs[0].numel() + output.numel())

    handles = [m.register_forward_hook(hook) for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    try:
        with torch.no_grad():
            x = vae.post_quant_conv(z)
            vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=True)   # block 0's first frame
            seen["largest"] = 0
            vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=False)  # a later frame: full cache
    finally:
        for h in handles:
            h.remove()
    pixels = (lat * 8) ** 2
    cached = sum(t.numel() for t in cache if isinstance(t, torch.Tensor))
    return cached / pixels, seen["largest"] / pixels


def vae_decode_bytes(height: int, width: int, dtype: torch.dtype, base_dim: int | None = None) -> tuple[int, int]:
    """(the causal cache and its rollback snapshot, held for the video; the estimated transient of
    one block decode: the largest conv's input and output and the block's 12 output frames)."""
    from .vae import WAN21_BASE_DIM

    cached, largest = _vae_decode_per_pixel(base_dim or WAN21_BASE_DIM)
    # A block decodes 3 latent frames one at a time; its 12 output frames are concatenated.
    frames_out = 4 * BLOCK_LATENT_FRAMES * 3 * height * width
    size = itemsize(dtype)
    return int(2 * cached * height * width * size), int(largest * height * width * size + 2 * frames_out * size)


def router_bytes(height: int, width: int, dtype: torch.dtype) -> int:
    """Estimated activations of scoring 12 frames: frames on the device, one ViT-L layer's tokens."""
    frames = ROUTER_FRAMES * 3 * height * width * 4  # float32 frames for the resize
    tokens = ROUTER_FRAMES * ROUTER_TOKENS * (6 * ROUTER_HIDDEN + 2 * ROUTER_MLP) * itemsize(dtype)
    return frames + tokens


def memory_plan(*, device, width: int, height: int, compute_dtype: torch.dtype,
                drafter: WanConfig | None = None, target: WanConfig | None = None,
                drafter_weights: torch.dtype | None = None, target_weights: torch.dtype | None = None,
                vae_dtype: torch.dtype | None = None, router_dtype: torch.dtype | None = None,
                prompts: int = 1, weights: bool = True, options: bool = True) -> MemoryPlan:
    """The plan of one video on one device. A model left out (None) is not counted: baselines
    run one DiT, ``router_dtype=None`` means no router. ``*_weights``: the Linear weights'
    stored dtype (e.g. torch.float8_e4m3fn) when it is not the compute dtype. ``weights=False``
    leaves the weights out (a host that places them itself, as ComfyUI does). ``options``: also
    plan each way to a smaller run (for the refusal's message)."""
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise InputError(f"width and height must be positive multiples of 16, got {width}x{height}.")
    latent_hw = (height // 8, width // 8)
    vae_dtype = vae_dtype or compute_dtype
    lines: list[Line] = []
    dits = {"drafter": (drafter, drafter_weights), "target": (target, target_weights)}
    for role, (cfg, stored) in dits.items():
        if cfg is None:
            continue
        if weights:
            lines.append(Line(f"{role} weights", wan_weight_bytes(cfg, compute_dtype, stored), True))
        text = (prompts - 1) * 2 * cfg.num_layers * cfg.text_len * cfg.dim * itemsize(compute_dtype)
        lines.append(Line(f"{role} KV window ({WINDOW_FRAMES} frames) + text",
                          cache_bytes(cfg, latent_hw, compute_dtype) + text, True))
    if weights:
        lines.append(Line("VAE weights", WAN21_VAE_PARAMS * itemsize(vae_dtype), True))
        if router_dtype is not None:
            lines.append(Line("router weights", ROUTER_PARAMS * itemsize(router_dtype), True))
    for role, (cfg, _) in dits.items():
        if cfg is not None:
            lines.append(Line(f"{role} pass activations", dit_pass_bytes(cfg, latent_hw, compute_dtype), False))
    cache, largest = vae_decode_bytes(height, width, vae_dtype)
    lines.insert(len([line for line in lines if line.resident]),
                 Line("VAE causal cache + rollback snapshot", cache, True))
    lines.append(Line("VAE block decode", largest, False))
    if router_dtype is not None:
        lines.append(Line("router on 12 frames", router_bytes(height, width, router_dtype), False))
    plan = MemoryPlan(str(device), tuple(lines))
    if not options:
        return plan
    args = dict(device=device, width=width, height=height, compute_dtype=compute_dtype, drafter=drafter,
                target=target, drafter_weights=drafter_weights, target_weights=target_weights,
                vae_dtype=vae_dtype, router_dtype=router_dtype, prompts=prompts, weights=weights)
    changes = []  # (what to do, the arguments it changes): each plan recomputed, not estimated
    if target is not None and weights and target_weights not in FP8_DTYPES:
        changes.append(("an fp8 target (an fp8_e4m3fn checkpoint, or weight_dtype fp8_e4m3fn in ComfyUI)",
                        {"target_weights": torch.float8_e4m3fn}))
    if drafter is not None and target is not None:
        changes.append(("the drafter on a second GPU (its weights, caches and passes leave this one)",
                        {"drafter": None}))
    if width * height > SMALL_SIZE[0] * SMALL_SIZE[1]:
        changes.append((f"{SMALL_SIZE[0]}x{SMALL_SIZE[1]} instead of {width}x{height} (caches and activations "
                        "scale with the pixels)", {"width": SMALL_SIZE[0], "height": SMALL_SIZE[1]}))
    totals = [(what, memory_plan(**{**args, **change}, options=False).total) for what, change in changes]
    if len(changes) > 1:
        every = {k: v for _, change in changes for k, v in change.items()}
        totals.append((ALL_OF_THESE, memory_plan(**{**args, **every}, options=False).total))
    return MemoryPlan(plan.device, plan.lines, tuple(totals))


def release(device) -> None:
    """Hand back what was just freed before the next model loads: Python's cyclic garbage, and on a
    CUDA device the blocks torch's allocator keeps cached."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def free_bytes(device) -> int | None:
    """Memory a run can still take on a CUDA device: the driver's free memory plus what torch's
    allocator holds unused, within ``torch.cuda.set_per_process_memory_fraction`` if one is set.
    None elsewhere: the CPU's memory is the OS's to manage."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    available = free + torch.cuda.memory_reserved(device) - allocated
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    return min(available, int(fraction * total) - allocated) if fraction < 1 else available


def session_plan(config, *, device, compute_dtype: torch.dtype, drafter: WanConfig | None = None,
                 target: WanConfig | None = None, drafter_weights: torch.dtype | None = None,
                 target_weights: torch.dtype | None = None, vae_dtype: torch.dtype | None = None,
                 weights: bool = True, prompts: int = 1) -> MemoryPlan:
    """The plan of one video of ``config`` (an SDVGConfig) with ``prompts`` schedule segments:
    only the models its mode calls, the router in float32 as ImageRewardScorer keeps it."""
    used = config.models
    return memory_plan(device=device, width=config.width, height=config.height, compute_dtype=compute_dtype,
                       vae_dtype=vae_dtype,
                       drafter=drafter if "drafter" in used else None,
                       target=target if "target" in used else None,
                       drafter_weights=drafter_weights, target_weights=target_weights,
                       router_dtype=torch.float32 if "router" in used else None, weights=weights,
                       prompts=prompts)


def checkpoint_shapes(config, drafter: str | None, target: str | None, drafter_variant: str = "ema") -> dict:
    """The ``session_plan`` keywords of the checkpoint files the mode of ``config`` loads: each one's
    WanConfig and, for fp8 files, the dtype its Linear weights keep after ``load_wan``. One read of
    each file's header (safetensors) or memory-mapped dict (.pt); no weight is loaded."""
    from .wan import infer_config, read_wan_state_dict

    shapes = {}
    for role, path, variant in (("drafter", drafter, drafter_variant), ("target", target, "ema")):
        if role in config.models and path is not None:
            sd = read_wan_state_dict(path, variant=variant, meta=True)
            weight = sd.get("blocks.0.ffn.0.weight")
            shapes[role] = infer_config(sd, source=str(path))
            shapes[f"{role}_weights"] = weight.dtype if weight is not None and weight.dtype in FP8_DTYPES else None
    return shapes


def files_plan(config, *, device, compute_dtype: torch.dtype, drafter: str | None, target: str | None,
               drafter_variant: str = "ema", prompts: int = 1) -> MemoryPlan:
    """``session_plan`` for checkpoint files, from their headers alone."""
    return session_plan(config, device=device, compute_dtype=compute_dtype, prompts=prompts,
                        **checkpoint_shapes(config, drafter, target, drafter_variant))


def check_session(config, drafter, target, vae, prompts: int = 1) -> None:
    """Before a session's first call, with its models already placed: do its caches and
    transients fit beside them on the VAE's device? (Models elsewhere are not counted.)"""
    device = torch.device(vae.device)
    free = free_bytes(device)
    if free is None:
        return
    here = {role: model for role, model in (("drafter", drafter), ("target", target))
            if model is not None and torch.device(model.device) == device}
    compute = next((model.compute_dtype for model in here.values()), vae.dtype)
    plan = session_plan(config, device=device, compute_dtype=compute, vae_dtype=vae.dtype, weights=False,
                        prompts=prompts, **{role: model.cfg for role, model in here.items()})
    plan.check(free, what="this video's caches and activations (beside the loaded models)")


# ---------------------------------------------------------------------- python -m sdvg_core plan

CARDS_GIB = (24, 48, 80)
CUDA_CONTEXT_GIB = 0.5   # what the driver and CUDA context take of a card before any tensor


def add_arguments(parser) -> None:
    parser.add_argument("--width", type=int, default=832, help="pixels, a multiple of 16")
    parser.add_argument("--height", type=int, default=480, help="pixels, a multiple of 16")
    parser.add_argument("--mode", choices=("sdvg", "target_only", "draft_only"), default="sdvg",
                        help="which models run (baselines hold one DiT)")
    parser.add_argument("--fp8-target", action="store_true",
                        help="the target's Linear weights in float8_e4m3fn (an fp8 checkpoint)")
    parser.add_argument("--drafter", default=None, help="a drafter checkpoint to read the sizes from "
                        "(default: Self-Forcing's 1.3B shape)")
    parser.add_argument("--target", default=None, help="a target checkpoint to read the sizes and weight dtype "
                        "from (default: Krea Realtime's 14B shape)")
    parser.add_argument("--cards", type=float, nargs="+", default=list(CARDS_GIB),
                        help="GPU memory sizes in GiB to read the plan out for")


def main(args) -> int:
    """Print the memory plan of one video (bf16 on a CUDA GPU) and whether it fits each card."""
    from .config import SDVGConfig

    config = SDVGConfig(mode=args.mode, width=args.width, height=args.height)
    config.validate()
    shapes = {"drafter": WanConfig.wan_1_3b(), "target": WanConfig.wan_14b(),
              "target_weights": torch.float8_e4m3fn if args.fp8_target else None}
    shapes.update(checkpoint_shapes(config, args.drafter, args.target))
    plan = session_plan(config, device="cuda", compute_dtype=torch.bfloat16, **shapes)
    print(f"memory plan: {args.mode}, {args.width}x{args.height}, bf16"
          f"{', fp8 target' if shapes.get('target_weights') else ''}\n{plan.table()}")
    print(f"read out for cards with {CUDA_CONTEXT_GIB:g} GiB taken by the CUDA context:")
    for card in args.cards:
        print(f"  {card:g} GiB card: {plan.verdict(int((card - CUDA_CONTEXT_GIB) * GiB))}")
    return 0
