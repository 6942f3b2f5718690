"""The study's evidence as numbers: reference arm vs every other arm, per task, per client, per seed.

Deltas are paired by seed (the same seed gives every arm the same data partition and initial
state) and follow Maninis et al., CVPR 2019 (see :mod:`fedmtl.study.deltas`). The summary dict
built here is what ``summary.json`` holds and what the markdown/HTML report renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmtl.study import deltas as d
from fedmtl.study.collect import StudyData
from fedmtl.study.conflict import summarize_conflict

ENCODER_ONLY_ARM = "fed_mtl"
FULL_MODEL_ARM = "fed_full"


@dataclass(frozen=True)
class ClientDelta:
    """One client's relative delta per seed, its spread, flag and Wilcoxon p-value over seeds."""

    client: int
    per_seed: dict[int, float]
    spread: d.Spread
    negative_transfer: bool
    p_value: float | None


@dataclass(frozen=True)
class TaskDelta:
    """One task's paired per-seed deltas, flag and test (seeds, or clients when seeds are too few)."""

    task: str
    per_seed: dict[int, float]
    spread: d.Spread
    negative_transfer: bool
    test: d.PairedTest
    clients: dict[int, ClientDelta]


@dataclass(frozen=True)
class Comparison:
    """The reference arm against one baseline arm over every task."""

    reference: str
    baseline: str
    single_task: bool
    tasks: dict[str, TaskDelta]
    delta_m_per_seed: dict[int, float]
    delta_m: d.Spread
    worst_task: str | None
    """The task with the lowest mean delta over seeds; its spread is ``tasks[worst_task].spread``."""

    @property
    def flagged(self) -> list[str]:
        return [task for task, delta in self.tasks.items() if delta.negative_transfer]


def compare_clients(data: StudyData, reference: str, baseline: str, task: str) -> dict[int, ClientDelta]:
    higher = data.study.task(task).higher_is_better
    ref, base = data.final_by_client(reference, task), data.final_by_client(baseline, task)
    per_client: dict[int, dict[int, float]] = {}
    for seed in sorted(set(ref) & set(base)):
        for client, delta in d.paired_deltas(ref[seed], base[seed], higher).items():
            per_client.setdefault(client, {})[seed] = delta
    return {
        client: ClientDelta(
            client,
            seeds,
            d.mean_std(seeds.values()),
            d.is_negative_transfer(list(seeds.values())),
            d.wilcoxon_p_value(list(seeds.values())),
        )
        for client, seeds in sorted(per_client.items())
    }


def compare_task(data: StudyData, reference: str, baseline: str, task: str) -> TaskDelta:
    higher = data.study.task(task).higher_is_better
    per_seed = d.paired_deltas(data.final(reference, task), data.final(baseline, task), higher)
    clients = compare_clients(data, reference, baseline, task)
    client_means = [c.spread.mean for c in clients.values()]
    return TaskDelta(
        task=task,
        per_seed=per_seed,
        spread=d.mean_std(per_seed.values()),
        negative_transfer=d.is_negative_transfer(list(per_seed.values())),
        test=d.paired_test(list(per_seed.values()), client_means),
        clients=clients,
    )


def compare(data: StudyData, reference: str, baseline: str) -> Comparison:
    """Reference vs baseline: per-task deltas, Delta_m per seed (seeds with every task only), worst task."""
    tasks = {task.name: compare_task(data, reference, baseline, task.name) for task in data.study.tasks}
    complete = bool(tasks) and all(t.per_seed for t in tasks.values())
    seeds = sorted(set.intersection(*(set(t.per_seed) for t in tasks.values()))) if complete else []
    delta_m_per_seed = {seed: d.delta_m(t.per_seed[seed] for t in tasks.values()) for seed in seeds}
    means = {name: t.spread.mean for name, t in tasks.items() if t.spread.n and not math.isnan(t.spread.mean)}
    return Comparison(
        reference=reference,
        baseline=baseline,
        single_task=baseline in data.study.single_task_arms,
        tasks=tasks,
        delta_m_per_seed=delta_m_per_seed,
        delta_m=d.mean_std(delta_m_per_seed.values()),
        worst_task=d.worst_task(means)[0] if means else None,
    )


def comparisons(data: StudyData) -> list[Comparison]:
    """The reference arm against every other arm that has runs: single-task arms first, then study order."""
    study = data.study
    others = [arm for arm in study.arms if arm != study.reference_arm and data.arm_results(arm)]
    if not data.arm_results(study.reference_arm):
        return []
    ordered = [a for a in others if a in study.single_task_arms] + [
        a for a in others if a not in study.single_task_arms
    ]
    return [compare(data, study.reference_arm, arm) for arm in ordered]


def headline(all_comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons that measure transfer: against single-task arms, or all of them when there are none."""
    single = [c for c in all_comparisons if c.single_task]
    return single or list(all_comparisons)


def communication_saving(data: StudyData) -> dict[str, Any] | None:
    """Fraction of bytes encoder-only sharing saves over full-model sharing: ``1 - bytes(fed_mtl) / bytes(fed_full)``."""
    encoder, full = data.communication(ENCODER_ONLY_ARM), data.communication(FULL_MODEL_ARM)
    if encoder is None or full is None:
        return None

    def saving(part: float, whole: float) -> float:
        return 1.0 - part / whole if whole else math.nan

    return {
        "encoder_only_arm": ENCODER_ONLY_ARM,
        "full_model_arm": FULL_MODEL_ARM,
        "up": saving(encoder.bytes_up_total, full.bytes_up_total),
        "down": saving(encoder.bytes_down_total, full.bytes_down_total),
        "total": saving(encoder.bytes_total, full.bytes_total),
    }


def _by_seed(values: Mapping[int, float]) -> dict[str, float]:
    return {str(seed): value for seed, value in sorted(values.items())}


def _test(test: d.PairedTest) -> dict[str, Any]:
    return {"p_value": test.p_value, "unit": test.unit, "pairs": test.pairs}


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    worst = comparison.worst_task
    return {
        "reference": comparison.reference,
        "baseline": comparison.baseline,
        "single_task": comparison.single_task,
        "tasks": {
            name: {
                "delta": task.spread.to_dict(),
                "per_seed": _by_seed(task.per_seed),
                "negative_transfer": task.negative_transfer,
                "test": _test(task.test),
                "clients": {
                    str(client): {
                        "delta": c.spread.to_dict(),
                        "per_seed": _by_seed(c.per_seed),
                        "negative_transfer": c.negative_transfer,
                        "p_value": c.p_value,
                    }
                    for client, c in task.clients.items()
                },
            }
            for name, task in comparison.tasks.items()
        },
        "delta_m": {**comparison.delta_m.to_dict(), "per_seed": _by_seed(comparison.delta_m_per_seed)},
        "worst_task": None if worst is None else {"task": worst, "delta": comparison.tasks[worst].spread.to_dict()},
        "negative_transfer_tasks": comparison.flagged,
    }


def final_dict(data: StudyData) -> dict[str, Any]:
    """Task -> arm -> final metric mean/std over seeds, per seed, and per client."""
    out: dict[str, Any] = {}
    for task in data.study.tasks:
        arms: dict[str, Any] = {}
        for arm in data.study.arms:
            per_seed = data.final(arm, task.name)
            by_client = data.final_by_client(arm, task.name)
            clients = sorted({c for values in by_client.values() for c in values})
            arms[arm] = {
                **d.mean_std(per_seed.values()).to_dict(),
                "per_seed": _by_seed(per_seed),
                "clients": {str(c): d.mean_std(v[c] for v in by_client.values() if c in v).to_dict() for c in clients},
            }
        out[task.name] = {"metric": task.metric, "higher_is_better": task.higher_is_better, "arms": arms}
    return out


def summarize(data: StudyData, all_comparisons: Sequence[Comparison] | None = None) -> dict[str, Any]:
    """Every number of the report as a JSON-ready dict (NaN left as float; see :func:`json_ready`)."""
    study = data.study
    if all_comparisons is None:
        all_comparisons = comparisons(data)
    communication = {}
    for arm in study.arms:
        cost = data.communication(arm)
        communication[arm] = (
            None
            if cost is None
            else {
                "rounds": cost.rounds,
                "bytes_up_per_round": cost.bytes_up_per_round,
                "bytes_down_per_round": cost.bytes_down_per_round,
                "bytes_up_total": cost.bytes_up_total,
                "bytes_down_total": cost.bytes_down_total,
                "bytes_total": cost.bytes_total,
                "seeds": cost.seeds,
            }
        )
    return {
        "study": study.name,
        "reference_arm": study.reference_arm,
        "arms": list(study.arms),
        "single_task_arms": list(study.single_task_arms),
        "seeds": list(study.seeds),
        "tasks": [{"name": t.name, "metric": t.metric, "higher_is_better": t.higher_is_better} for t in study.tasks],
        "runs_used": [{"arm": arm, "seed": seed} for arm, seed in sorted(data.results)],
        "runs_skipped": [{"arm": r.arm, "seed": r.seed, "status": r.status} for r in data.skipped],
        "flag_rule": (
            f"negative transfer when the two-sided {d.NEGATIVE_TRANSFER_CONFIDENCE:.0%} Student-t confidence interval "
            "of the mean paired per-seed relative delta lies below zero (needs >= 2 seeds)"
        ),
        "final": final_dict(data),
        "comparisons": [comparison_dict(c) for c in all_comparisons],
        "communication": communication,
        "communication_saving": communication_saving(data),
        "conflict": {arm: summarize_conflict(data, arm).to_dict() for arm in study.arms},
    }


def json_ready(value: Any) -> Any:
    """NaN and infinities become None so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value
