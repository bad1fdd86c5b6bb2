"""Causal Wan 2.1 DiT with block KV cache, and reading its checkpoints."""

from .checkpoint import check_compatible, infer_config, inspect_wan, load_wan, read_wan_state_dict
from .config import WanConfig
from .model import CausalWanModel, KVCache, TextCache

__all__ = [
    "WanConfig",
    "CausalWanModel",
    "KVCache",
    "TextCache",
    "load_wan",
    "read_wan_state_dict",
    "infer_config",
    "inspect_wan",
    "check_compatible",
]
