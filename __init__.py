"""SDVG for ComfyUI: speculative decoding for block-autoregressive video diffusion.

ComfyUI imports this file from custom_nodes/<this folder>/. The engine (sdvg_core) is imported
by absolute name, so this folder goes on sys.path first.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)  # appended: nothing here may shadow a module ComfyUI already uses

WEB_DIRECTORY = "./web"

# ComfyUI imports this file as a package. pytest, collecting a checkout whose folder name is no
# Python name (ComfyUI-SDVG), imports it as a plain module: then there is nothing to register.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
