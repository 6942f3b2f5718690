"""Map ``resources:`` to the Ray backend config of Flower's simulation engine, checked up front.

Asking Ray for more per-client CPUs/GPUs than the cluster has ends in Flower's
``ActorPool is empty`` with a hung process, so it is a config error here, before Ray starts.
"""

from __future__ import annotations

import os
from typing import Any

from fedmtl.config import ResourcesConfig
from fedmtl.errors import ConfigError


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def backend_config(resources: ResourcesConfig, detected_cpus: int | None = None, detected_gpus: int | None = None) -> dict[str, Any]:
    cpus = resources.num_cpus if resources.num_cpus is not None else (detected_cpus or os.cpu_count() or 1)
    gpus = resources.num_gpus if resources.num_gpus is not None else (visible_gpu_count() if detected_gpus is None else detected_gpus)
    if resources.client_cpus > cpus:
        raise ConfigError("resources.client_cpus", f"is {resources.client_cpus} but Ray has only {cpus} CPUs (resources.num_cpus)")
    if resources.client_gpus > 0 and gpus == 0:
        raise ConfigError("resources.client_gpus", f"is {resources.client_gpus} but no GPU is available (set resources.num_gpus to declare some)")
    if resources.client_gpus > gpus:
        raise ConfigError("resources.client_gpus", f"is {resources.client_gpus} but Ray has only {gpus} GPUs")
    return {
        "init_args": {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False, "logging_level": "error", "log_to_driver": False},
        "client_resources": {"num_cpus": resources.client_cpus, "num_gpus": resources.client_gpus},
    }
