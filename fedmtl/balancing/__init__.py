"""Task balancing registry: ``client.balancing: {name: gradnorm, alpha: 1.5}``."""

from __future__ import annotations

from fedmtl.balancing.base import Balancer, BalancerRound
from fedmtl.balancing.dwa import DWA
from fedmtl.balancing.gradnorm import GradNorm
from fedmtl.balancing.static import Static
from fedmtl.balancing.uncertainty import Uncertainty
from fedmtl.typed import register_component_base

BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (Static, Uncertainty, GradNorm, DWA)}
register_component_base(Balancer, BALANCERS)

__all__ = ["BALANCERS", "DWA", "Balancer", "BalancerRound", "GradNorm", "Static", "Uncertainty"]
