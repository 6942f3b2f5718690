"""The built-in study arms, with their properties: the one place that names them.

An arm is a configuration of the same federation, never a loop of its own: its ``settings`` (key path
-> value) are applied to the study's config, and the run goes through the one round driver like any
other, writing the same run files. A user-defined arm (``study.arms: [{name: pcgrad, base: fed_mtl,
set: {...}}]``) starts from its base arm's settings and adds its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Arm:
    name: str
    summary: str
    settings: Mapping[str, Any] = field(default_factory=dict)  # key.path -> value, applied to the study's config
    single_task: bool = False  # one model per task: the baseline that defines transfer


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(
            "local_stl",
            "each client trains each of its tasks alone, no federation (nothing is released, so no privacy "
            "mechanism: the reference a private federation is measured against)",
            {"clients.participants": "client_tasks", "server.cohorts": "participant", "privacy": {}},
            single_task=True,
        ),
        Arm(
            "fed_stl",
            "one federation per task among the clients that hold it",
            {"clients.participants": "client_tasks", "server.cohorts": "task"},
            single_task=True,
        ),
        Arm("fed_mtl", "the configured federated multi-task run, as it stands"),
        Arm(
            "fed_full",
            "fed_mtl with the heads federated too, averaged among the clients that hold each task",
            {"server.federate_heads": True},
        ),
        Arm(
            "adaptive",
            "fed_mtl that avoids negative transfer: clients grouped on their summed updates after warm-up "
            "(each group its own encoder), TAG task affinity measured, heads initialised per task; per-client "
            "roll-back (client.rollback) is off: on the tuning seeds it cost more than it saved (docs/FINDINGS.md "
            "section 6)",
            {
                "server.grouping": {"name": "affinity", "signal": "updates", "warmup_rounds": 3},
                "client.affinity_every": 5,
                # same-task clients start from the same head, so that their encoder updates agree
                "model.head_init": "task",
            },
        ),
        Arm(
            "central_mtl",
            "all clients' training data pooled into one multi-task model (the upper bound), trained with the "
            "federation's compute and evaluated on each client's held-out data (no privacy mechanism: pooling "
            "is the non-private bound)",
            {"clients.participants": "pooled", "server.cohorts": "participant", "privacy": {}},
        ),
    )
}

ALL_ARMS = "all"
"""In ``study.compare``, ``[all, b]`` compares every other arm with arm ``b``."""
ARM_LOCKED_SECTIONS = ("seed", "data", "clients", "study", "sweep", "output")
"""What a user-defined arm may not change: arms share the study's data, clients and seeds so that their runs pair."""
