"""ComfyUI adapters of the SDVG engine: declare inputs and outputs, convert types, call sdvg_core."""

from . import host
from .loaders import LoadDrafter, LoadImageRewardRouter, LoadTarget
from .loop import SDVGLoopEnd, SDVGLoopStart
from .modular import SDVGBegin, SDVGCommitBlock, SDVGDraftBlock, SDVGFinish, SDVGRegenerateBlock, SDVGRouteBlock
from .prompt import SDVGEncodePrompt, SDVGPromptSchedule
from .sampler import SDVGSampler

# node type -> (class, display name)
_NODES = {
    "SDVGLoadDrafter": (LoadDrafter, "SDVG Load Drafter"),
    "SDVGLoadTarget": (LoadTarget, "SDVG Load Target"),
    "SDVGLoadRouter": (LoadImageRewardRouter, "SDVG Load ImageReward Router"),
    "SDVGEncodePrompt": (SDVGEncodePrompt, "SDVG Encode Prompt"),
    "SDVGPromptSchedule": (SDVGPromptSchedule, "SDVG Prompt Schedule"),
    "SDVGSampler": (SDVGSampler, "SDVG Sampler"),
    "SDVGBegin": (SDVGBegin, "SDVG Begin"),
    "SDVGLoopStart": (SDVGLoopStart, "SDVG Block Loop Start"),
    "SDVGDraftBlock": (SDVGDraftBlock, "SDVG Draft Block"),
    "SDVGRouteBlock": (SDVGRouteBlock, "SDVG Verify Draft"),
    "SDVGRegenerateBlock": (SDVGRegenerateBlock, "SDVG Regenerate Block"),
    "SDVGCommitBlock": (SDVGCommitBlock, "SDVG Commit Block"),
    "SDVGLoopEnd": (SDVGLoopEnd, "SDVG Block Loop End"),
    "SDVGFinish": (SDVGFinish, "SDVG Finish"),
}

NODE_CLASS_MAPPINGS = {name: cls for name, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for name, (_, title) in _NODES.items()}

host.register_router_folder()
