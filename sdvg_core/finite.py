"""Non-finite values are errors, not black frames: one check, one message per component.

Every value the block loop makes is checked where it is made (a DiT pass's flow, a decode's
frames, the router's scores); a NaN or Inf stops the run with the component, the block, what
was being computed and the likely causes for that component and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import NumericalError

COMPONENTS = {"drafter": "the drafter (Wan DiT)", "target": "the target (Wan DiT)",
              "vae": "the VAE", "router": "the ImageReward router"}


def check_finite(value: Tensor, component: str, block: int, *, dtype: torch.dtype | None = None,
                 what: str = "its output", source: str | None = None) -> None:
    """Raise NumericalError unless every element of ``value`` is finite."""
    if bool(torch.isfinite(value).all()):
        return
    bad = value.detach().float()
    kinds = [name for name, hit in (("NaN", torch.isnan(bad).any()), ("Inf", torch.isinf(bad).any())) if hit]
    raise NumericalError(
        f"{COMPONENTS.get(component, component)} produced {'/'.join(kinds)}{'' if block < 0 else f' in block {block}'} ({what}"
        f"{f', computing in {_dtype_name(dtype)}' if dtype is not None else ''}). Nothing was saved for this "
        f"video. Likely causes: {likely_causes(component, dtype, source)}")


def likely_causes(component: str, dtype: torch.dtype | None, source: str | None = None) -> str:
    where = f" ({source})" if source else ""
    if component in ("drafter", "target"):
        causes = []
        if dtype == torch.float16:
            causes.append("float16 overflows in Wan's attention and FFN activations: compute in "
                          "bfloat16 (GPU) or float32 instead")
        causes.append(f"the model's weights{where} hold NaN/Inf, or a LoRA or weight patch put them there: "
                      "load the file without the patch, or download it again")
        causes.append("an fp8 file whose scales do not belong to its weights: use the bf16 file or "
                      "ComfyUI's own fp8 conversion (weight dtype fp8_e4m3fn)")
        return "; ".join(causes) + "."
    if component == "vae":
        causes = []
        if dtype == torch.float16:
            causes.append("float16 overflows in the Wan VAE's decoder: load the VAE in bfloat16 or float32")
        causes.append(f"the VAE weights{where} hold NaN/Inf: download wan_2.1_vae.safetensors again")
        causes.append("it is not the Wan 2.1 VAE the models were trained with")
        return "; ".join(causes) + "."
    if component == "router":
        causes = []
        if dtype in (torch.float16, torch.bfloat16):
            causes.append("half-precision overflow in BLIP: load the router in fp32")
        causes.append(f"the ImageReward weights{where} hold NaN/Inf: download ImageReward.pt again")
        return "; ".join(causes) + "."
    return "the inputs or weights of this component are broken."


def first_non_finite(tensors: dict[str, Tensor]) -> str | None:
    """Name of the first floating tensor holding NaN or Inf (checks weights at load time)."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.is_floating_point() and t.device.type != "meta":
            if not bool(torch.isfinite(t.float() if t.dtype in _FP8 else t).all()):
                return name
    return None


_FP8 = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
