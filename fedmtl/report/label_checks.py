"""Label checks from what the federation already sees: each client's own losses per task, against the
other clients that hold the task (issue #22). No data leaves a client; the losses are in the run files.

* **Noisy labels**: a client whose final *training* loss on a task is at least ``NOISE_RATIO`` times the
  median of the other holders' and ``NOISE_MARGIN`` above it (a higher floor of irreducible loss: its labels disagree with its inputs
  more often than its peers'). Flipped or noised training labels raise it on any arm.
* **Disagreeing labels**: a client whose final *held-out* loss on a task is at least ``DISAGREE_RATIO``
  times the other holders' median and ``DISAGREE_MARGIN`` above it: its own data, labelled by its own standard, is fitted far worse than
  its peers' by what it shares with them. A relabelling that a private head can learn (permuted classes
  with heads kept private) leaves no trace here, and no harm either; once heads are shared, it shows.
* **Drifting labels**: a client whose held-out loss *worsened* over the run (its final held-out loss over
  its best one at an earlier evaluated round after round 0) at least ``DRIFT_RATIO`` times as much as the
  other holders' median and ``DRIFT_MARGIN`` more: its data moved away from what it learned (the metric on time windows). Needs
  three evaluated rounds or more (round 0, one to be best at, the last).

The other holders' median leaves the client out, so two affected clients among four holders do not hide
each other. A (task, client) is flagged when both are reached on at least half of the seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedmtl.core.layout import find_metrics_file
from fedmtl.report.collect import EVAL_SPLIT, StudyData, read_table

# (ratio, margin): flagged when value >= ratio * peers and value - peers >= margin (a loss in its own units,
# nats for classification; the drift check's value is itself a ratio). Chosen on seeds 2100-2103 of
# configs/study_data_checks.yaml (docs/FINDINGS.md section 7.1): the margin keeps near-zero losses of easy
# binary tasks, whose ratios swing widely, from being flagged.
NOISE_RATIO, NOISE_MARGIN = 1.5, 0.5
DISAGREE_RATIO, DISAGREE_MARGIN = 2.0, 0.5
DRIFT_RATIO, DRIFT_MARGIN = 2.0, 0.5
MIN_PEERS = 2  # other holders a client is compared with (fewer: no check)
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class LabelCheck:
    name: str  # "noisy labels", "disagreeing labels" or "drifting labels"
    arm: str
    task: str
    client: int
    value: float  # the client's value (a final loss; drift: its worsening), mean over seeds
    peers: float  # the other holders' median value, mean over seeds
    flagged_seeds: int
    seeds: int

    @property
    def flagged(self) -> bool:
        return self.flagged_seeds > 0 and 2 * self.flagged_seeds >= self.seeds


def final_losses(rows: Iterable[Mapping], split: str) -> dict[str, dict[int, float]]:
    """Task -> client -> the loss of the client's last row of ``split`` for the task."""
    return {
        task: {c: curve[max(curve)] for c, curve in by_client.items()}
        for task, by_client in curves(rows, split).items()
    }


def worsening(rows: Iterable[Mapping]) -> dict[str, dict[int, float]]:
    """Task -> client -> final held-out loss over the best at an earlier evaluated round after round 0."""
    out: dict[str, dict[int, float]] = {}
    for task, by_client in curves(rows, EVAL_SPLIT).items():
        for client, curve in by_client.items():
            earlier = [loss for r, loss in curve.items() if 0 < r < max(curve)]
            if earlier and min(earlier) > 0:
                out.setdefault(task, {})[client] = curve[max(curve)] / min(earlier)
    return out


def curves(rows: Iterable[Mapping], split: str) -> dict[str, dict[int, dict[int, float]]]:
    """Task -> client -> round -> loss, from the rows of ``split``."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for row in rows:
        if row["split"] == split and row.get("loss") is not None:
            out.setdefault(row["task"], {}).setdefault(int(row["client"]), {})[int(row["round"])] = float(row["loss"])
    return out


CHECKS = (
    ("noisy labels", lambda rows: final_losses(rows, TRAIN_SPLIT), NOISE_RATIO, NOISE_MARGIN),
    ("disagreeing labels", lambda rows: final_losses(rows, EVAL_SPLIT), DISAGREE_RATIO, DISAGREE_MARGIN),
    ("drifting labels", worsening, DRIFT_RATIO, DRIFT_MARGIN),
)


def against_peers(values: Mapping[int, float]) -> dict[int, tuple[float, float]]:
    """Client -> (its value, the median of the other holders'), for clients with ``MIN_PEERS`` others."""
    if len(values) <= MIN_PEERS:
        return {}
    return {c: (value, statistics.median(v for o, v in values.items() if o != c)) for c, value in values.items()}


def label_checks(data: StudyData) -> list[LabelCheck]:
    """Every (check, arm, task, client) that could be checked, in arm order."""
    found: dict[tuple[str, str, str, int], list[tuple[float, float, bool]]] = {}
    for arm in data.study.arms:
        for result in data.arm_results(arm):
            rows = list(read_table(find_metrics_file(result.run.dir), ("round", "split", "client", "task")))
            for name, values_of, ratio, margin in CHECKS:
                for task, values in values_of(rows).items():
                    for client, (value, peers) in against_peers(values).items():
                        flagged = peers > 0 and value >= ratio * peers and value - peers >= margin
                        found.setdefault((name, arm, task, client), []).append((value, peers, flagged))
    return [
        LabelCheck(
            name,
            arm,
            task,
            client,
            statistics.fmean(v[0] for v in values),
            statistics.fmean(v[1] for v in values),
            sum(v[2] for v in values),
            len(values),
        )
        for (name, arm, task, client), values in found.items()
    ]
