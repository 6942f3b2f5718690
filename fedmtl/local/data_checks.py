"""Per-client data checks that need the data and never send it: only the numbers leave the client.

Shortcut (label leakage) check: the largest share of a task's label variance that a *single* input
feature explains on the client's training data, and what the same feature explains on its held-out
data. A feature that alone explains nearly all of a label in training but not at evaluation is a
leaked label (issue #22; ``data_issues: leakage`` injects one). The share explained: the
correlation ratio ``eta^2`` (between-class over total variance of the feature; Pearson 1903) for a
classification task, the squared Pearson correlation ``r^2`` with the target for regression; both in
[0, 1]. With few examples and many features the best feature explains much by chance (8 examples, 24
features: up to 0.9), so the check also reports the chance level: the best share with the labels
shuffled, the largest over ``CHANCE_DRAWS`` fixed permutations (about its 95th percentile).
"""

from __future__ import annotations

import torch

from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec

SHORTCUT_TRAIN, SHORTCUT_EVAL, SHORTCUT_CHANCE = "shortcut_train", "shortcut_eval", "shortcut_chance"
CHANCE_DRAWS = 20
SCALAR_KINDS = ("classification", "regression")  # the kinds the shortcut check applies to


MIN_CLASS_EXAMPLES = 5  # classes with fewer examples are left out of eta^2


def explained(x: torch.Tensor, y: torch.Tensor, classification: bool) -> torch.Tensor:
    """Per feature of ``x`` [N, D], the share of its variance (classification: eta^2) or of the target's
    (regression: r^2) that the label explains; 0 for a constant feature. Classification counts only
    the classes with at least ``MIN_CLASS_EXAMPLES`` examples (and needs two of them): one example of a
    rare class that happens to light a pixel nothing else lights would otherwise give ``eta^2 = 1``."""
    if classification:
        labels, counts = y.unique(return_counts=True)
        kept = torch.isin(y, labels[counts >= MIN_CLASS_EXAMPLES])
        if int((counts >= MIN_CLASS_EXAMPLES).sum()) < 2:
            return torch.zeros(x.reshape(len(x), -1).shape[1], dtype=torch.float64)
        x, y = x[kept], y[kept]
    x = x.double().reshape(len(x), -1)
    centred = x - x.mean(0)
    total = (centred**2).sum(0)
    if classification:
        between = torch.zeros_like(total)
        for label in y.unique():
            members = y == label
            between += members.sum() * (x[members].mean(0) - x.mean(0)) ** 2
        share = between / total
    else:
        target = y.double() - y.double().mean()
        share = (centred * target[:, None]).sum(0) ** 2 / (total * (target**2).sum())
    return torch.nan_to_num(share, nan=0.0).clamp(0.0, 1.0)


def shortcut_check(train: TaskData, held_out: TaskData, spec: TaskSpec) -> dict[str, float]:
    """The best single feature's share on the training data, and the same feature's on ``held_out``
    (classification and regression only: a per-pixel or multi-label target is not one value that a
    single feature could encode)."""
    classification = spec.kind == "classification"
    if len(train) < 2 or len(held_out) < 2 or spec.kind not in SCALAR_KINDS:
        return {}
    shares = explained(train.x, train.y, classification)
    best = int(shares.argmax())
    evaluated = explained(held_out.x[:, best : best + 1], held_out.y, classification)
    generator = torch.Generator().manual_seed(0)  # its own stream: the client's other draws are untouched
    chance = [
        float(explained(train.x, train.y[torch.randperm(len(train), generator=generator)], classification).max())
        for _ in range(CHANCE_DRAWS)
    ]
    return {
        SHORTCUT_TRAIN: float(shares[best]),
        SHORTCUT_EVAL: float(evaluated[0]),
        SHORTCUT_CHANCE: max(chance),
    }
