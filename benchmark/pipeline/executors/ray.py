"""The Ray executor: each job a Ray task (`job.run_job`, no DB I/O) holding its CPUs and GPUs.

This process (the driver) stays the only DuckDB writer: tasks return their RunBundle and the grid
stores each one as it finishes (`ray.wait`), in one transaction. Without `--ray-address` a local Ray
instance is started for the grid and stopped after; with one, the driver joins that cluster.

Workers see neither this process's environment nor its working directory, so every path a job
reads (data root, decode cache, segmenter, weights) is resolved here to an absolute one and put in
the spec they get. The data root must be at the same path on every node; the checkpoint folder
too, unless checkpoints are not shared (`--checkpoints-shared no`): then a worker saves the
checkpoint in a temporary folder and returns its two files, and this process writes them.
Rows are stored as the in-process executor stores them: the spec as given in `config_json`, and
the checkpoint path under --checkpoint-dir as this process names it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.exceptions import RayError, RayTaskError
from tqdm import tqdm

from benchmark import paths
from benchmark.config import ExecutorConfig
from benchmark.errors import BenchmarkError
from benchmark.pipeline.executors import Outcome
from benchmark.pipeline.job import load_job_dataset, run_job
from benchmark.pipeline.spec import JobSpec
from benchmark.store.writes import RunBundle
from benchmark.training.checkpoints import checkpoint_files, write_checkpoint_files

log = logging.getLogger(__name__)

WAIT_S = 1.0       # the driver wakes this often while it waits, so that Ctrl-C is handled at once
MAX_RETRIES = 1    # a task whose worker died (node lost, killed for memory) runs once more; one that raises, never
_LOADED: dict = {}  # in a worker process: datasets loaded by its earlier tasks (workers are reused)


@dataclass
class TaskResult:
    """What one task sends back."""

    bundle: RunBundle
    checkpoint_rel: str                    # the checkpoint's .safetensors path under the checkpoint folder
    checkpoint: dict[str, bytes] | None    # its files, when the checkpoint folder is not shared
    node: str
    seconds: float


def run_task(spec: JobSpec, ship_checkpoint: bool, threads: int) -> TaskResult:
    """The body of a Ray task (runs in a worker): run the job; with `ship_checkpoint`, save the
    checkpoint in a temporary folder and return its files instead of leaving it on this node."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="cxr-audit-ckpt-") if ship_checkpoint else None
    try:
        if tmp:
            spec = dataclasses.replace(spec, checkpoint_dir=tmp)
        bundle = run_job(spec, load_job_dataset(spec, _LOADED))
        weights = Path(bundle.run["checkpoint_path"])
        files = checkpoint_files(weights) if tmp else None
        rel = weights.relative_to(spec.checkpoint_dir)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return TaskResult(bundle, str(rel), files, socket.gethostname(), time.perf_counter() - started)


_remote_task = ray.remote(run_task)


def worker_spec(spec: JobSpec, checkpoint_dir: Path) -> JobSpec:
    """The spec a worker runs: paths resolved here and absolute, no progress bars (the driver has one)."""
    data, train, audit = spec.data, spec.train, spec.audit
    root = paths.data_root(data.data_root)
    data = dataclasses.replace(data, data_root=str(root.resolve()) if root else None,
                               cache_dir=str(paths.cache_dir(data.cache_dir).resolve()))
    if train.weights_dir:
        train = dataclasses.replace(train, weights_dir=str(Path(train.weights_dir).expanduser().resolve()))
    segmenter = paths.segmenter_stem(audit.segmenter)
    if segmenter != getattr(paths, "SHIPPED_SEGMENTER", None):  # the package's own: each worker has its copy
        audit = dataclasses.replace(audit, segmenter=str(segmenter.resolve()))
    return dataclasses.replace(spec, data=data, train=train, audit=audit, checkpoint_dir=str(checkpoint_dir),
                               progress=False)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RayExecutor:
    def __init__(self, config: ExecutorConfig = ExecutorConfig(), *, loaded: dict | None = None):
        self.config = config  # `loaded` is not used: workers load their datasets themselves
        self.started = False  # whether this executor started the Ray instance (and so stops it)

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        if ray.is_initialized():  # a library caller's (or a test's) instance: use it, leave it running
            return
        address = self.config.ray_address
        try:
            if address:
                ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=_cpu_count(), include_dashboard=False, log_to_driver=True,
                         logging_level=logging.WARNING)
                self.started = True
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise BenchmarkError(f"cannot start or reach {where}: {exc}. Start a cluster with `ray start --head` "
                                 "(workers: `ray start --address=HEAD:6379`) or leave out --ray-address "
                                 "to run on this machine") from exc
        log.info("Ray: %s, %s", "local instance started" if self.started else f"joined {address}",
                 {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})

    def disconnect(self) -> None:
        if self.started:
            ray.shutdown()
            self.started = False

    # ------------------------------------------------------------------ resources

    def resources(self, specs: list[JobSpec]) -> tuple[int, float, bool]:
        """(CPUs, GPUs per task, whether workers see the checkpoint folder), checked against the
        cluster so that a task that could never be placed fails now instead of waiting for ever."""
        cfg = self.config
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        has_gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        gpus = cfg.gpus_per_job
        if gpus is None:
            gpus = 1.0 if has_gpus and any(s.device != "cpu" for s in specs) else 0.0
        if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
            raise BenchmarkError(f"--gpus-per-job {gpus}: use a fraction up to 1 (jobs share a GPU) or a whole number")
        if gpus > max((n["Resources"].get("GPU", 0) for n in nodes), default=0):
            raise BenchmarkError(f"--gpus-per-job {gpus}, but no node of the Ray cluster has that many GPUs "
                                 f"({has_gpus:g} in all); use --gpus-per-job 0 to run on CPUs")
        if gpus == 0 and any(s.device.startswith("cuda") for s in specs):
            raise BenchmarkError("--device cuda on Ray needs --gpus-per-job above 0 (Ray hides the GPUs from "
                                 "tasks that hold none)")
        most_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        if cfg.cpus_per_job < 1 or cfg.cpus_per_job > most_cpus:
            raise BenchmarkError(f"--cpus-per-job {cfg.cpus_per_job}: each node of the Ray cluster has at most "
                                 f"{most_cpus:g} CPUs")
        shared = {"yes": True, "no": False}.get(cfg.checkpoints_shared, self.started or len(nodes) == 1)
        return cfg.cpus_per_job, float(gpus), shared

    # ------------------------------------------------------------------ the grid

    def run(self, jobs: list[tuple[int, JobSpec]]) -> Iterator[Outcome]:
        if not jobs:
            return
        self.connect()
        try:
            yield from self._run(jobs)
        finally:
            self.disconnect()

    def _run(self, jobs: list[tuple[int, JobSpec]]) -> Iterator[Outcome]:
        cpus, gpus, shared = self.resources([s for _, s in jobs])
        log.info("Ray: %d jobs, %d CPU and %g GPU each, checkpoints %s", len(jobs), cpus, gpus,
                 "written by the workers" if shared else "sent back to this process")
        pending = {}
        for index, spec in jobs:
            ckpt = paths.checkpoints_dir(spec.checkpoint_dir).resolve()
            ref = _remote_task.options(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES,
                                       name=spec.run_id).remote(worker_spec(spec, ckpt), not shared, cpus)
            pending[ref] = (index, spec)
        bar = tqdm(total=len(jobs), desc="jobs", unit="job", file=sys.stderr,
                   disable=not any(s.progress for _, s in jobs))
        finished = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    index, spec = pending.pop(ref)
                    result, line = self.collect(ref, spec)
                    yield index, spec, result  # stored by the grid before it asks for the next
                    finished += 1
                    tqdm.write(f"[{finished}/{len(jobs)}] {line}", file=sys.stderr)
                    bar.update(1)
        finally:
            bar.close()
            if pending:  # Ctrl-C, or the grid stopped: nothing more is stored, so nothing more should run
                for ref in pending:
                    # force: kill the worker. A plain cancel only raises KeyboardInterrupt in a running
                    # task, which a training job in a long torch call may not see for a long time.
                    # Checkpoints are written to .tmp and renamed, so a killed worker leaves none half-written.
                    ray.cancel(ref, force=True)
                log.warning("Ray: %d unfinished jobs cancelled", len(pending))

    def collect(self, ref, spec: JobSpec) -> tuple[RunBundle | Exception, str]:
        """The task's bundle made ready to store (or the exception it raised), and its progress line."""
        try:
            res: TaskResult = ray.get(ref)
            bundle = res.bundle
            target = paths.checkpoints_dir(spec.checkpoint_dir) / res.checkpoint_rel
            if res.checkpoint is not None:
                write_checkpoint_files(res.checkpoint, target.with_suffix(""))
        except RayTaskError as err:  # the job raised: keep its own exception (its type decides what follows)
            log.debug("%s", err)     # with the worker's traceback
            cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
            return cause, f"{spec.run_id}: failed: {type(cause).__name__}: {cause}"
        except (RayError, OSError) as err:  # the worker died, or the checkpoint could not be written here
            return err, f"{spec.run_id}: failed: {type(err).__name__}: {err}"
        # as the in-process executor stores them: the spec as given, the checkpoint as named here
        bundle.run["checkpoint_path"] = str(target)
        bundle.run["config_json"] = json.dumps(spec.flat(), default=str)
        if bundle.segmenter:
            stem = paths.segmenter_stem(spec.audit.segmenter)
            bundle.segmenter = {**bundle.segmenter, "checkpoint_path": str(stem.with_suffix(".safetensors"))}
        accuracy = bundle.tables.get("metrics")
        acc = None
        if accuracy is not None and not accuracy.empty:
            rows = accuracy[(accuracy.split == "test") & (accuracy.metric == "accuracy")]
            acc = float(rows.value.iloc[0]) if len(rows) else None
        shown = f", test accuracy {acc:.3f}" if acc is not None else ""
        return bundle, f"{spec.run_id}: done{shown} in {res.seconds:.0f} s on {res.node}"
