"""The pack as ComfyUI and the Comfy Registry see it: imports without ComfyUI, metadata."""

from __future__ import annotations

import sys

import support

ROOT = support.ROOT
PACK = support.load_pack()
from sdvg_pack_under_test.nodes import host  # noqa: E402


def test_pack_imports_without_comfyui():
    assert not host.IN_COMFYUI
    assert not any(name == "folder_paths" or name == "comfy" or name.startswith("comfy.") for name in sys.modules)
    web = ROOT / PACK.WEB_DIRECTORY
    assert web.is_dir() and sorted(p.name for p in web.glob("*.js"))
    assert set(PACK.NODE_CLASS_MAPPINGS) == set(PACK.NODE_DISPLAY_NAME_MAPPINGS)


def test_registry_metadata_matches_requirements():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert meta["project"]["dependencies"] == [line for line in lines if line]
    assert not any(d.split("=")[0].split(">")[0].split("<")[0].strip() == "torch" for d in meta["project"]["dependencies"])
    comfy = meta["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
