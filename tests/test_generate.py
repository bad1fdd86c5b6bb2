"""`python -m sdvg_core generate` on tiny files in the real formats."""

import json

import pytest

from sdvg_core.__main__ import main
from sdvg_core.tiny import write_tiny_model_files, write_tiny_text_encoder
from sdvg_core.video import count_frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = write_tiny_model_files(root)
    paths["text_encoder"] = write_tiny_text_encoder(root / "text_encoders" / "umt5")
    return paths


def args(files, *extra):
    return ["generate", "--drafter", str(files["drafter"]), "--target", str(files["target"]),
            "--vae", str(files["vae"]), "--router", str(files["router"]),
            "--text-encoder", str(files["text_encoder"]), "--width", "64", "--height", "48",
            "--blocks", "3", *extra]


def test_generate_writes_a_json_line_and_a_video_per_prompt(files, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox running through fresh snow\n\na stylish woman walks down a street\n")
    out = tmp_path / "out"
    assert main(args(files, "--prompts", str(prompts), "--out", str(out), "--tau", "-0.5")) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in lines] == ["a red fox running through fresh snow",
                                            "a stylish woman walks down a street"]
    for record in lines:
        assert record["tau"] == -0.5 and len(record["blocks"]) == 3
        assert record["blocks"][0]["decision"] == "target"
        assert all(len(b["scores"]) == 12 for b in record["blocks"][1:])
        assert count_frames(record["video"]) == 9 + 12 * 2 - 3
    assert "results.jsonl" in capsys.readouterr().out


def test_missing_files_are_all_named_before_loading(files, tmp_path, capsys):
    argv = args(files, "--prompt", "a fox")
    argv[argv.index("--vae") + 1] = str(tmp_path / "nope.safetensors")
    argv[argv.index("--router") + 1] = str(tmp_path / "no_router")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--vae" in err and "nope.safetensors" in err and "--router" in err and "no_router" in err
    assert "--drafter" not in err


def test_a_broken_model_file_is_named(files, tmp_path, capsys):
    broken = tmp_path / "krea-realtime-video-14b.safetensors"
    broken.write_bytes(files["target"].read_bytes()[:1000])
    argv = args(files, "--prompt", "a fox")
    argv[argv.index("--target") + 1] = str(broken)
    assert main(argv) == 2
    assert "krea-realtime-video-14b.safetensors" in capsys.readouterr().err
