"""Map ``resources:`` to the Ray backend config of Flower's simulation engine, checked up front.

Asking Ray for more per-client CPUs/GPUs than the cluster has ends in Flower's
``ActorPool is empty`` with a hung process, so it is a config error here, before Ray starts.

With ``resources.ray_address`` (an existing Ray cluster, ``host:port`` or ``ray://host:port``)
the cluster's own totals count: ``num_cpus``/``num_gpus`` must be left unset (Ray refuses them
when connecting), and the per-client request is checked against what the cluster reports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from fedmtl.config.sections import ResourcesConfig
from fedmtl.core.errors import ConfigError
from fedmtl.runtime.offline import OFFLINE_ENV

_QUIET_RAY: dict[str, Any] = {"logging_level": "error", "log_to_driver": False}


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def ray_address(resources: ResourcesConfig) -> str | None:
    """The Ray cluster to connect to (``resources.ray_address``), or None to start a local one."""
    return resources.ray_address or None


def cluster_totals(address: str) -> tuple[int, int]:
    """(CPUs, GPUs) of the running Ray cluster at ``address``; connects briefly, then disconnects
    (when this process is attached already, the cluster it is attached to)."""
    import ray

    if ray.is_initialized():  # attached already (the direct engine's warm workers): ask that cluster
        totals = ray.cluster_resources()
        return int(totals.get("CPU", 0)), int(totals.get("GPU", 0))
    try:
        ray.init(address=address, **_QUIET_RAY)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise ConfigError("resources.ray_address", f"cannot connect to the Ray cluster at {address}: {err}") from None
    try:
        totals = ray.cluster_resources()
    finally:
        ray.shutdown()  # a driver attached to an existing cluster only disconnects
    return int(totals.get("CPU", 0)), int(totals.get("GPU", 0))


def _check_client_request(resources: ResourcesConfig, cpus: float, gpus: float, where: str) -> None:
    if resources.client_cpus > cpus:
        raise ConfigError("resources.client_cpus", f"is {resources.client_cpus} but {where} only {cpus} CPUs")
    if resources.client_gpus > 0 and gpus == 0:
        raise ConfigError("resources.client_gpus", f"is {resources.client_gpus} but no GPU is available ({where} none)")
    if resources.client_gpus > gpus:
        raise ConfigError("resources.client_gpus", f"is {resources.client_gpus} but {where} only {gpus} GPUs")


def backend_config(
    resources: ResourcesConfig, detected_cpus: int | None = None, detected_gpus: int | None = None
) -> dict[str, Any]:
    """Flower's ``backend_config`` for ``run_simulation``.

    ``detected_cpus``/``detected_gpus`` stand in for what this machine (or, with
    ``ray_address``, the cluster) has; by default they are looked up.
    """
    client_resources = {"num_cpus": resources.client_cpus, "num_gpus": resources.client_gpus}
    address = ray_address(resources)
    if address is not None:
        for key in ("num_cpus", "num_gpus"):
            if getattr(resources, key) is not None:
                raise ConfigError(
                    f"resources.{key}",
                    "must be left unset with resources.ray_address (the cluster's own resources count)",
                )
        if detected_cpus is None or detected_gpus is None:
            cluster_cpus, cluster_gpus = cluster_totals(address)
            detected_cpus = cluster_cpus if detected_cpus is None else detected_cpus
            detected_gpus = cluster_gpus if detected_gpus is None else detected_gpus
        _check_client_request(resources, detected_cpus, detected_gpus, f"the Ray cluster at {address} has")
        return {"init_args": {"address": address, **_QUIET_RAY}, "client_resources": client_resources}

    cpus = resources.num_cpus if resources.num_cpus is not None else (detected_cpus or os.cpu_count() or 1)
    gpus = (
        resources.num_gpus
        if resources.num_gpus is not None
        else (visible_gpu_count() if detected_gpus is None else detected_gpus)
    )
    if resources.client_gpus > 0 and gpus == 0:
        raise ConfigError(
            "resources.client_gpus",
            f"is {resources.client_gpus} but no GPU is available (set resources.num_gpus to declare some)",
        )
    _check_client_request(resources, cpus, gpus, "Ray has")
    return {
        # address="local": always a fresh Ray instance of our own, never a cluster that happens to
        # run on this machine (ray.init() would otherwise attach to the newest one it finds)
        "init_args": {"address": "local", "num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False, **_QUIET_RAY},
        "client_resources": client_resources,
    }


@contextlib.contextmanager
def private_ray_cluster(resources: ResourcesConfig, start_timeout_s: float = 120.0) -> Iterator[str]:
    """A Ray head on 127.0.0.1 for the duration of the block; yields its address.

    Flower's Ray backend shuts Ray down after every simulation, which costs a full Ray start-up
    per run. A study runs many federations: attached to one head started here, each run only
    connects (a driver attached to an existing cluster merely disconnects at shutdown). The head
    runs in its own process group and is stopped, with everything it started, when the block ends.
    """
    init = backend_config(resources)["init_args"]
    # its own temp dir: Ray's machine-wide "current cluster" file must not point other runs at this head
    temp_dir = tempfile.mkdtemp(prefix="fedmtl-ray-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
        "--node-ip-address=127.0.0.1", f"--num-cpus={init['num_cpus']}", f"--num-gpus={init['num_gpus']}",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE_ENV}  # offline, and listening on loopback only
    head = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _accepts(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"could not start a Ray head on {address}")
            time.sleep(0.2)
        yield address
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
