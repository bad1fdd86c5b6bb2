"""End to end in a real ComfyUI: headless on the CPU, the pack in custom_nodes/, tiny model files.

Skipped unless SDVG_COMFYUI_DIR points at a ComfyUI checkout. SDVG_COMFYUI_PYTHON names the
interpreter that runs it (default: this one); it needs ComfyUI's requirements and this pack's
requirements.txt.

The test writes a base directory (models/ with the tiny files under the names the workflows
use, custom_nodes/ with a link to this repository), starts `main.py --cpu`, converts each
shipped workflow to API format (tests/test_workflows.to_api) and queues it over HTTP, listening
on ComfyUI's websocket. One substitution: the workflows encode the prompt with the umT5-XXL
CLIPLoader, which cannot be shrunk (its size is fixed by ComfyUI's config) and whose 4096-wide
output would not fit the tiny DiTs; a stand-in node with CLIPTextEncode's `text` input and
output type replaces CLIPLoader + CLIPTextEncode (sdvg_core.tiny.tiny_text embeds the text).
Everything else -- loaders, sampler, modular loop with node expansion, Create Video, Save
Video, Preview Image, progress, sdvg.block messages, caching, interrupt -- is ComfyUI's and ours.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

import support as wf

COMFYUI = os.environ.get("SDVG_COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set SDVG_COMFYUI_DIR to a ComfyUI checkout to run it")

PACK_FOLDER = "ComfyUI-SDVG"
TEXT_STAND_IN = '''
"""Test-only stand-in for CLIPLoader + CLIPTextEncode: tiny_text embeddings for the tiny DiTs."""
import sys

sys.path.append({root!r})
from sdvg_core.tiny import TEXT_DIM, tiny_text  # noqa: E402


class SDVGE2ETinyText:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    def encode(self, text):
        return ([[tiny_text(text, TEXT_DIM), {"pooled_output": None}]],)


NODE_CLASS_MAPPINGS = {"SDVGE2ETinyText": SDVGE2ETinyText}
'''
SETTINGS = {**wf.TINY_SETTINGS, "num_blocks": 3}  # block 2 is the first with an anchor frame
STARTUP_SECONDS = 300
RUN_SECONDS = 600


# ----------------------------------------------------------------------------- websocket


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


# ----------------------------------------------------------------------------- server


class ComfyServer:
    def __init__(self, base: Path, port: int, process: subprocess.Popen, log: Path):
        self.base, self.port, self.process, self.log = base, port, process, log

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

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def queue(self, prompt: dict, client_id: str) -> str:
        try:
            return self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        except urllib.error.HTTPError as error:
            pytest.fail(f"ComfyUI refused the prompt: {error.read().decode()[:3000]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui")
    wf.tiny_models_for_workflows(_models(base))
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / PACK_FOLDER).symlink_to(wf.ROOT, target_is_directory=True)
    (custom / "sdvg_e2e_text").mkdir()
    (custom / "sdvg_e2e_text" / "__init__.py").write_text(TEXT_STAND_IN.replace("{root!r}", repr(str(wf.ROOT))))
    port = free_port()
    log = base / "comfyui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    python = os.environ.get("SDVG_COMFYUI_PYTHON", sys.executable)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(base), "--disable-auto-launch"],
            cwd=COMFYUI, env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = ComfyServer(base, port, process, log)
    deadline = time.time() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited with {process.returncode}:\n{srv.log_tail()}")
        try:
            srv.get("/object_info/SDVGSampler")
            break
        except OSError:
            if time.time() > deadline:
                process.kill()
                pytest.fail(f"ComfyUI did not start in {STARTUP_SECONDS}s:\n{srv.log_tail()}")
            time.sleep(1)
    yield srv
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _models(base: Path) -> Path:
    models = base / "models"
    for sub in ("diffusion_models", "vae", "image_reward"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    return models


def api_prompt(path: Path, **settings) -> dict:
    """The workflow in API format, sized for the CPU, the text encoder swapped for the stand-in."""
    api = wf.to_api(wf.load(path), wf.load_pack().NODE_CLASS_MAPPINGS)
    for node_id, node in list(api.items()):
        if node["class_type"] == "CLIPLoader":
            del api[node_id]
        elif node["class_type"] == "CLIPTextEncode":
            api[node_id] = {"class_type": "SDVGE2ETinyText", "inputs": {"text": node["inputs"]["text"]}}
        elif node["class_type"] in ("SDVGSampler", "SDVGBegin"):
            node["inputs"].update({**SETTINGS, **settings})
        elif node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"e2e/{path.stem}"
    return api


def run(server: ComfyServer, prompt: dict) -> tuple[list[dict], str, EventStream, str]:
    client = uuid.uuid4().hex
    stream = EventStream(server.port, client)
    try:
        prompt_id = server.queue(prompt, client)
        events, status = stream.until_done(prompt_id)
    finally:
        stream.close()
    return events, status, stream, prompt_id


def decode_video(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def saved_videos(server: ComfyServer, prompt_id: str) -> list[Path]:
    # ComfyUI records the history entry just after the websocket says the prompt is done.
    for _ in range(50):
        history = server.get(f"/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(0.1)
    outputs = history[prompt_id]["outputs"]
    files = [item for out in outputs.values() for item in out.get("images", []) + out.get("videos", [])
             if item.get("type") == "output"]
    return [server.base / "output" / item["subfolder"] / item["filename"] for item in files]


# ----------------------------------------------------------------------------- tests


def test_comfyui_registers_the_pack(server):
    info = server.get("/object_info")
    pack = wf.load_pack()
    for name, title in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert name in info, f"{name} is not registered:\n{server.log_tail()}"
        assert info[name]["display_name"] == title
    tau = info["SDVGSampler"]["input"]["required"]["tau"]
    assert tau[0] == "FLOAT" and tau[1]["display"] == "slider"
    assert "ImageReward.pt" in info["SDVGLoadRouter"]["input"]["required"]["router"][0]
    assert any(url.endswith(f"/{PACK_FOLDER}/sdvg_timeline.js") for url in server.get("/extensions"))
    templates = server.get("/workflow_templates").get(PACK_FOLDER, [])
    assert sorted(templates) == sorted(p.stem for p in wf.WORKFLOWS)


def test_both_workflows_run_and_give_the_same_video(server):
    frames = {}
    for path in wf.WORKFLOWS:
        prompt = api_prompt(path)
        events, status, stream, prompt_id = run(server, prompt)
        assert status == "success", f"{path.name}: {events[-1]}\n{server.log_tail()}"
        blocks = [e["data"] for e in events if e["type"] == "sdvg.block"]
        assert [b["block"] for b in blocks] == list(range(SETTINGS["num_blocks"]))
        owner = next(k for k, n in prompt.items() if n["class_type"] in ("SDVGSampler", "SDVGBegin"))
        assert {b["node"] for b in blocks} == {owner}, "the timeline messages name the node that draws it"
        progress = [e["data"] for e in events if e["type"] == "progress"]
        assert any(p["max"] == SETTINGS["num_blocks"] for p in progress)
        assert stream.previews >= SETTINGS["num_blocks"], "a preview per committed block"
        (video,) = saved_videos(server, prompt_id)
        frames[path.name] = decode_video(video)
        expected = 9 + 12 * (SETTINGS["num_blocks"] - 1) - 3
        assert frames[path.name].shape == (expected, SETTINGS["height"], SETTINGS["width"], 3)
    a, b = frames.values()
    assert np.array_equal(a, b), "the modular loop must give the composite sampler's video"


def test_a_requeued_modular_graph_is_not_served_from_cache(server):
    path = next(p for p in wf.WORKFLOWS if "SDVGLoopEnd" in {n["type"] for n in wf.load(p)["nodes"]})
    prompt = api_prompt(path)
    for attempt in range(2):
        events, status, _, prompt_id = run(server, prompt)
        assert status == "success", events[-1]
    cached = {n for e in events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}
    stateful = {k for k, n in prompt.items() if n["class_type"].startswith("SDVG")
                and not n["class_type"].startswith("SDVGLoad") and n["class_type"] != "SDVGE2ETinyText"}
    loaders = {k for k, n in prompt.items() if n["class_type"].startswith("SDVGLoad")}
    assert loaders <= cached, "loaders are cached between runs"
    assert not stateful & cached, f"stateful nodes served from cache: {stateful & cached}"
    blocks = [e for e in events if e["type"] == "sdvg.block"]
    assert len(blocks) == SETTINGS["num_blocks"], "the second run generated every block again"


def test_interrupt_is_honoured_and_the_next_run_works(server):
    path = next(p for p in wf.WORKFLOWS if "SDVGSampler" in {n["type"] for n in wf.load(p)["nodes"]})
    prompt = api_prompt(path, num_blocks=5, seed=123)
    client = uuid.uuid4().hex
    stream = EventStream(server.port, client)
    try:
        prompt_id = server.queue(prompt, client)

        def cancel_after_first_block(event):
            if event["type"] == "sdvg.block" and event["data"]["block"] == 0:
                server.post("/interrupt")

        events, status = stream.until_done(prompt_id, cancel_after_first_block)
    finally:
        stream.close()
    blocks = [e for e in events if e["type"] == "sdvg.block"]
    assert status == "interrupted", events[-1]
    assert len(blocks) < 5, "the sampler stopped before the last block"
    events, status, _, prompt_id = run(server, prompt)
    assert status == "success", events[-1]
    assert len([e for e in events if e["type"] == "sdvg.block"]) == 5
