"""A Wan DiT that lives in a host's module tree (ComfyUI's ``MODEL``): is it one, and its config.

The engine imports nothing of the host: a tree qualifies by its submodules' names, which
ComfyUI's ``WanModel`` (and its causal ``CausalWanModel``) share with Wan's original code. Its
sizes come from the attributes ComfyUI keeps (``dim``, ``num_heads``...) or, failing those,
from the tensors' shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import IncompatibleModelsError, InputError
from .checkpoint import head_count
from .config import WanConfig
from .forward import WanNetwork

# Submodules every Wan 2.1 DiT has, as dotted paths from the tree and from each block.
TREE_PARTS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks",
              "head.head", "head.modulation")
BLOCK_PARTS = ("modulation", "norm3", "ffn", *(f"{a}.{p}" for a in ("self_attn", "cross_attn")
                                               for p in ("q", "k", "v", "o", "norm_q", "norm_k")))
WAN21_LATENT_CHANNELS = 16


def _has(module: nn.Module, path: str) -> bool:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True


def check_wan_tree(tree, role: str) -> None:
    """Raise IncompatibleModelsError unless ``tree`` is a Wan 2.1 text-to-video DiT."""
    kind = type(tree).__name__
    missing = [p for p in TREE_PARTS if not _has(tree, p)] if isinstance(tree, nn.Module) else list(TREE_PARTS)
    if not missing:
        blocks = tree.blocks
        missing = ["blocks (empty)"] if len(blocks) == 0 else [f"blocks.0.{p}" for p in BLOCK_PARTS
                                                              if not _has(blocks[0], p)]
    if missing:
        raise IncompatibleModelsError(
            f"{role}: the MODEL given holds a {kind}, not a Wan 2.1 DiT (it has no {', '.join(missing[:3])}). "
            f"Connect a Wan 2.1 text-to-video model: Load {role.capitalize()}, or Load Diffusion Model / a GGUF "
            "loader with a Wan 2.1 T2V file, optionally through LoRA loaders.")
    model_type = getattr(tree, "model_type", "t2v")
    if model_type != "t2v":
        raise IncompatibleModelsError(
            f"{role}: the MODEL is a Wan {model_type!r} model; SDVG needs a text-to-video one (Wan 2.1 T2V: "
            "Self-Forcing 1.3B as the drafter, Krea Realtime 14B as the target).")


def config_from_tree(tree: nn.Module, role: str = "model") -> WanConfig:
    """The WanConfig of a Wan 2.1 T2V tree: from the host's attributes, else from the shapes."""
    check_wan_tree(tree, role)
    if isinstance(getattr(tree, "cfg", None), WanConfig):
        return tree.cfg

    def size(name: str, from_shapes):  # the host's attribute when it keeps one (ComfyUI does)
        value = getattr(tree, name, None)
        return from_shapes() if value is None else value

    dim = int(size("dim", lambda: tree.patch_embedding.weight.shape[0]))  # GGUF keeps logical shapes
    values = dict(
        dim=dim,
        ffn_dim=int(size("ffn_dim", lambda: tree.blocks[0].ffn[0].weight.shape[0])),
        num_heads=int(size("num_heads", lambda: head_count(dim, None, role))),
        num_layers=len(tree.blocks),
        in_dim=int(size("in_dim", lambda: tree.patch_embedding.weight.shape[1])),
        out_dim=int(size("out_dim", lambda: WAN21_LATENT_CHANNELS)),
        text_dim=int(size("text_dim", lambda: tree.text_embedding[0].weight.shape[1])),
        freq_dim=int(size("freq_dim", lambda: tree.time_embedding[0].weight.shape[1])),
        text_len=int(size("text_len", lambda: 512)),
        patch_size=tuple(size("patch_size", lambda: tree.patch_embedding.weight.shape[2:])),
        eps=float(size("eps", lambda: 1e-6)),
    )
    for name in ("in_dim", "out_dim"):
        if values[name] != WAN21_LATENT_CHANNELS:
            raise IncompatibleModelsError(
                f"{role}: the MODEL has {values[name]} latent channels ({name}); Wan 2.1 text-to-video models have "
                f"{WAN21_LATENT_CHANNELS} (a Wan 2.2 or image-to-video model?). Use a Wan 2.1 T2V file.")
    try:
        return WanConfig(**values)
    except InputError as error:
        raise IncompatibleModelsError(f"{role}: the MODEL's sizes do not form a Wan 2.1 DiT: {error}") from None


def hosted_network(tree: nn.Module, *, device, compute_dtype: torch.dtype, layers_cast: bool,
                   role: str = "model", source: str | None = None) -> WanNetwork:
    """The engine's forward over a host's Wan tree.

    ``layers_cast``: the host's layers cast their weights to their input's dtype (ComfyUI's
    manual-cast ops), so Wan's float32 parts can run in float32; otherwise they get the compute dtype.
    """
    cfg = config_from_tree(tree, role)
    return WanNetwork(tree, cfg, device=device, compute_dtype=compute_dtype,
                      exact_dtype=torch.float32 if layers_cast else compute_dtype, source=source)
