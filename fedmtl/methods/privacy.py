"""Client-level differential privacy of encoder updates, as pure tensor code (no Flower).

DP-FedAvg (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models",
ICLR 2018): each client's update ``g_k`` is clipped to L2 norm ``C`` (``g_k * min(1, C / ||g_k||)``) and
Gaussian noise of standard deviation ``z * C`` (``z`` the noise multiplier) is added to the sum. Noise
at the server (a trusted server, central DP): the server clips every row and adds ``N(0, (z C / K)^2)`` to
the uniform mean of its ``K`` rows. Noise on each client (local noise, for an untrusted server): the
client clips its own update and adds ``N(0, (z C)^2)`` before sending it, so whatever the server does
with it afterwards is post-processing (any aggregator).
"""

from __future__ import annotations

import torch


def clip_scale(norms: torch.Tensor, bound: float) -> torch.Tensor:
    """``min(1, C / ||g||)`` per norm (1 for a zero update)."""
    return torch.clamp(bound / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)


def clip_rows(matrix: torch.Tensor, bound: float) -> torch.Tensor:
    """Every row of ``[K, P]`` scaled to L2 norm at most ``bound`` (in place; returns ``matrix``)."""
    matrix.mul_(clip_scale(matrix.norm(dim=1), bound)[:, None])
    return matrix


def gaussian(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``N(0, std^2)`` noise of ``like``'s shape and dtype, drawn on the CPU from ``generator`` (reproducible
    on any device) and moved to ``like``'s device."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return noise.mul_(std).to(like.device)


def central_noise_std(noise_multiplier: float, bound: float, rows: int) -> float:
    """The noise on the uniform mean of ``rows`` clipped updates: ``z C / K``."""
    return noise_multiplier * bound / rows


def privatise_update(
    update: torch.Tensor, bound: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """A client's own update clipped to ``bound`` plus ``N(0, (z C)^2)`` per coordinate (local noise)."""
    clipped = update * clip_scale(update.norm(), bound)
    return clipped + gaussian(clipped, noise_multiplier * bound, generator)
