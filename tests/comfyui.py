"""A real ComfyUI for the end-to-end tests: a base directory, a headless server, its HTTP and websocket API.

Used only when SDVG_COMFYUI_DIR points at a ComfyUI checkout (SDVG_COMFYUI_PYTHON: the interpreter
that runs it; it needs ComfyUI's requirements and this pack's). The base directory holds tiny model
files that ComfyUI's own loaders accept (sdvg_core.tiny.write_comfy_model_files), also under the
names the shipped workflows use, and custom_nodes/ with a link to this repository, a test-only text
node, and city96's ComfyUI-GGUF when SDVG_COMFYUI_GGUF_DIR points at a checkout of it.

The one substitution: the workflows encode the prompt with the umT5-XXL CLIPLoader, whose model
cannot be shrunk; a stand-in node gives a CLIP object with ComfyUI's encode interface that embeds
the text with sdvg_core.tiny.tiny_text (4096 wide, as umT5-XXL), so core's CLIPTextEncode and SDVG
Prompt Schedule run as they are.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import support

COMFYUI = os.environ.get("SDVG_COMFYUI_DIR")
GGUF_PACK = os.environ.get("SDVG_COMFYUI_GGUF_DIR")
PACK_FOLDER = "ComfyUI-SDVG"
STARTUP_SECONDS = 300
RUN_SECONDS = 900
TEXT_STAND_IN = '''
"""Test-only stand-ins for umT5-XXL: a CLIP object with ComfyUI's encode interface, whose embedding
is sdvg_core.tiny.tiny_text (umT5-XXL's width), and a text node built on it."""
import sys

sys.path.append({root!r})
from sdvg_core.tiny import COMFY_TEXT_DIM, tiny_text  # noqa: E402


class TinyClip:
    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens):
        return [[tiny_text(tokens["text"], COMFY_TEXT_DIM), {"pooled_output": None}]]


class SDVGE2ETinyCLIP:  # in place of CLIPLoader
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (TinyClip(),)


class SDVGE2ETinyText:  # in place of CLIPLoader + CLIPTextEncode
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    def encode(self, text):
        return (TinyClip().encode_from_tokens_scheduled({"text": text}),)


NODE_CLASS_MAPPINGS = {"SDVGE2ETinyCLIP": SDVGE2ETinyCLIP, "SDVGE2ETinyText": SDVGE2ETinyText}
'''
# The shipped workflows' model files, and the tiny ComfyUI-loadable file standing in for each.
WORKFLOW_FILES = {
    "diffusion_models/self_forcing_dmd.pt": "drafter",
    "diffusion_models/krea-realtime-video-14b.safetensors": "target",
    "vae/wan_2.1_vae.safetensors": "vae",
}
GGUF_TARGET = "sdvg_comfy_target-Q8_0.gguf"
INPUT_BLOCKS = 5  # the input clip of the video-to-video workflow fits videos of up to 5 blocks


def prepare_base(base: Path) -> dict:
    """models/ and custom_nodes/ for a server; returns write_comfy_model_files' paths."""
    import torch

    from sdvg_core.tiny import COMFY_TARGET, tiny_wan, write_comfy_model_files, write_wan_gguf
    from sdvg_core.video import write_video

    models = base / "models"
    files = write_comfy_model_files(models)
    for name, role in WORKFLOW_FILES.items():
        shutil.copyfile(files[role], models / name)
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / PACK_FOLDER).symlink_to(support.ROOT, target_is_directory=True)
    (custom / "sdvg_e2e_text").mkdir()
    (custom / "sdvg_e2e_text" / "__init__.py").write_text(TEXT_STAND_IN.replace("{root!r}", repr(str(support.ROOT))))
    frames = 12 * INPUT_BLOCKS - 3  # the video-to-video workflow's input clip
    (base / "input").mkdir()
    write_video(torch.rand(frames, support.TINY_SETTINGS["height"], support.TINY_SETTINGS["width"], 3,
                           generator=torch.Generator().manual_seed(0)), base / "input" / "sdvg_input.mp4")
    if GGUF_PACK:
        (custom / "ComfyUI-GGUF").symlink_to(Path(GGUF_PACK).resolve(), target_is_directory=True)
        files["gguf"] = write_wan_gguf(tiny_wan(COMFY_TARGET, 2), models / "diffusion_models" / GGUF_TARGET)
    return files


class EventStream:
    """A read-only websocket client (stdlib only) for ComfyUI's /ws: JSON text frames are
    events, binary frames are previews."""

    def __init__(self, port: int, client_id: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_SECONDS)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.previews = 0

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("ComfyUI closed the websocket")
            data += chunk
        return data

    def next_event(self) -> dict:
        """The next JSON event (previews are counted on the way)."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 1:
                return json.loads(payload)
            if opcode == 2:
                self.previews += 1
            elif opcode == 8:
                raise ConnectionError("ComfyUI closed the websocket")

    def until_done(self, prompt_id: str, on_event=None) -> tuple[list[dict], str]:
        """Events of one prompt until it ends: 'success', 'error' or 'interrupted'."""
        events = []
        while True:
            event = self.next_event()
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(event)
            if on_event:
                on_event(event)
            kind = event["type"]
            if kind == "execution_success":
                return events, "success"
            if kind == "execution_error":
                return events, "error"
            if kind == "execution_interrupted":
                return events, "interrupted"

    def close(self):
        self.sock.close()


class ComfyServer:
    def __init__(self, base: Path, port: int, process: subprocess.Popen, log: Path, files: dict):
        self.base, self.port, self.process, self.log, self.files = base, port, process, log, files

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None):
        request = urllib.request.Request(self.url(path), data=json.dumps(body or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def queue(self, prompt: dict, client_id: str) -> str:
        try:
            return self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"ComfyUI refused the prompt: {error.read().decode()[:3000]}") from None

    def run(self, prompt: dict, on_event=None) -> tuple[list[dict], str, EventStream, str]:
        """Queue a prompt and wait for its end: (events, status, the stream, prompt id)."""
        client = uuid.uuid4().hex
        stream = EventStream(self.port, client)
        try:
            prompt_id = self.queue(prompt, client)
            events, status = stream.until_done(prompt_id, on_event)
        finally:
            stream.close()
        return events, status, stream, prompt_id

    def outputs(self, prompt_id: str) -> dict:
        # ComfyUI records the history entry just after the websocket says the prompt is done.
        for _ in range(50):
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]["outputs"]
            time.sleep(0.1)
        raise AssertionError(f"no history for prompt {prompt_id}")

    def output_files(self, prompt_id: str, kind: str) -> list[Path]:
        """The files of one kind ("images", "videos", "latents") the prompt saved to output/, in order."""
        items = [item for out in self.outputs(prompt_id).values() for item in out.get(kind, [])
                 if item.get("type") == "output"]
        return [self.base / "output" / item["subfolder"] / item["filename"] for item in items]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path) -> ComfyServer:
    """ComfyUI headless on the CPU over ``base``; returns once the pack's nodes are registered."""
    files = prepare_base(base)
    port = free_port()
    log = base / "comfyui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    python = os.environ.get("SDVG_COMFYUI_PYTHON", sys.executable)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(base), "--disable-auto-launch"],
            cwd=COMFYUI, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ComfyServer(base, port, process, log, files)
    deadline = time.time() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise AssertionError(f"ComfyUI exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.get("/object_info/SDVGSampler")
            return server
        except OSError:
            if time.time() > deadline:
                process.kill()
                raise AssertionError(f"ComfyUI did not start in {STARTUP_SECONDS}s:\n{server.log_tail()}")
            time.sleep(1)
