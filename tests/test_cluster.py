"""`generate --workers N` on a local Ray cluster of CPU actors, with tiny files in the real formats."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from sdvg_core import cluster
from sdvg_core.__main__ import main
from sdvg_core.config import SDVGConfig
from sdvg_core.errors import InputError, MissingFileError
from sdvg_core.tiny import write_tiny_model_files, write_tiny_text_encoder
from sdvg_core.worker import WorkerSpec

ray = pytest.importorskip("ray")

PROMPTS = ["a red fox running through fresh snow", "a stylish woman walks down a neon street",
           "waves crash on black volcanic rocks", "an astronaut floats above the earth"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = write_tiny_model_files(root)
    paths["text_encoder"] = write_tiny_text_encoder(root / "text_encoders" / "umt5")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    paths["prompts"] = prompts
    return paths


def cli_args(files, out: Path, *extra: str) -> list[str]:
    return ["generate", "--drafter", str(files["drafter"]), "--target", str(files["target"]),
            "--vae", str(files["vae"]), "--router", str(files["router"]), "--text-encoder", str(files["text_encoder"]),
            "--width", "32", "--height", "16", "--blocks", "2", "--prompts", str(files["prompts"]),
            "--threads", "1", "--out", str(out), *extra]


def records(out: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == len({r["index"] for r in lines}), "no prompt twice"
    return {r["index"]: r for r in lines}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in ("seconds", "video")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def ray_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::Worker"):
                pids.append(int(entry.name))
    return pids


def kill_a_worker_after_the_first_video(log: Path, done: threading.Event, killed: list) -> None:
    """Watches the batch's log and, at its first line, kills one of the two workers: prompts are still
    queued, so whichever it is loses one (the prompt it is on, or the next one it is handed)."""
    while not done.is_set():
        if log.is_file() and log.read_text().count("\n") >= 1:
            killed.append(pids := ray_worker_pids())
            if pids:  # none found fails the test's own assertion, not this thread
                os.kill(pids[0], signal.SIGKILL)
            return
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes in /proc")
def test_two_workers_one_killed_midway_write_every_prompt_once_as_one_process_does(files, tmp_path, capsys,
                                                                                   monkeypatch):
    """One Ray run covers both promises: a dead worker is replaced, and sharing out changes no byte."""
    assert main(cli_args(files, tmp_path / "one")) == 0  # the reference: the same batch, no Ray
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_a_worker_after_the_first_video,
                               args=(tmp_path / "two" / "results.jsonl", done, killed))
    watcher.start()
    try:
        code = main(cli_args(files, tmp_path / "two", "--workers", "2"))  # this process is Ray's driver
    finally:
        done.set()
        watcher.join()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(killed) == 1 and len(killed[0]) == 2, f"two Ray workers, one killed: {killed}"
    assert "a worker died on prompt" in err and "retrying it on a new worker" in err
    assert f"({len(PROMPTS)} written, 0 already done, 0 failed)" in out

    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert sorted(two) == list(range(len(PROMPTS))), "every prompt exactly once"
    for index in one:
        assert without_timings(two[index]) == without_timings(one[index])
        assert Path(two[index]["video"]).read_bytes() == Path(one[index]["video"]).read_bytes(), \
            f"prompt {index}: same bytes whichever worker made it"
    assert len({json.dumps(without_timings(r["blocks"])) for r in one.values()}) == len(PROMPTS), \
        "the prompts give different videos, so a mix-up would show"
    assert not [p for p in (tmp_path / "two").iterdir() if ".partial" in p.name]


class FakeRay:
    """Just enough of ray for ActorPool: tasks finish at once, some by their actor dying."""

    def __init__(self, outcome):
        self.outcome, self.tasks, self.killed = outcome, {}, []

    def wait(self, refs, num_returns):
        return [refs[0]], refs[1:]

    def get(self, ref):
        actor, item = self.tasks.pop(ref)
        return self.outcome(actor, item)

    def kill(self, actor, no_restart):
        self.killed.append(actor)


def pool_run(outcome, items, size=2):
    from ray.exceptions import RayActorError

    fake, made, said = FakeRay(outcome), [], []

    def make():
        made.append(f"actor{len(made)}")
        return made[-1]

    def call(actor, item):
        ref = object()
        fake.tasks[ref] = (actor, item)
        return ref

    pool = cluster.ActorPool(fake, make, size, said.append)
    results = list(pool.map(items, call, lambda item: f"prompt {item}"))
    return results, made, fake.killed, said, RayActorError


def test_the_pool_retries_a_dead_workers_item_then_gives_up():
    from ray.exceptions import RayActorError

    ran_on: dict[str, list] = {}

    def outcome(actor, item):
        ran_on.setdefault(item, []).append(actor)
        if item == "always dies" or (item == "dies once" and len(ran_on[item]) == 1):
            raise RayActorError()
        return f"{item} done"

    results, made, killed, said, _ = pool_run(outcome, ["a", "dies once", "b"])
    assert sorted(results) == [("a", "a done"), ("b", "b done"), ("dies once", "dies once done")]
    assert killed == ran_on["dies once"][:1] and len(made) == 3, "the dead actor was killed and replaced"
    assert ran_on["dies once"][1] != ran_on["dies once"][0], "retried on another actor"
    assert len(said) == 1 and said[0].startswith("a worker died on prompt dies once")
    assert said[0].endswith("retrying it on a new worker")

    results, made, killed, said, _ = pool_run(outcome, ["always dies", "a"])
    failed = dict(results)["always dies"]
    assert isinstance(failed, cluster.WorkerDied) and f"{cluster.MAX_ATTEMPTS} times" in str(failed)
    assert dict(results)["a"] == "a done" and len(killed) == cluster.MAX_ATTEMPTS


def test_a_task_that_raises_is_its_items_result_and_the_actor_lives_on():
    from ray.exceptions import RayTaskError

    def outcome(actor, item):
        if item == "bad":
            raise RayTaskError("generate", "traceback", ValueError("a bad prompt"))
        return item

    results, made, killed, *_ = pool_run(outcome, ["bad", "good"], size=1)
    assert isinstance(dict(results)["bad"], ValueError) and dict(results)["good"] == "good"
    assert killed == [] and made == ["actor0"]


def spec(device="cpu", threads=2) -> WorkerSpec:
    return WorkerSpec("d", "ema", "t", "v", "r", "te", None, None, SDVGConfig(), device, "float32", threads)


def test_the_cluster_must_hold_the_workers_asked_for():
    assert cluster.actor_options(spec("cuda"), 2, {"GPU": 2, "CPU": 8}) == {"num_gpus": 1, "num_cpus": 1}
    assert cluster.actor_options(spec(), 2, {"CPU": 4}) == {"num_cpus": 2}
    with pytest.raises(InputError, match="needs 4 GPUs, the Ray cluster has 1: pass --workers 1"):
        cluster.actor_options(spec("cuda"), 4, {"GPU": 1, "CPU": 8})
    with pytest.raises(InputError, match="pass --device cuda"):
        cluster.actor_options(spec("cuda:1"), 2, {"GPU": 2})
    with pytest.raises(InputError, match="needs 6 CPUs, the Ray cluster has 4"):
        cluster.actor_options(spec(threads=3), 2, {"CPU": 4})


def test_without_ray_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingFileError, match=r'pip install "\.\[ray\]"'):
        cluster.require_ray()
