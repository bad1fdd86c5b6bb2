"""``generate --workers N``: the batch spread over N Ray actors, one GPU each (CPU actors without GPUs).

Each actor is a :class:`~sdvg_core.worker.Worker`. First the actors encode the prompts (split
evenly; each frees its text encoder), then each loads its models once and takes one prompt at a
time from the queue, so a fast worker takes more. The driver is the only writer of ``--out``:
outcomes come back here, in the order they finish.

A worker that dies (killed, out of memory, its node lost) is replaced by a new actor and its
prompt handed out again, up to ``MAX_ATTEMPTS`` times per prompt; a prompt whose run raises is
recorded as failed and the batch goes on. No prompt is given out twice unless its worker died.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Iterator

from .errors import InputError, MissingFileError
from .worker import Outcome, Schedule, Worker, WorkerSpec

MAX_ATTEMPTS = 3  # a prompt that kills its worker this many times is recorded as failed


def require_ray():
    try:
        import ray
    except ImportError:
        raise MissingFileError("--workers N > 1 runs on Ray, which is not installed: pip install \".[ray]\" "
                               "(or pip install ray), or leave --workers at 1.") from None
    return ray


def actor_options(spec: WorkerSpec, workers: int, resources: dict) -> dict:
    """One GPU per actor on a GPU device, else ``threads`` CPUs; refused if the cluster cannot hold N."""
    if spec.device.startswith("cuda"):
        if spec.device != "cuda":
            raise InputError(f"--device {spec.device} with --workers {workers}: each worker gets a GPU of its own "
                             "and sees it as 'cuda'; pass --device cuda.")
        have = int(resources.get("GPU", 0))
        if have < workers:
            raise InputError(f"--workers {workers} needs {workers} GPUs, the Ray cluster has {have}: pass "
                             f"--workers {max(have, 1)}, or add GPU nodes to the cluster.")
        return {"num_gpus": 1, "num_cpus": 1}
    cpus = spec.threads or 1
    have = int(resources.get("CPU", 0))
    if have < workers * cpus:
        raise InputError(f"--workers {workers} x --threads {cpus} needs {workers * cpus} CPUs, the Ray cluster "
                         f"has {have}: lower --workers or --threads.")
    return {"num_cpus": cpus}


class ActorPool:
    """N live actors; a dead one is replaced. ``map`` hands items out as actors free up."""

    def __init__(self, ray, make: Callable[[], Any], size: int, say: Callable[[str], None]):
        self.ray, self.make, self.say = ray, make, say
        self.idle = [make() for _ in range(size)]
        self.attempts: dict[Any, int] = {}

    def map(self, items, call: Callable, describe: Callable[[Any], str]) -> Iterator[tuple[Any, Any]]:
        """(item, result or the exception its task raised), as they finish. ``call(actor, item)``
        submits the task."""
        from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError

        queue, running = deque(items), {}
        while queue or running:
            while queue and self.idle:
                actor, item = self.idle.pop(), queue.popleft()
                running[call(actor, item)] = (actor, item)
            (ready,), _ = self.ray.wait(list(running), num_returns=1)
            actor, item = running.pop(ready)
            try:
                result = self.ray.get(ready)
            except RayTaskError as error:  # the task raised; the actor lives on
                self.idle.append(actor)
                yield item, error.cause if isinstance(error.cause, Exception) else error
                continue
            except (RayActorError, WorkerCrashedError, OutOfMemoryError) as error:
                self.ray.kill(actor, no_restart=True)
                self.idle.append(self.make())
                self.attempts[item] = self.attempts.get(item, 0) + 1
                reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                if self.attempts[item] >= MAX_ATTEMPTS:
                    yield item, WorkerDied(f"its worker died {MAX_ATTEMPTS} times ({reason})")
                else:
                    self.say(f"a worker died on {describe(item)} ({reason}); retrying it on a new worker")
                    queue.appendleft(item)
                continue
            self.idle.append(actor)
            yield item, result


class WorkerDied(RuntimeError):
    """A prompt's worker process died every time it was tried."""


def run_on_ray(spec: WorkerSpec, schedules: dict[int, Schedule], *, workers: int, address: str | None,
               say: Callable[[str], None]) -> Iterator[Outcome]:
    """The outcomes of ``schedules`` on ``workers`` Ray actors, as they finish."""
    ray = require_ray()
    if not spec.device.startswith("cuda") and spec.threads is None:
        spec = replace(spec, threads=1)  # one CPU a CPU actor, and torch told so
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": _import_path()}} if address is None else None)
    try:
        remote = ray.remote(max_restarts=0)(Worker).options(**actor_options(spec, workers, ray.cluster_resources()))
        pool = ActorPool(ray, lambda: remote.remote(spec), min(workers, len(schedules)), say)
        encoded: dict[int, Any] = {}
        indices = list(schedules)
        chunks = [tuple(indices[i::workers]) for i in range(workers) if indices[i::workers]]
        for chunk, result in pool.map(chunks, lambda actor, chunk: actor.encode.remote(
                {i: schedules[i] for i in chunk}), lambda chunk: f"encoding prompts {list(chunk)}"):
            if isinstance(result, BaseException):
                raise result
            encoded.update({index: ray.put(schedule) for index, schedule in result.items()})
        for index, result in pool.map(indices, lambda actor, index: actor.generate.remote(index, encoded[index]),
                                      lambda index: f"prompt {index}"):
            if isinstance(result, BaseException):
                result = Outcome(index, schedules[index][0][1], error=f"{type(result).__name__}: {result}")
            encoded.pop(index)
            yield result
    finally:
        if started_here:
            ray.shutdown()


def _import_path() -> str:
    """A local cluster's workers import this package from where the driver does."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
