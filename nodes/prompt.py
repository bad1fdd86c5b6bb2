"""SDVG Encode Prompt: one text box for both the embedding and the router's prompt."""

from __future__ import annotations


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
