"""The in-process executor: jobs one after another in this process, sharing dataset loads and decoded
images (data/memo.py: each dataset is decoded or read from the disk cache once per size for the grid)."""
from __future__ import annotations

from collections.abc import Iterator

from benchmark.config import ExecutorConfig
from benchmark.data.memo import DecodedMemo
from benchmark.pipeline.executors import Outcome
from benchmark.pipeline.job import load_job_dataset, run_job
from benchmark.pipeline.spec import JobSpec


class InProcessExecutor:
    def __init__(self, config: ExecutorConfig = ExecutorConfig(), *, loaded: dict | None = None):
        self.config = config
        self.loaded = {} if loaded is None else loaded
        self.memo = DecodedMemo()

    def run(self, jobs: list[tuple[int, JobSpec]]) -> Iterator[Outcome]:
        try:
            for index, spec in jobs:
                try:
                    result = run_job(spec, load_job_dataset(spec, self.loaded), self.memo)
                except Exception as exc:  # KeyboardInterrupt and SystemExit go through
                    result = exc
                yield index, spec, result
        finally:
            self.memo.close()
