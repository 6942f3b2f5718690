"""The study's evidence as numbers: reference arm vs every other arm, per task, per client, per seed.

Deltas are paired by seed (the same seed gives every arm the same data partition and initial
state) and follow Maninis et al., CVPR 2019 (see :mod:`fedmtl.report.deltas`). The summary dict
built here is what ``summary.json`` holds and what the markdown/HTML report renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmtl.report import deltas as d
from fedmtl.report.collect import Study, StudyData
from fedmtl.report.conflict import summarize_conflict

ENCODER_ONLY_ARM = "fed_mtl"
FULL_MODEL_ARM = "fed_full"


@dataclass(frozen=True)
class ClientDelta:
    """One client's relative delta per seed, its spread, and its t-test over seeds (p adjusted over the task's clients)."""

    client: int
    per_seed: dict[int, float]
    spread: d.Spread
    test: d.PairedTest
    p_adjusted: float | None
    verdict: d.Verdict | None


@dataclass(frozen=True)
class TaskDelta:
    """One task's paired per-seed deltas and its t-test (seeds, or clients with fewer than two seeds;
    p adjusted over the pair's tasks)."""

    task: str
    per_seed: dict[int, float]
    spread: d.Spread
    test: d.PairedTest
    p_adjusted: float | None
    verdict: d.Verdict | None
    clients: dict[int, ClientDelta]


@dataclass(frozen=True)
class ClientSummary:
    """One client over the tasks it holds: Delta_m per seed, its t-test (p adjusted over the pair's
    clients), and the client's worst task."""

    client: int
    tasks: tuple[str, ...]
    delta_m_per_seed: dict[int, float]
    delta_m: d.Spread
    test: d.PairedTest
    p_adjusted: float | None
    verdict: d.Verdict | None
    worst_task: str | None


@dataclass(frozen=True)
class Comparison:
    """Arm ``arm`` against arm ``baseline`` over every task: positive deltas mean ``arm`` is better."""

    arm: str
    baseline: str
    single_task: bool
    """The baseline trains one model per task: a significant loss is negative transfer."""
    tasks: dict[str, TaskDelta]
    delta_m_per_seed: dict[int, float]
    delta_m: d.Spread
    delta_m_test: d.PairedTest
    worst_task: str | None
    """The task with the lowest mean delta over seeds; its spread is ``tasks[worst_task].spread``."""
    clients: dict[int, ClientSummary]

    @property
    def label(self) -> str:
        return f"{self.arm} vs {self.baseline}"

    @property
    def flagged(self) -> list[str]:
        """Tasks on which ``arm`` is significantly worse than ``baseline``."""
        return [task for task, delta in self.tasks.items() if delta.verdict == "worse"]


def _adjusted(tests: Sequence[d.PairedTest], study: Study) -> list[float | None]:
    return d.CORRECTIONS[study.correction]([test.p_value for test in tests])


def compare_clients(data: StudyData, arm: str, baseline: str, task: str) -> dict[int, ClientDelta]:
    spec = data.study.task(task)
    ours, theirs = data.final_by_client(arm, task), data.final_by_client(baseline, task)
    per_client: dict[int, dict[int, float]] = {}
    for seed in sorted(set(ours) & set(theirs)):
        for client, delta in d.paired_deltas(ours[seed], theirs[seed], spec.higher_is_better, spec.relative).items():
            per_client[client] = {**per_client.get(client, {}), seed: delta}
    clients = sorted(per_client)
    tests = [d.paired_t_test(list(per_client[c].values()), "seeds") for c in clients]
    adjusted = _adjusted(tests, data.study)
    out = {}
    for client, test, p in zip(clients, tests, adjusted):
        spread = d.finite_spread(per_client[client].values())
        out[client] = ClientDelta(
            client, per_client[client], spread, test, p, d.verdict(test.mean, p, data.study.significance)
        )
    return out


def summarize_clients(tasks: Mapping[str, TaskDelta], study: Study) -> dict[int, ClientSummary]:
    """Per client: Delta_m over the tasks it holds (seeds where every one of them has a delta)."""
    ids = sorted({client for task in tasks.values() for client in task.clients})
    held = {c: tuple(name for name, task in tasks.items() if c in task.clients) for c in ids}
    per_seed: dict[int, dict[int, float]] = {}
    for c in ids:
        seeds = set.intersection(*(set(tasks[t].clients[c].per_seed) for t in held[c]))
        per_seed[c] = {s: d.delta_m(tasks[t].clients[c].per_seed[s] for t in held[c]) for s in sorted(seeds)}
    tests = [d.paired_t_test(list(per_seed[c].values()), "seeds") for c in ids]
    adjusted = _adjusted(tests, study)
    out = {}
    for c, test, p in zip(ids, tests, adjusted):
        means = {t: tasks[t].clients[c].spread.mean for t in held[c]}  # NaN where no seed has a delta
        finite = {t: m for t, m in means.items() if not math.isnan(m)}
        out[c] = ClientSummary(
            client=c,
            tasks=held[c],
            delta_m_per_seed=per_seed[c],
            delta_m=d.finite_spread(per_seed[c].values()),
            test=test,
            p_adjusted=p,
            verdict=d.verdict(test.mean, p, study.significance),
            worst_task=d.worst_task(finite)[0] if finite else None,
        )
    return out


def compare(data: StudyData, arm: str, baseline: str) -> Comparison:
    """``arm`` vs ``baseline``: per-task deltas and tests, Delta_m per seed (seeds with every task only), worst task."""
    study = data.study
    names = [task.name for task in study.tasks]
    per_seed, clients, tests = {}, {}, []
    for name in names:
        spec = study.task(name)
        per_seed[name] = d.paired_deltas(
            data.final(arm, name), data.final(baseline, name), spec.higher_is_better, spec.relative
        )
        clients[name] = compare_clients(data, arm, baseline, name)
        client_means = [c.spread.mean for c in clients[name].values()]
        tests.append(d.paired_test(list(per_seed[name].values()), client_means))
    adjusted = _adjusted(tests, study)
    tasks = {}
    for name, test, p in zip(names, tests, adjusted):
        spread = d.finite_spread(per_seed[name].values())
        verdict = d.verdict(test.mean, p, study.significance)  # the tested mean: over seeds, or clients
        tasks[name] = TaskDelta(name, per_seed[name], spread, test, p, verdict, clients[name])
    seeds = sorted(set.intersection(*(set(t.per_seed) for t in tasks.values())))  # a study has a task
    delta_m_per_seed = {seed: d.delta_m(t.per_seed[seed] for t in tasks.values()) for seed in seeds}
    means = {name: t.spread.mean for name, t in tasks.items() if not math.isnan(t.spread.mean)}
    return Comparison(
        arm=arm,
        baseline=baseline,
        single_task=baseline in study.single_task_arms,
        tasks=tasks,
        delta_m_per_seed=delta_m_per_seed,
        delta_m=d.finite_spread(delta_m_per_seed.values()),
        delta_m_test=d.paired_t_test(list(delta_m_per_seed.values()), "seeds"),
        worst_task=d.worst_task(means)[0] if means else None,
        clients=summarize_clients(tasks, study),
    )


def comparisons(data: StudyData) -> list[Comparison]:
    """Every pair of ``study.json`` whose two arms both have finished runs, in the study's order."""
    return [compare(data, a, b) for a, b in data.study.pairs if data.arm_results(a) and data.arm_results(b)]


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


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    worst = comparison.worst_task
    return {
        "arm": comparison.arm,
        "baseline": comparison.baseline,
        "single_task": comparison.single_task,
        "tasks": {
            name: {
                "delta": task.spread.to_dict(),
                "per_seed": _by_seed(task.per_seed),
                "test": task.test.to_dict(),
                "p_adjusted": task.p_adjusted,
                "verdict": task.verdict,
                "clients": {
                    str(client): {
                        "delta": c.spread.to_dict(),
                        "per_seed": _by_seed(c.per_seed),
                        "test": c.test.to_dict(),
                        "p_adjusted": c.p_adjusted,
                        "verdict": c.verdict,
                    }
                    for client, c in task.clients.items()
                },
            }
            for name, task in comparison.tasks.items()
        },
        "delta_m": {
            **comparison.delta_m.to_dict(),
            "per_seed": _by_seed(comparison.delta_m_per_seed),
            "test": comparison.delta_m_test.to_dict(),
        },
        "worst_task": None if worst is None else {"task": worst, "delta": comparison.tasks[worst].spread.to_dict()},
        "worse_tasks": comparison.flagged,
        "clients": {
            str(c.client): {
                "tasks": list(c.tasks),
                "delta_m": {**c.delta_m.to_dict(), "per_seed": _by_seed(c.delta_m_per_seed)},
                "test": c.test.to_dict(),
                "p_adjusted": c.p_adjusted,
                "verdict": c.verdict,
                "worst_task": c.worst_task,
            }
            for c in comparison.clients.values()
        },
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


DELTA_SIGN = (
    "Δ and Δm > 0: the arm is better than its baseline (higher is better, the sign of LibMTL's Δp); "
    "papers such as Nash-MTL report Δm with the opposite sign (lower is better)"
)


def flag_rule(study: Study) -> str:
    return (
        f"two-sided {d.TEST_NAME} of the mean paired relative delta against 0 (over seeds; over clients when "
        f"fewer than 2 seeds), p adjusted by {d.CORRECTION_NAMES[study.correction]} over the tasks of a pair and "
        f"over the clients of a task; flagged worse or better when the adjusted p < {study.significance:g}; "
        f"interval: {d.CONFIDENCE:.0%} t-interval of the mean (unadjusted)"
    )


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
        "pairs": [list(pair) for pair in study.pairs],
        "correction": study.correction,
        "significance": study.significance,
        "arms": list(study.arms),
        "single_task_arms": list(study.single_task_arms),
        "seeds": list(study.seeds),
        "tasks": [{"name": t.name, "metric": t.metric, "higher_is_better": t.higher_is_better} for t in study.tasks],
        "runs_used": [{"arm": arm, "seed": seed} for arm, seed in sorted(data.results)],
        "runs_skipped": [{"arm": r.arm, "seed": r.seed, "status": r.status} for r in data.skipped],
        "flag_rule": flag_rule(study),
        "delta_sign": DELTA_SIGN,
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
