"""Causal Wan 2.1 DiT with block KV cache: the forward over any Wan module tree, the engine's own
tree, and reading its checkpoints."""

from .caches import KVCache, TextCache
from .checkpoint import check_compatible, infer_config, inspect_wan, load_wan, read_wan_file, read_wan_state_dict
from .config import WanConfig
from .forward import WanNetwork
from .hosted import check_wan_tree, config_from_tree, hosted_network
from .model import CausalWanModel

__all__ = [
    "WanConfig",
    "CausalWanModel",
    "WanNetwork",
    "KVCache",
    "TextCache",
    "load_wan",
    "read_wan_file",
    "read_wan_state_dict",
    "infer_config",
    "inspect_wan",
    "check_compatible",
    "check_wan_tree",
    "config_from_tree",
    "hosted_network",
]
