"""Arms compared on calibration: the same paired tests as the headline metric, on the negative
log-likelihood and the expected calibration error that classification tasks report beside accuracy
(``fedmtl/data/task_kinds.py``). A practitioner's claim to check: multi-task gains often come from
better calibration and less overfitting on small tasks, not from accuracy alone."""

from __future__ import annotations

from dataclasses import replace

from fedmtl.report.analysis import Comparison, comparisons
from fedmtl.report.collect import StudyData, Task, read_run

# metric -> what it is; both lower is better (the direction task_kinds.CALIBRATION_METRICS declares)
CALIBRATION_METRICS = {
    "nll": "negative log-likelihood (mean cross-entropy); Δ relative to the baseline's, as for the headline metric",
    "ece": (
        "expected calibration error (15 equal-width confidence bins; Guo et al., ICML 2017), each client's on its own "
        "held-out data, averaged over clients by examples; Δ is the absolute difference in points of ECE (ECE is "
        "often near 0, where a relative delta explodes)"
    ),
}
RELATIVE = {"nll": True, "ece": False}


def calibration_data(data: StudyData, metric: str) -> StudyData | None:
    """``data`` with ``metric`` as every task's metric, restricted to the tasks that report it; None when none do."""
    tasks = tuple(Task(t.name, metric, False, RELATIVE[metric]) for t in data.study.tasks)
    results = {key: read_run(r.run, tasks, diagnostics=False) for key, r in data.results.items()}
    measured = tuple(t for t in tasks if any(t.name in r.final for r in results.values()))
    if not measured:
        return None
    return StudyData(replace(data.study, tasks=measured), results, data.skipped)


def calibration_comparisons(data: StudyData) -> dict[str, list[Comparison]]:
    """Metric -> the study's paired comparisons on it (metrics no task reports are left out)."""
    found = {}
    for metric in CALIBRATION_METRICS:
        measured = calibration_data(data, metric)
        if measured is not None:  # worse calibration than a single-task arm is not negative transfer: plain verdicts
            found[metric] = [replace(c, single_task=False) for c in comparisons(measured)]
    return found
