"""Per-client roll-back (config ``client.rollback``): a client decides, per task, from a validation
split carved out of its own training data, whether to predict with the federated model, with a
model it trains on its own data alone, or with the mean of the two models' outputs.

This is the practitioner's rule "roll back to single-task training when the gains of sharing are
not clear", made inside the federation and per client (Collaboration equilibrium: Cui et al., 2021,
keep only the collaborators that help; Ditto: Li et al., ICML 2021, a personal model beside the
global one, its regularised extreme being local training). The choice uses the validation split
only: the evaluation data are never seen before they are scored. The federated option wins ties:
``local`` or ``mix`` is chosen only when its validation loss is below the federated one by more than
``margin`` (a fraction of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec
from fedmtl.model.networks import MultiTaskModel

FEDERATED, LOCAL, MIX = "federated", "local", "mix"
OPTIONS = (FEDERATED, LOCAL, MIX)


def carve_validation(
    data: Mapping[str, TaskData], fraction: float, seed: int
) -> tuple[dict[str, TaskData], dict[str, TaskData]]:
    """Each task's training data split into (train, validation): a seeded ``fraction`` of its examples
    (at least one when it has two or more; none of a task with one example) is held out."""
    train, validation = {}, {}
    for i, (task, d) in enumerate(sorted(data.items())):
        n = len(d)
        held = min(max(1, round(fraction * n)), n - 1) if n >= 2 else 0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + i))
        keep, out = order[held:].sort().values, order[:held].sort().values
        train[task] = TaskData(d.x[keep], d.y[keep])
        validation[task] = TaskData(d.x[out], d.y[out])
    return train, validation


def choose(losses: Mapping[str, float], margin: float) -> str:
    """The option to predict with: ``federated`` unless another's loss is lower by more than ``margin``
    (relative); between ``local`` and ``mix``, the lower loss (``local`` on a tie)."""
    best = min((LOCAL, MIX), key=lambda option: (losses[option], OPTIONS.index(option)))
    return best if losses[best] < losses[FEDERATED] * (1 - margin) else FEDERATED


@dataclass(frozen=True)
class Predictors:
    """The federated model, the local one, and their mixture (mean output), as one task's predictions."""

    federated: MultiTaskModel
    local: MultiTaskModel

    @torch.no_grad()
    def predict(self, option: str, x: torch.Tensor, task: str) -> torch.Tensor:
        if option == FEDERATED:
            return self.federated(x, task)
        if option == LOCAL:
            return self.local(x, task)
        return (self.federated(x, task) + self.local(x, task)) / 2

    @torch.no_grad()
    def losses(self, data: Mapping[str, TaskData], specs: Mapping[str, TaskSpec]) -> dict[str, dict[str, float]]:
        """Per task with data: each option's loss on it."""
        self.federated.eval()
        self.local.eval()
        return {
            task: {o: float(specs[task].kind_impl.loss(self.predict(o, d.x, task), d.y)) for o in OPTIONS}
            for task, d in data.items()
            if len(d) > 0
        }

    @torch.no_grad()
    def evaluate(
        self, choices: Mapping[str, str], data: Mapping[str, TaskData], specs: Mapping[str, TaskSpec]
    ) -> dict[str, dict[str, float]]:
        """Per task: loss, the kind's metrics and the sample count, predicting with the chosen option."""
        results = {}
        for task, d in data.items():
            if len(d) == 0:
                continue
            kind = specs[task].kind_impl
            prediction = self.predict(choices.get(task, FEDERATED), d.x, task)
            results[task] = {
                "loss": kind.loss(prediction, d.y).item(),
                **kind.metrics(prediction, d.y),
                "num_examples": float(len(d)),
            }
        return results


def evidence(
    choices: Mapping[str, str],
    validation: Mapping[str, Mapping[str, float]],
    evaluation: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Per evaluated task: the choice (its index in :data:`OPTIONS`), each option's validation loss
    (what decided) and each option's evaluation loss (what the choice gained, for the report)."""
    return {
        task: {
            "choice": float(OPTIONS.index(choices.get(task, FEDERATED))),
            **{f"val_{o}": validation[task][o] for o in OPTIONS if task in validation},
            **{f"eval_{o}": losses[o] for o in OPTIONS},
        }
        for task, losses in evaluation.items()
    }
