"""Task balancing registry: ``client.balancing: {name: gradnorm, alpha: 1.5}``."""

from __future__ import annotations

from fedmtl.methods.balancing.base import Balancer, BalancerRound
from fedmtl.methods.balancing.dwa import DWA
from fedmtl.methods.balancing.gradnorm import GradNorm
from fedmtl.methods.balancing.static import Static
from fedmtl.methods.balancing.uncertainty import Uncertainty

BALANCERS = Balancer.REGISTRY
for _balancer in (Static, Uncertainty, GradNorm, DWA):
    BALANCERS.register(_balancer)

__all__ = ["BALANCERS", "DWA", "Balancer", "BalancerRound", "GradNorm", "Static", "Uncertainty"]
