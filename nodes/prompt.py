"""Prompt nodes: one text box for both the embedding and the router's prompt, and prompt travel."""

from __future__ import annotations

from sdvg_core.prompts import format_schedule, parse_schedule

SEGMENT_KEY = "sdvg_first_block"   # tags a CONDITIONING entry as one segment of a prompt schedule
PROMPT_KEY = "sdvg_prompt"


class SDVGEncodePrompt:
    """CLIPTextEncode that also outputs its text, so the router scores against exactly the
    prompt the models were conditioned on."""

    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("positive", "prompt")
    OUTPUT_TOOLTIPS = ("The prompt embedding (as CLIPTextEncode gives).", "The same text, for the sampler's 'prompt'.")
    FUNCTION = "encode"
    CATEGORY = "SDVG"
    DESCRIPTION = "Encodes the prompt with the umT5 CLIP (CLIPLoader type wan) and passes the text on for ImageReward."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt."}),
            "clip": ("CLIP", {"tooltip": "umT5-XXL from a CLIPLoader of type wan."}),
        }}

    def encode(self, text, clip):
        tokens = clip.tokenize(text)  # the same two calls as core CLIPTextEncode
        return (clip.encode_from_tokens_scheduled(tokens), text)


class SDVGPromptSchedule:
    """Prompt travel: the prompt changes at given blocks while the video streams."""

    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("positive", "prompt")
    OUTPUT_TOOLTIPS = ("Every segment's embedding: connect to the sampler's 'positive'.",
                       "The schedule: connect to the sampler's 'prompt' (the router scores each block "
                       "against its segment's prompt).")
    FUNCTION = "encode"
    CATEGORY = "SDVG"
    DESCRIPTION = ("A prompt schedule, one 'BLOCK: prompt' line per segment: from that block on, drafter, "
                   "target and router follow that prompt; the context each block re-reads carries the scene "
                   "across the switch.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "schedule": ("STRING", {"multiline": True, "default":
                "0: a red fox trots through fresh snow at golden hour\n4: the red fox leaps into a snowdrift",
                "tooltip": "One 'BLOCK: prompt' line per segment; the first starts at block 0. A block is 3 "
                           "latent frames (12 video frames, 0.75 s at 16 fps)."}),
            "clip": ("CLIP", {"tooltip": "umT5-XXL from a CLIPLoader of type wan."}),
        }}

    def encode(self, schedule, clip):
        entries = parse_schedule(schedule, "SDVG Prompt Schedule")
        positive = []
        for block, prompt in entries:
            ((tensor, extras), *_) = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
            positive.append([tensor, {**extras, SEGMENT_KEY: block, PROMPT_KEY: prompt}])
        return (positive, format_schedule(entries))
