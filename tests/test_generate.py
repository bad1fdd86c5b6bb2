"""`python -m sdvg_core generate` on tiny files in the real formats."""

import json

import pytest
import torch

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
            "--text-encoder", str(files["text_encoder"]), "--width", "32", "--height", "16",
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


# ----------------------------------------------------------------------------- validation before loading


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Fail the test if a model or the text encoder is loaded."""
    from sdvg_core.worker import Worker

    def refuse(*_args, **_kwargs):
        pytest.fail("a model was loaded before the inputs were checked")

    monkeypatch.setattr(Worker, "encode", refuse)
    monkeypatch.setattr(Worker, "load", refuse)


def test_an_unusable_out_is_refused_before_loading(files, tmp_path, capsys, nothing_loads):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(args(files, "--prompt", "a fox", "--out", str(blocker / "videos"))) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "a_file" in err and "is a file, not a folder" in err and "Traceback" not in err


def test_a_broken_router_and_a_bad_pair_are_found_before_loading(files, tmp_path, capsys, nothing_loads):
    import shutil

    router = tmp_path / "image_reward"
    shutil.copytree(files["router"], router)
    (router / "ImageReward.pt").write_bytes(b"<html>404</html>")
    argv = args(files, "--prompt", "a fox", "--out", str(tmp_path / "out"))
    argv[argv.index("--router") + 1] = str(router)
    assert main(argv) == 2
    assert "ImageReward.pt" in capsys.readouterr().err
    swapped = args(files, "--prompt", "a fox", "--out", str(tmp_path / "out"))
    d, t = swapped.index("--drafter") + 1, swapped.index("--target") + 1
    swapped[d], swapped[t] = swapped[t], swapped[d]
    assert main(swapped) == 2
    assert "swapped" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing is created for a run that cannot start"


@pytest.mark.parametrize("flag, value, says", [("--start", "-5", "--start -5"), ("--limit", "-1", "--limit -1"),
                                               ("--limit", "0", "--limit 0")])
def test_bad_start_and_limit_are_refused(files, tmp_path, capsys, nothing_loads, flag, value, says):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    assert main(args(files, "--prompts", str(prompts), flag, value, "--out", str(tmp_path / "out"))) == 2
    assert says in capsys.readouterr().err


# ----------------------------------------------------------------------------- results: whole, resumable


def lines(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_rerun_skips_what_is_done_and_never_duplicates(files, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox in snow\na cat on a mat\na dog\n")
    out = tmp_path / "out"
    assert main(args(files, "--prompts", str(prompts), "--limit", "2", "--out", str(out))) == 0
    assert main(args(files, "--prompts", str(prompts), "--out", str(out))) == 0
    assert "2 of 3 prompts already done" in capsys.readouterr().out
    records = lines(out)
    assert sorted(r["index"] for r in records) == [0, 1, 2] and all(count_frames(r["video"]) for r in records)
    assert main(args(files, "--prompts", str(prompts), "--out", str(out), "--tau", "0.5")) == 2
    assert "other settings" in capsys.readouterr().err and "--redo" not in lines(out)[0]
    assert main(args(files, "--prompts", str(prompts), "--start", "1", "--limit", "1", "--out", str(out),
                     "--redo")) == 0
    assert sorted(r["index"] for r in lines(out)) == [0, 1, 2], "--redo replaced the line, no duplicate"


def test_a_failed_prompt_leaves_nothing_and_the_batch_goes_on(files, tmp_path, monkeypatch, capsys):
    from sdvg_core import worker
    from sdvg_core.errors import NumericalError

    real = worker.generate_one

    def second_fails(models, prompts, config, video=None):
        if prompts.segments[0].prompt == "a cat":
            raise NumericalError("the target produced NaN in block 1")
        return real(models, prompts, config, video)

    monkeypatch.setattr(worker, "generate_one", second_fails)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na cat\na dog\n")
    out = tmp_path / "out"
    assert main(args(files, "--prompts", str(prompts), "--out", str(out))) == 1
    assert [r["index"] for r in lines(out)] == [0, 2]
    assert [json.loads(l)["index"] for l in (out / "failed.jsonl").read_text().splitlines()] == [1]
    assert not list(out.glob("0001_*")) and "prompt 1 failed" in capsys.readouterr().err


def test_ctrl_c_ends_with_one_line(files, tmp_path, monkeypatch, capsys):
    from sdvg_core import worker

    real = worker.generate_one

    def interrupted_on_the_second(models, prompts, config, video=None):
        if prompts.segments[0].prompt == "a cat":
            raise KeyboardInterrupt
        return real(models, prompts, config, video)

    monkeypatch.setattr(worker, "generate_one", interrupted_on_the_second)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na cat\n")
    out = tmp_path / "out"
    assert main(args(files, "--prompts", str(prompts), "--out", str(out))) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: 1 video(s) written to {out}; rerun the same command to resume."]
    assert [r["index"] for r in lines(out)] == [0]


def test_a_nan_vae_file_stops_before_anything_is_written(files, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(files["vae"])
    tensors["decoder.head.2.weight"] = torch.full_like(tensors["decoder.head.2.weight"], float("nan"))
    broken = tmp_path / "wan_2.1_vae.safetensors"
    save_file(tensors, broken)
    argv = args(files, "--prompt", "a fox", "--out", str(tmp_path / "out"))
    argv[argv.index("--vae") + 1] = str(broken)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "decoder.head.2.weight" in err and "NaN" in err and "download it again" in err
    assert not (tmp_path / "out").exists()


def test_a_killed_batch_resumes_with_every_prompt_exactly_once(files, tmp_path):
    """A generate batch in a forked process, killed (SIGKILL) while it writes, then rerun here."""
    import multiprocessing
    import os
    import signal
    import time

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(4)) + "\n")
    out = tmp_path / "out"
    argv = args(files, "--prompts", str(prompts), "--out", str(out))
    # A fork starts with this process's imports, so the batch is at work in a fraction of a second.
    process = multiprocessing.get_context("fork").Process(target=main, args=(argv,), daemon=True)
    process.start()
    log = out / "results.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 1) and time.time() < deadline:
        if not process.is_alive():
            pytest.fail(f"the batch ended (code {process.exitcode}) before it could be killed")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    done_before = log.read_text().count("\n")
    assert 1 <= done_before < 4, "killed midway"
    assert main(argv) == 0
    records = lines(out)
    assert sorted(r["index"] for r in records) == list(range(4)), "every prompt exactly once"
    for record in records:
        assert count_frames(record["video"]) == 9 + 12 * 2 - 3
    videos = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert videos == sorted(["results.jsonl"] + [os.path.basename(r["video"]) for r in records])
    assert not [p for p in out.iterdir() if ".partial" in p.name], "no half-written video is left"


def test_a_torn_last_line_is_dropped_and_that_prompt_redone(tmp_path):
    from sdvg_core.results import ResultsFolder

    folder = ResultsFolder(tmp_path / "out", {"config": {"tau": -0.7}})
    folder.path.mkdir()
    good = json.dumps({"index": 0, "prompt": "a", "settings": {"config": {"tau": -0.7}}})
    folder.log.write_text(good + "\n" + '{"index": 1, "prompt": "b", "sett')  # killed mid-write
    assert folder.pending([0, 1, 2]) == [1, 2]
    assert folder.log.read_text() == good + "\n", "the torn line is gone"


def test_a_prompt_schedule_and_a_video_to_video_run(files, tmp_path):
    schedule = tmp_path / "travel.txt"
    schedule.write_text("0: a red fox running through fresh snow\n2: the fox leaps into a snowdrift\n")
    out = tmp_path / "out"
    assert main(args(files, "--prompt-schedule", str(schedule), "--keep-first-frames", "--out", str(out))) == 0
    (record,) = lines(out)
    assert [b["prompt"] for b in record["blocks"]] == ["a red fox running through fresh snow"] * 2 + \
        ["the fox leaps into a snowdrift"]
    assert record["schedule"] == schedule.read_text().strip()
    v2v = tmp_path / "v2v"
    assert main(args(files, "--prompt", "a fox", "--video", record["video"], "--strength", "0.5",
                     "--out", str(v2v))) == 0
    (record,) = lines(v2v)
    assert record["strength"] == 0.5 and record["blocks"][0]["model_calls"]["target"] == 3


def test_a_video_that_does_not_fit_is_refused_before_loading(files, tmp_path, capsys, nothing_loads):
    from sdvg_core.video import write_video

    short = write_video(torch.rand(20, 16, 32, 3), tmp_path / "short.mp4")
    assert main(args(files, "--prompt", "a fox", "--video", str(short), "--strength", "0.5",
                     "--out", str(tmp_path / "out"))) == 2
    assert "has 20 frames; 3 blocks need 33" in capsys.readouterr().err
