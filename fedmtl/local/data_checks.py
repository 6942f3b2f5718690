"""Per-client data checks that need the data and never send it: only the numbers leave the client.

Shortcut (label leakage) check: the largest share of a task's label variance that a *single* input
feature explains on the client's training data, and what the same feature explains on its held-out
data; where a client's tasks are questions about the same examples, also each other task's label against
this task's inputs (a label leaked between tasks: the digit written into the inputs of ``geq5``). A feature that alone explains nearly all of a label in training but not at evaluation is a
leaked label (issue #22; ``data_issues: leakage`` injects one). The share explained: the
correlation ratio ``eta^2`` (between-class over total variance of the feature; Pearson 1903) for a
classification task, the squared Pearson correlation ``r^2`` with the target for regression; both in
[0, 1]. With few examples and many features the best feature explains much by chance (8 examples, 24
features: up to 0.9), so the check also reports the chance level: the best share with the labels
shuffled, the largest over ``CHANCE_DRAWS`` fixed permutations (about its 95th percentile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec

SHORTCUT_TRAIN, SHORTCUT_EVAL, SHORTCUT_CHANCE = "shortcut_train", "shortcut_eval", "shortcut_chance"
SHORTCUT_SOURCE = "shortcut_source"  # the position, in the suite's task order, of the label the feature explains
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


def label_shortcut(
    train_x: torch.Tensor, train_y: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor, classification: bool
) -> tuple[float, float, float]:
    """The best single feature of ``train_x``'s share of ``train_y``, the same feature's share of ``eval_y``
    on ``eval_x``, and the best share by chance (``train_y`` shuffled)."""
    shares = explained(train_x, train_y, classification)
    best = int(shares.argmax())
    evaluated = explained(eval_x[:, best : best + 1], eval_y, classification)
    generator = torch.Generator().manual_seed(0)  # its own stream: the client's other draws are untouched
    chance = [
        float(explained(train_x, train_y[torch.randperm(len(train_y), generator=generator)], classification).max())
        for _ in range(CHANCE_DRAWS)
    ]
    return float(shares[best]), float(evaluated[0]), max(chance)


def shortcut_check(
    train: Mapping[str, TaskData],
    held_out: Mapping[str, TaskData],
    specs: Mapping[str, TaskSpec],
    task: str,
    order: Sequence[str] = (),
    shared_examples: bool = False,
) -> dict[str, float]:
    """The shortcut check of ``task``'s inputs (classification and regression only: a per-pixel or
    multi-label target is not one value that a single feature could encode): against its own label and,
    with ``shared_examples`` (the tasks are questions about the same examples, the first ``n`` of each),
    against every other task's label of the same examples, which a leak between tasks writes into this
    task's inputs. Reports the label whose best feature stands out most (its training share above the
    larger of held-out and chance), and that label's position in ``order``, the suite's tasks
    (``SHORTCUT_SOURCE``; default: ``specs``' order)."""
    sources = [task, *(s for s in train if s != task and s in held_out)] if shared_examples else [task]
    found = {}
    for source in sources:
        n, m = min(len(train[task]), len(train[source])), min(len(held_out[task]), len(held_out[source]))
        if n < 2 or m < 2 or specs[source].kind not in SCALAR_KINDS or specs[task].kind not in SCALAR_KINDS:
            continue
        classification = specs[source].kind == "classification"
        x, y = train[task].x[:n], train[source].y[:n]
        found[source] = label_shortcut(x, y, held_out[task].x[:m], held_out[source].y[:m], classification)
    if not found:
        return {}
    label = max(found, key=lambda s: found[s][0] - max(found[s][1:]))
    return {
        SHORTCUT_TRAIN: found[label][0],
        SHORTCUT_EVAL: found[label][1],
        SHORTCUT_CHANCE: found[label][2],
        SHORTCUT_SOURCE: float(list(order or specs).index(label)),
    }
