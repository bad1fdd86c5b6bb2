"""Everything the pack needs from ComfyUI, in one place; each piece degrades to a stand-in without it.

This is the ONLY module of the pack that imports ComfyUI (``folder_paths``, ``comfy.*``,
``server``). Outside ComfyUI (tests, scripts) model files come from a folder laid out like
ComfyUI's ``models/`` (``set_models_dir`` or the ``SDVG_MODELS_DIR`` environment variable),
progress and messages are dropped, and no memory manager is involved.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from sdvg_core.errors import CheckpointError, MissingFileError

try:  # ComfyUI puts these on sys.path before it imports custom nodes.
    import folder_paths
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.sd as comfy_sd
    import comfy.utils as comfy_utils
except ImportError:
    folder_paths = model_management = model_patcher = comfy_sd = comfy_utils = None

IN_COMFYUI = folder_paths is not None

ROUTER_FOLDER = "image_reward"   # models/image_reward/: ImageReward.pt, med_config.json, bert-base-uncased/
# Core's Load Diffusion Model weight dtypes, and the model_options each means (nodes.py UNETLoader).
WEIGHT_DTYPES = {
    "default": {},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}
ROUTER_FILE = "ImageReward.pt"   # the file that marks a router folder
# Stand-in for ComfyUI's folder registry: folder name -> sub-folders of the models folder.
_STANDALONE_FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    ROUTER_FOLDER: (ROUTER_FOLDER,),
}
_MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")
_models_dir: str | None = None


# ----------------------------------------------------------------------------- model files


def set_models_dir(path: str | None) -> None:
    """Outside ComfyUI: the folder holding diffusion_models/, vae/ and image_reward/."""
    global _models_dir
    _models_dir = None if path is None else os.fspath(path)


def register_router_folder() -> None:
    """Add models/image_reward/ to ComfyUI's folder registry (extra_model_paths.yaml may add more)."""
    if not IN_COMFYUI:
        return
    default = os.path.join(folder_paths.models_dir, ROUTER_FOLDER)
    if ROUTER_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(ROUTER_FOLDER, default)
    else:
        folder_paths.folder_names_and_paths[ROUTER_FOLDER] = ([default], {".pt"})


def folder_roots(folder: str) -> list[str]:
    """The directories searched for a model folder name ("diffusion_models", "vae", "image_reward")."""
    if IN_COMFYUI:
        try:
            return folder_paths.get_folder_paths(folder)
        except KeyError:
            return []
    base = _models_dir or os.environ.get("SDVG_MODELS_DIR")
    if not base:
        return []
    return [os.path.join(base, sub) for sub in _STANDALONE_FOLDERS.get(folder, (folder,))]


def list_files(folder: str) -> list[str]:
    """Model files in a folder, as relative names (sub-folders included), sorted."""
    if IN_COMFYUI:
        try:
            return list(folder_paths.get_filename_list(folder))
        except KeyError:
            return []
    names = set()
    for root in folder_roots(folder):
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                if name.lower().endswith(_MODEL_EXTENSIONS):
                    names.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(names)


def full_path(folder: str, name: str) -> str:
    """Absolute path of a listed file; MissingFileError naming the file and where it was looked for."""
    if IN_COMFYUI:
        found = folder_paths.get_full_path(folder, name)
        if found:
            return found
    else:
        for root in folder_roots(folder):
            candidate = os.path.join(root, name)
            if os.path.isfile(candidate):
                return candidate
    roots = folder_roots(folder) or [f"models/{folder}"]
    raise MissingFileError(
        f"{name}: not found in {', '.join(roots)}. Put the file there (or pick another one) and "
        "refresh the node list (press R in ComfyUI).")


def router_choices() -> list[str]:
    """One entry per router folder: 'ImageReward.pt' for models/image_reward/ itself,
    'v1/ImageReward.pt' for a sub-folder. The loader reads the file's whole folder."""
    return [name for name in list_files(ROUTER_FOLDER) if os.path.basename(name) == ROUTER_FILE]


# ----------------------------------------------------------------------------- devices


def compute_device() -> torch.device:
    """Where models run: ComfyUI's torch device, else CUDA when present, else the CPU."""
    if IN_COMFYUI:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def total_memory(device: torch.device) -> int | None:
    """A GPU's whole memory (what SDVG's caches could have if ComfyUI streamed every weight);
    None on the CPU, whose memory the OS manages."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if IN_COMFYUI:
        return int(model_management.get_total_memory(device))
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def storage_device() -> torch.device:
    """Where loaders put weights: ComfyUI's offload device (it moves them in before a run)."""
    if IN_COMFYUI:
        return model_management.unet_offload_device()
    return compute_device()


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it, float32 otherwise (CPU bf16 matmuls are slow)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.float32


# ----------------------------------------------------------------------------- memory


def load_wan_model(path: str, *, variant: str, weight_dtype: str, role: str) -> Any:
    """A Wan DiT file as a MODEL: inside ComfyUI a ModelPatcher built by ComfyUI's own loading
    (so its weight dtypes, model management, LoRA patching and partial loading apply); outside
    it, the engine's CausalWanModel. The file is read by the engine's reader, which knows the
    Self-Forcing dict and the key prefixes in the wild; its weights are checked for NaN/Inf."""
    from sdvg_core.wan import load_wan, read_wan_file

    if weight_dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}.")
    options = WEIGHT_DTYPES[weight_dtype]
    if not IN_COMFYUI:
        device = compute_device()
        return load_wan(path, variant=variant, dtype=auto_dtype(device), device=device, fp8=options.get("dtype"))
    state_dict = read_wan_file(path, variant=variant)
    state_dict.check_finite(path)
    model = comfy_sd.load_diffusion_model_state_dict(dict(state_dict), model_options=dict(options))
    if model is None:
        raise CheckpointError(f"{path}: ComfyUI recognises no diffusion model in it; the {role} must be a "
                              "Wan 2.1 T2V file.")
    return model


class _Weights(torch.nn.Module):
    """A plain container for ModelPatcher: it writes attributes such as ``device`` onto the
    module it manages, which our models expose as read-only properties."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


def manage(module: torch.nn.Module) -> Any:
    """ComfyUI's ModelPatcher for a module the pack loads itself (the router; None outside ComfyUI)."""
    if not IN_COMFYUI:
        return None
    # Named after the wrapped class: ComfyUI logs "Requested to load <class name>".
    container = type(type(module).__name__, (_Weights,), {})(module)
    return model_patcher.ModelPatcher(container, load_device=compute_device(),
                                      offload_device=storage_device())


def load_models(patchers: Iterable[Any], memory_required: int = 0) -> None:
    """Bring the models onto the compute device through ComfyUI's model management, keeping
    ``memory_required`` bytes free on top (the KV and text caches and the activations, which it
    cannot see). It offloads other models first; when VRAM is still short it loads a model
    partially and streams the rest of its weights on every call, instead of failing."""
    patchers = [p for p in patchers if p is not None]
    if IN_COMFYUI and patchers:
        model_management.load_models_gpu(patchers, memory_required=int(memory_required),
                                         minimum_memory_required=int(memory_required))


# ----------------------------------------------------------------------------- progress


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel; a no-op outside ComfyUI."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()


def progress(value: int, total: int, preview=None) -> None:
    """Advance the progress bar of the running node; ``preview`` is a PIL image shown on it."""
    if IN_COMFYUI:
        bar = comfy_utils.ProgressBar(total)
        bar.update_absolute(value, total, ("JPEG", preview, 512) if preview is not None else None)


def send(event: str, data: dict) -> None:
    """A websocket message to the browser that queued the prompt (the web/ extension listens)."""
    if not IN_COMFYUI:
        return
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI's executor without its server (scripts, tests)
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(event, data, server.client_id)


