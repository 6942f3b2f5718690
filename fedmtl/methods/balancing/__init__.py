"""Task balancing registry: ``client.balancing: {name: gradnorm, alpha: 1.5}``."""

from __future__ import annotations

from fedmtl.config.typed import register_component_base
from fedmtl.methods.balancing.base import Balancer, BalancerRound
from fedmtl.methods.balancing.dwa import DWA
from fedmtl.methods.balancing.gradnorm import GradNorm
from fedmtl.methods.balancing.static import Static
from fedmtl.methods.balancing.uncertainty import Uncertainty

BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (Static, Uncertainty, GradNorm, DWA)}
register_component_base(Balancer, BALANCERS)

__all__ = ["BALANCERS", "DWA", "Balancer", "BalancerRound", "GradNorm", "Static", "Uncertainty"]
