"""Executors: where the grid's jobs run. The grid (pipeline/grid.py) decides which jobs and stores
what comes back; an executor only runs `job.run_job` for each spec and hands back, as each job
finishes, its RunBundle or the exception it raised.

`EXECUTORS` maps a name (`run --executor NAME`) to "module:Class"; a module is imported only when
its executor is used (the Ray one imports ray). Adding an executor: one module here with a class
taking `(config: ExecutorConfig, loaded: dict)` and a `run(jobs)` generator (see `Executor`),
plus one `register_executor` call or `EXECUTORS` entry.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, Union

if TYPE_CHECKING:
    from benchmark.config import ExecutorConfig
    from benchmark.pipeline.spec import JobSpec
    from benchmark.store.writes import RunBundle

#: name -> ("module:Class", one-line description)
EXECUTORS: dict[str, tuple[str, str]] = {
    "inprocess": ("benchmark.pipeline.executors.inprocess:InProcessExecutor",
                  "one job after another in this process"),
    "ray": ("benchmark.pipeline.executors.ray:RayExecutor",
            "each job a Ray task on a local Ray instance or a cluster (--ray-address)"),
}

#: what an executor yields per job: (position in the grid, spec, bundle or the exception the job raised)
Outcome = tuple[int, "JobSpec", Union["RunBundle", Exception]]


class Executor(Protocol):
    def run(self, jobs: list[tuple[int, JobSpec]]) -> Iterator[Outcome]:
        """Run each (position, spec); yield each job's outcome as it finishes. The caller stores it
        before asking for the next one, and closes the generator to stop early (remaining jobs are
        then cancelled). KeyboardInterrupt propagates."""
        ...


def register_executor(name: str, target: str, description: str) -> None:
    """Add an executor: `target` is "module:Class"."""
    if name in EXECUTORS:
        raise ValueError(f"executor {name!r} is registered twice")
    EXECUTORS[name] = (target, description)


def list_executors() -> list[str]:
    return list(EXECUTORS)


def create_executor(config: ExecutorConfig, *, loaded: dict | None = None) -> Executor:
    """The executor `config.executor` names, set up from the config; `loaded` is the grid's shared
    dataset loads (see job.load_job_dataset), used where jobs run in this process."""
    from benchmark.errors import UnknownNameError

    if config.executor not in EXECUTORS:
        raise UnknownNameError("executor", config.executor, EXECUTORS)
    module, cls = EXECUTORS[config.executor][0].split(":")
    return getattr(importlib.import_module(module), cls)(config, loaded={} if loaded is None else loaded)
