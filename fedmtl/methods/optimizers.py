"""Optimizers by name (``client.optimizer``, ``server.optimizer.name``): one registry for both sides.

The server steps the global encoder along the aggregated direction with one of these (``sgd`` with
lr 1 and no momentum is FedAvg, with momentum FedAvgM; ``adam`` is FedAdam with PyTorch's bias
correction, Reddi et al., ICLR 2021); a client trains its model and private parameters with one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry


@dataclass(frozen=True)
class OptimizerSettings:
    """The hyperparameters a caller has; each optimizer takes those it defines."""

    lr: float
    momentum: float = 0.0  # sgd
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam (FedAdam's tau on the server)


class Optimizer(Component):
    REGISTRY: ClassVar[Registry] = Registry("optimizer", (__name__,))

    @abstractmethod
    def make(self, params: Iterable[torch.nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
        """A torch optimizer over ``params``."""


@dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum and L2 weight decay."""

    name: ClassVar[str] = "sgd"

    def make(self, params: Iterable[torch.nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) with bias correction and L2 weight decay."""

    name: ClassVar[str] = "adam"

    def make(self, params: Iterable[torch.nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            params, lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay
        )


OPTIMIZERS = Optimizer.REGISTRY
for _optimizer in (SGD, Adam):
    OPTIMIZERS.register(_optimizer)
