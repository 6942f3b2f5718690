"""Seeding torch's global generator, which module initialisation (``nn.Linear``'s weights) draws from."""

from __future__ import annotations

import torch


def seed_global(seed: int) -> None:
    """Seed the global CPU generator, and CUDA's too where a GPU is present.

    ``torch.manual_seed`` also queues a lazy seed for CUDA, XPU and MTIA when they are not yet
    initialised, recording a stack trace for each: about 140 us a call on a CPU-only machine, paid
    for every model a client builds. Models are built on the CPU (and moved after), so their
    initialisation depends on the CPU generator alone; the draw is the same as ``torch.manual_seed``'s.
    """
    if torch.cuda.is_available():
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)
