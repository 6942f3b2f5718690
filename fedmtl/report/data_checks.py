"""The report's data checks, before any comparison of arms (issue #22): what the clients' own checks
found in their data (``fedmtl/local/data_checks.py``; only the numbers left the clients).

Shortcut (label leakage): a task on a client is flagged when, on at least half of the seeds, one input
feature alone explains at least ``SHORTCUT_MIN`` of the label in the client's training data, and at
least ``SHORTCUT_DROP`` more than it does on the client's held-out data and than the best feature does
by chance (labels shuffled); the label may be another task's where a client's tasks share their examples
(a leak between tasks). Every arm of a study sees the same data, so each seed keeps the strongest check
any arm reported, at its first evaluation (only arms holding several tasks check the labels across tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmtl.core.layout import find_metrics_file
from fedmtl.report.collect import EVAL_SPLIT, StudyData, read_table
from fedmtl.report.label_checks import (
    DISAGREE_MARGIN,
    DISAGREE_RATIO,
    DRIFT_MARGIN,
    DRIFT_RATIO,
    NOISE_MARGIN,
    NOISE_RATIO,
    LabelCheck,
    label_checks,
)
from fedmtl.report.render import Block, Heading, Paragraph, Table

SHORTCUT_MIN = 0.9  # share of the label one feature explains in training
SHORTCUT_DROP = 0.3  # ... and how much less it explains at evaluation
TRAIN, HELD_OUT, CHANCE = "shortcut_train", "shortcut_eval", "shortcut_chance"
SOURCE = "shortcut_source"  # the position of the explained label's task among the study's tasks


@dataclass(frozen=True)
class ShortcutCheck:
    task: str
    client: int
    train: float  # mean over seeds
    held_out: float
    chance: float
    flagged_seeds: int
    seeds: int
    label: str = ""  # the task whose label the feature explains (another task's: a leak between tasks)

    @property
    def flagged(self) -> bool:
        return 2 * self.flagged_seeds >= self.seeds and self.flagged_seeds > 0


def margin(train: float, held_out: float, chance: float) -> float:
    """How far the training share stands above the larger of the held-out and chance shares."""
    return train - max(held_out, chance)


def is_shortcut(train: float, held_out: float, chance: float) -> bool:
    return train >= SHORTCUT_MIN and margin(train, held_out, chance) >= SHORTCUT_DROP


def shortcut_checks(data: StudyData) -> list[ShortcutCheck]:
    """One check per (task, client) that reported it, sorted. Every arm sees the same data, but only a
    participant holding several tasks can check one task's inputs against another's labels (a leak between
    tasks), so each seed keeps the strongest check of any arm (training share above held-out and chance)."""
    names = [t.name for t in data.study.tasks]
    strongest: dict[tuple[str, int, int], tuple[float, float, float, str]] = {}
    for arm in data.study.arms:
        for result in data.arm_results(arm):
            rows = [
                r
                for r in read_table(find_metrics_file(result.run.dir), ("round", "split", "client", "task"))
                if r["split"] == EVAL_SPLIT and all(r.get(k) is not None for k in (TRAIN, HELD_OUT, CHANCE))
            ]
            first = min((r["round"] for r in rows), default=None)
            for r in rows:
                if r["round"] != first:
                    continue
                index = r.get(SOURCE)
                label = names[int(index)] if index is not None and 0 <= int(index) < len(names) else r["task"]
                found = (float(r[TRAIN]), float(r[HELD_OUT]), float(r[CHANCE]), label)
                key = (r["task"], int(r["client"]), result.run.seed)
                if key not in strongest or margin(*found[:3]) > margin(*strongest[key][:3]):
                    strongest[key] = found
    per_pair: dict[tuple[str, int], list[tuple[float, float, float, str]]] = {}
    for (task, client, _), found in sorted(strongest.items()):
        per_pair.setdefault((task, client), []).append(found)
    checks = []
    for (task, client), values in sorted(per_pair.items()):
        flagged = [v for v in values if is_shortcut(*v[:3])]
        train, held_out, chance = (sum(shares) / len(values) for shares in list(zip(*values))[:3])
        labels = [v[3] for v in flagged or values]
        label = max(set(labels), key=labels.count)
        checks.append(ShortcutCheck(task, client, train, held_out, chance, len(flagged), len(values), label))
    return checks


def data_check_blocks(data: StudyData) -> list[Block]:
    """The clients' own data checks, flagged issues first (before any comparison of arms)."""
    shortcuts, labels = shortcut_checks(data), label_checks(data)
    if not shortcuts and not labels:
        return []
    blocks: list[Block] = [Heading("Data checks")]
    if shortcuts:
        blocks += shortcut_blocks(shortcuts)
    if labels:
        blocks += label_check_blocks(labels)
    return blocks


def shortcut_blocks(checks: list[ShortcutCheck]) -> list[Block]:
    flagged = [c for c in checks if c.flagged]
    strongest = max(checks, key=lambda c: c.train - c.held_out)
    rows = [
        [
            c.task,
            c.label or c.task,
            str(c.client),
            f"{c.train:.2f}",
            f"{c.held_out:.2f}",
            f"{c.chance:.2f}",
            f"{c.flagged_seeds} / {c.seeds}",
        ]
        for c in (flagged or [strongest])
    ]
    verdict = (
        f"**Possible label leakage** on {len(flagged)} (task, client) pair(s): one input feature alone explains "
        "most of the label in training but not on held-out data. Check these clients' data before comparing arms."
        if flagged
        else "No shortcut found: no single input feature explains a label in training and not on held-out data "
        "(the strongest case is shown)."
    )
    return [
        Paragraph(
            f"Computed on each client from its own data; only the numbers left it. Shortcut: the share of a task's "
            f"label (or, where the tasks share their examples, another task's label) that the best single input "
            f"feature explains in the client's training data (η² or r²) and the "
            f"same feature's share on its held-out data, beside the best share with the labels shuffled (chance); "
            f"flagged when at least {SHORTCUT_MIN} and {SHORTCUT_DROP} above both, on at least half of the seeds. "
            f"{verdict}"
        ),
        Table(
            ["task", "label explained", "client", "share in training", "share held out", "by chance", "seeds flagged"],
            rows,
        ),
    ]


def label_check_blocks(checks: list[LabelCheck]) -> list[Block]:
    """Flagged (check, arm, task, client)s, or the largest ratio of each check when nothing is flagged."""
    flagged = [c for c in checks if c.flagged]
    shown = flagged or [
        max((c for c in checks if c.name == name), key=lambda c: c.value / c.peers if c.peers > 0 else 0.0)
        for name in dict.fromkeys(c.name for c in checks)
    ]
    rows = [
        [
            c.name,
            c.arm,
            c.task,
            str(c.client),
            f"{c.value:.3f}",
            f"{c.peers:.3f}",
            f"{c.value / c.peers:.2f}" if c.peers > 0 else "n/a",
            f"{c.flagged_seeds} / {c.seeds}",
        ]
        for c in shown
    ]
    clients = sorted({(c.task, c.client) for c in flagged})
    verdict = (
        f"**{len(clients)} (task, client) pair(s) flagged**: "
        + ", ".join(f"{task} on client {client}" for task, client in clients)
        + ". Check their labels before comparing arms."
        if flagged
        else "Nothing flagged (the largest ratio of each check is shown)."
    )
    return [
        Paragraph(
            "Labels, from each client's own losses against the other holders of the task (the median of theirs, "
            f"the client left out): **noisy labels** when its final training loss is at least {NOISE_RATIO}x theirs "
            f"and {NOISE_MARGIN} above, **disagreeing labels** when its final held-out loss is at least "
            f"{DISAGREE_RATIO}x and {DISAGREE_MARGIN} above, **drifting labels** when its held-out loss worsened (final "
            f"over its best at an earlier round after round 0) at least {DRIFT_RATIO}x as much and by {DRIFT_MARGIN} "
            "more, on at least half of the seeds. A relabelling that a private head learns leaves no trace in the "
            f"losses. {verdict}"
        ),
        Table(["check", "arm", "task", "client", "value", "others' median", "ratio", "seeds flagged"], rows),
    ]
