"""A study's runs several at a time over a Ray cluster (``study.max_concurrent_runs``).

Each run is one Ray task that runs the whole federation, pretraining phase included, on the in-process
engine: its clients train one after another in the task's process (the engines give the same results:
``tests/test_study_pool.py``), so a run reserves what one client does (``resources.client_cpus``, one CPU
by default, and ``client_gpus``) and Ray is free to place runs on any node that has it.
Tasks write their run directories themselves, so the study directory must be on a filesystem that every
node sees at the same path (one machine, or a shared mount). A task whose node is lost is run again by
Ray (``MAX_RETRIES``) from scratch, and a run is recorded once, when its task returns: the study ends with
every run present exactly once. ``study.json`` records where each run went (``node``, ``node_ip``), when
(``started_at``, ``finished_at``, wall seconds) and how many times it started (``attempts``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core.errors import FederationError
from fedmtl.experiments.runner import Job, run_job
from fedmtl.runtime.offline import OFFLINE_ENV
from fedmtl.runtime.resources import backend_config, ray_address
from server.simulation import federate_in_process

MAX_RETRIES = 3  # times Ray runs a task again after its worker or node died


def _run_in_task(job: Job) -> dict[str, Any]:
    context = ray.get_runtime_context()
    placement = {"node": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "started_at": time.time()}
    # how many times this run has started (a retry after a lost node is the second), counted beside it
    counter = job.run_dir.parent / f".{job.run_dir.name}.attempts"
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    counter.write_text(str(attempts))
    run_job(job, federate_in_process)
    counter.unlink(missing_ok=True)
    return {**placement, "finished_at": time.time(), "attempts": attempts}


class RayRunPool:
    """:class:`fedmtl.experiments.runner.RunPool` over the Ray cluster this process is connected to; each
    run reserves what one client does (``resources.client_cpus``, ``client_gpus``): its clients train one
    at a time."""

    def __init__(self, slots: int, cpus: float = 1.0, gpus: float = 0.0) -> None:
        self.slots = slots
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES)(_run_in_task)

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        waiting, running = list(jobs), dict[ray.ObjectRef, Job]()
        try:
            while waiting or running:
                while waiting and len(running) < self.slots:
                    job = waiting.pop(0)
                    running[self.task.remote(job)] = job
                [ready], _ = ray.wait(list(running), num_returns=1)
                job = running.pop(ready)
                try:
                    placement = ray.get(ready)
                except ray.exceptions.RayTaskError as err:
                    raise FederationError(f"run {job.arm} seed {job.seed}: {err.cause}") from None
                yield job, placement
        finally:
            for ref in running:  # a failed run or an interrupted study: the others stop too
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


def concurrent_slots(cfg: ExperimentConfig) -> int:
    """How many runs go at once: ``study.max_concurrent_runs``, or with 0 what the cluster at
    ``resources.ray_address`` has CPUs for (no address: 1, one after another)."""
    wanted = cfg.study.max_concurrent_runs
    if wanted == 0 and not ray_address(cfg.resources):
        return 1
    return wanted


@contextlib.contextmanager
def study_pool(cfg: ExperimentConfig) -> Iterator[RayRunPool]:
    """Connected to ``resources.ray_address`` (else a local Ray of this machine's CPUs), a pool of
    ``study.max_concurrent_runs`` slots (0: the cluster's CPUs, one per run)."""
    os.environ.update(OFFLINE_ENV)  # inherited by the workers Ray starts on this machine
    ray.init(**backend_config(cfg.resources)["init_args"])
    try:
        cpus, gpus = cfg.resources.client_cpus, cfg.resources.client_gpus
        totals = ray.cluster_resources()
        fits = [totals.get("CPU", 0.0) / cpus] + ([totals.get("GPU", 0.0) / gpus] if gpus > 0 else [])
        yield RayRunPool(cfg.study.max_concurrent_runs or max(1, int(min(fits))), cpus, gpus)
    finally:
        ray.shutdown()  # attached to a cluster: only disconnects
