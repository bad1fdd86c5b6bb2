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


def test_licence_is_declared_and_shipped(tmp_path):
    """The code's licence (GPL-3.0, as ComfyUI) is in LICENSE and in the built wheel's metadata;
    the wheel holds the engine and nothing of the ComfyUI side."""
    import shutil
    import subprocess
    import zipfile

    assert (ROOT / "LICENSE").read_text().startswith("                    GNU GENERAL PUBLIC LICENSE\n                       Version 3")
    source = tmp_path / "source"  # a copy: setuptools writes build/ beside pyproject.toml
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "out", "bench-results", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("comfyui_sdvg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: GPL-3.0-only" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "sdvg_core/speculative.py" in names and not any(n.startswith("nodes/") for n in names)


def test_the_entry_point_imported_as_a_plain_module_registers_nothing():
    """pytest imports the checkout's __init__.py as a plain module when the folder's name is no
    Python name (a clone named ComfyUI-SDVG): that import must not fail."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("__init__", support.ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web" and not hasattr(module, "NODE_CLASS_MAPPINGS")
