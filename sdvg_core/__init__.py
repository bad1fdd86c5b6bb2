"""SDVG engine: speculative decoding for block-autoregressive video diffusion.

Nothing in this package imports ComfyUI; the `nodes/` package adapts it to the host.
"""

__version__ = "0.1.0"
