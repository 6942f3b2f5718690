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

import math

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


def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """Andrew et al.'s split of the privacy between the update and the clipped count: the update's noise
    multiplier ``z_D = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, so that the two releases together cost as one
    Gaussian mechanism of multiplier ``z``; ``inf`` when the count's noise alone costs it all."""
    if count_noise <= 0 or noise_multiplier <= 0:
        return math.inf
    remaining = noise_multiplier**-2 - (2 * count_noise) ** -2
    return remaining**-0.5 if remaining > 0 else math.inf


class CentralMechanism:
    """Noise at the server: rows clipped to ``C``, ``N(0, (z_D C / K)^2)`` on their mean. With a
    ``target_quantile`` (adaptive clipping, Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private
    Learning with Adaptive Clipping", NeurIPS 2021), ``C`` follows the quantile of the update norms:
    ``C <- C exp(-lr (b - target))`` with ``b`` the share of rows within ``C``, released with noise
    ``N(0, count_noise^2)`` on the count; the update's multiplier becomes ``z_D`` (above). Stateful (``C``),
    checkpointed through ``state_dict``."""

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        target_quantile: float | None,
        clip_lr: float,
        count_noise: float,
    ) -> None:
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self.target_quantile, self.clip_lr, self.count_noise = target_quantile, clip_lr, count_noise
        adaptive = target_quantile is not None and noise_multiplier > 0
        self.update_multiplier = (
            update_noise_multiplier(noise_multiplier, count_noise) if adaptive else noise_multiplier
        )
        self._within = 0  # rows within the bound at the last clip (none before the first)

    def clip(self, matrix: torch.Tensor) -> float:
        """Clip the rows in place to the current bound; returns the bound used."""
        bound = self.clip_norm
        self._within = int((matrix.norm(dim=1) <= bound).sum())
        clip_rows(matrix, bound)
        return bound

    def noise(self, direction: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
        """The noised mean of ``rows`` clipped rows; then the bound moves (adaptive clipping)."""
        if self.noise_multiplier > 0:
            direction = direction + gaussian(
                direction, central_noise_std(self.update_multiplier, self.clip_norm, rows), generator
            )
        if self.target_quantile is not None:
            count = self._within + float(torch.randn((), generator=generator, dtype=torch.float64)) * self.count_noise
            self.clip_norm *= math.exp(-self.clip_lr * (count / rows - self.target_quantile))
        return direction

    def state_dict(self) -> dict[str, float]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """The clipping bound as checkpointed (adaptive clipping has moved it since the start)."""
        self.clip_norm = float(state["clip_norm"])
