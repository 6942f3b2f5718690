"""Read a study directory (``study.json`` + one run directory per arm x seed) into plain dataclasses.

Layout read here::

    <study>/study.json                         name, arms, seeds, reference_arm, pairs, tasks, runs
    <study>/arms/<arm>/seed-<seed>/metrics.jsonl  tidy rows (or metrics.csv): round, split, client, task, num_examples, <metrics>
    <study>/arms/<arm>/seed-<seed>/server.jsonl   one row per round (absent for non-federated arms)
    <study>/arms/<arm>/seed-<seed>/clients.jsonl  one row per (round, client) with task-gradient cosines

Only runs whose status is "done" are read; the others are listed in :attr:`StudyData.skipped`.
Nothing here imports torch or Flower: a study can be analysed on any machine.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmtl.core.files import read_rows
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE, STUDY_FILE, find_metrics_file

EVAL_SPLIT = "eval"
DONE = "done"
CORRECTIONS = ("holm", "bh")
DEFAULT_SINGLE_TASK_ARMS = ("local_stl", "fed_stl")
"""Arms that train one model per task, used when ``study.json`` has no ``single_task_arms`` list."""


class StudyError(ValueError):
    """A missing or malformed study file; the message starts with the file's path."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    higher_is_better: bool
    relative: bool = True  # deltas relative to the baseline's value; False: absolute differences (a metric near 0)


@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    dir: Path
    status: str


@dataclass(frozen=True)
class Study:
    """The contents of ``study.json``."""

    path: Path
    name: str
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    reference_arm: str
    tasks: tuple[Task, ...]
    runs: tuple[Run, ...]
    single_task_arms: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...] = ()
    """(arm, baseline) comparisons in report order; default: reference arm against every other arm,
    single-task arms first."""
    correction: str = "holm"
    significance: float = 0.05

    def task(self, name: str) -> Task:
        return next(task for task in self.tasks if task.name == name)


@dataclass(frozen=True)
class ServerRound:
    """One server row: conflict fraction, the full K x K client-update cosine matrix, bytes moved."""

    round: int
    conflict_fraction: float | None
    clients: tuple[int, ...]
    cosines: np.ndarray | None
    bytes_up: int | None
    bytes_down: int | None
    epsilon: float | None = None  # privacy with noise: the epsilon spent by this round


@dataclass(frozen=True)
class TaskCosine:
    """Cosine between two tasks' gradients inside one client at one round."""

    round: int
    client: int
    tasks: tuple[str, str]
    cosine: float | None


@dataclass(frozen=True)
class RunResult:
    """Everything read from one (arm, seed) run directory."""

    run: Run
    final: dict[str, float]
    """Task -> example-weighted mean over clients of the headline metric at the task's last eval round."""
    final_by_client: dict[str, dict[int, float]]
    """Task -> client -> the client's headline metric at its last eval round for the task."""
    curves: dict[str, dict[int, float]]
    """Task -> round -> example-weighted mean of the headline metric over clients (eval split)."""
    server: tuple[ServerRound, ...]
    task_cosines: tuple[TaskCosine, ...]


@dataclass(frozen=True)
class Communication:
    """Bytes moved by one arm, each a mean over its seeds (per round: mean over the rounds that report bytes)."""

    arm: str
    rounds: float
    bytes_up_per_round: float
    bytes_down_per_round: float
    bytes_up_total: float
    bytes_down_total: float
    seeds: int

    @property
    def bytes_total(self) -> float:
        return self.bytes_up_total + self.bytes_down_total


@dataclass(frozen=True)
class StudyData:
    study: Study
    results: dict[tuple[str, int], RunResult]
    skipped: tuple[Run, ...] = field(default_factory=tuple)

    def arm_results(self, arm: str) -> list[RunResult]:
        return [result for (name, _), result in sorted(self.results.items()) if name == arm]

    def final(self, arm: str, task: str) -> dict[int, float]:
        """Seed -> final metric of ``task`` for ``arm`` (seeds without eval rows for the task are absent)."""
        return {r.run.seed: r.final[task] for r in self.arm_results(arm) if task in r.final}

    def final_by_client(self, arm: str, task: str) -> dict[int, dict[int, float]]:
        """Seed -> client -> final metric."""
        return {r.run.seed: r.final_by_client[task] for r in self.arm_results(arm) if task in r.final_by_client}

    def curves(self, arm: str, task: str) -> dict[int, dict[int, float]]:
        """Seed -> round -> learning-curve value."""
        return {r.run.seed: r.curves[task] for r in self.arm_results(arm) if task in r.curves}

    def clients(self, task: str) -> list[int]:
        """Every client that has a final value for ``task`` in any run, sorted."""
        return sorted({c for r in self.results.values() for c in r.final_by_client.get(task, {})})

    def communication(self, arm: str) -> Communication | None:
        """Mean over seeds of bytes per round and in total; None when no run of the arm reports bytes."""
        per_seed = []
        for result in self.arm_results(arm):
            rows = [s for s in result.server if s.bytes_up is not None and s.bytes_down is not None]
            if rows:
                up = [float(s.bytes_up) for s in rows]  # type: ignore[arg-type]
                down = [float(s.bytes_down) for s in rows]  # type: ignore[arg-type]
                per_seed.append((len(rows), sum(up) / len(up), sum(down) / len(down), sum(up), sum(down)))
        if not per_seed:
            return None
        rounds, up_per_round, down_per_round, up_total, down_total = (
            sum(column) / len(per_seed) for column in zip(*per_seed)
        )
        return Communication(arm, rounds, up_per_round, down_per_round, up_total, down_total, seeds=len(per_seed))


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise StudyError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StudyError(path, f"not valid JSON (line {err.lineno}: {err.msg})") from None


def read_jsonl(path: Path, required: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped), each checked for the ``required`` keys."""
    if not path.is_file():
        raise StudyError(path, "file not found")
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise StudyError(path, f"line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise StudyError(path, f"line {number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise StudyError(path, f"line {number}: missing key(s) {', '.join(missing)}")
            yield row


def read_table(path: Path, required: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of a metrics table in either format (``output.metrics_format``), checked for ``required``."""
    if path.suffix != ".csv":
        yield from read_jsonl(path, required)
        return
    if not path.is_file():
        raise StudyError(path, "file not found")
    for number, row in enumerate(read_rows(path), start=2):  # line 1 is the header
        missing = [key for key in required if row.get(key) is None]
        if missing:
            raise StudyError(path, f"line {number}: missing value(s) {', '.join(missing)}")
        yield row


def _field(path: Path, payload: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in payload:
        raise StudyError(path, f"missing key {key!r}")
    if not isinstance(payload[key], kind):
        raise StudyError(path, f"{key!r} must be a {kind.__name__}, got {type(payload[key]).__name__}")
    return payload[key]


def load_study(study_dir: str | Path) -> Study:
    """Parse and check ``study.json`` (arms, seeds, tasks, runs; the reference arm must be an arm)."""
    root = Path(study_dir)
    path = root / STUDY_FILE
    payload = read_json(path)
    if not isinstance(payload, dict):
        raise StudyError(path, "expected a JSON object")
    arms = tuple(_field(path, payload, "arms", list))
    reference = _field(path, payload, "reference_arm", str)
    if reference not in arms:
        raise StudyError(path, f"reference_arm {reference!r} is not one of the arms {list(arms)}")
    tasks = []
    for index, entry in enumerate(_field(path, payload, "tasks", list)):
        try:
            tasks.append(Task(str(entry["name"]), str(entry["metric"]), bool(entry["higher_is_better"])))
        except (KeyError, TypeError):
            raise StudyError(path, f"tasks[{index}] needs name, metric and higher_is_better") from None
    if not tasks:
        raise StudyError(path, "'tasks' names no task")
    runs = []
    for index, entry in enumerate(_field(path, payload, "runs", list)):
        try:
            runs.append(Run(str(entry["arm"]), int(entry["seed"]), root / entry["dir"], str(entry.get("status", ""))))
        except (KeyError, TypeError, ValueError):
            raise StudyError(path, f"runs[{index}] needs arm, seed and dir") from None
        if runs[-1].arm not in arms:
            raise StudyError(path, f"runs[{index}]: arm {runs[-1].arm!r} is not one of the arms {list(arms)}")
        if any((run.arm, run.seed) == (runs[-1].arm, runs[-1].seed) for run in runs[:-1]):
            raise StudyError(path, f"runs[{index}]: arm {runs[-1].arm!r} seed {runs[-1].seed} is listed twice")
    single = payload.get("single_task_arms", [arm for arm in DEFAULT_SINGLE_TASK_ARMS if arm in arms])
    if not isinstance(single, list) or any(arm not in arms for arm in single):
        raise StudyError(path, f"single_task_arms must list arms among {list(arms)}")
    pairs = payload.get("pairs")
    if pairs is None:
        others = [arm for arm in arms if arm != reference]
        pairs = [[reference, arm] for arm in sorted(others, key=lambda arm: arm not in single)]
    elif not isinstance(pairs, list) or any(
        not isinstance(pair, list) or len(pair) != 2 or any(arm not in arms for arm in pair) for pair in pairs
    ):
        raise StudyError(path, f"pairs must be [arm, baseline] lists of arms among {list(arms)}")
    correction = payload.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise StudyError(path, f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    significance = payload.get("significance", 0.05)
    if not isinstance(significance, int | float) or not 0 < significance < 1:
        raise StudyError(path, f"significance must be a number in (0, 1), got {significance!r}")
    return Study(
        path=root,
        name=str(payload.get("name", root.name)),
        arms=arms,
        seeds=tuple(int(seed) for seed in _field(path, payload, "seeds", list)),
        reference_arm=reference,
        tasks=tuple(tasks),
        runs=tuple(runs),
        single_task_arms=tuple(single),
        pairs=tuple((str(a), str(b)) for a, b in pairs),
        correction=str(correction),
        significance=float(significance),
    )


def weighted_by_round(rows: Sequence[Mapping[str, Any]], task: str, metric: str) -> dict[int, float]:
    """Example-weighted mean of ``metric`` over clients per round (null values skipped).

    Same rule as :class:`fedmtl.runfiles.summary.EvalCurves`, restated here so that analysis does not
    import torch through the task kinds.
    """
    sums: dict[int, float] = defaultdict(float)
    weights: dict[int, float] = defaultdict(float)
    for row in rows:
        if row["task"] == task and row.get(metric) is not None:
            sums[row["round"]] += row[metric] * row["num_examples"]
            weights[row["round"]] += row["num_examples"]
    return {r: sums[r] / weights[r] for r in sorted(sums) if weights[r] > 0}


def last_by_client(rows: Sequence[Mapping[str, Any]], task: str, metric: str) -> dict[int, float]:
    """Client -> ``metric`` at the client's last round with a value for ``task``."""
    latest: dict[int, tuple[int, float]] = {}
    for row in rows:
        if row["task"] == task and row.get(metric) is not None:
            client = int(row["client"])
            if client not in latest or row["round"] >= latest[client][0]:
                latest[client] = (row["round"], float(row[metric]))
    return {client: value for client, (_, value) in sorted(latest.items())}


def cosine_matrix(path: Path, round_: int, upper: Sequence[float | None], clients: Sequence[int]) -> np.ndarray:
    """The symmetric K x K matrix (ones on the diagonal) from its strict upper triangle, row-major."""
    size = len(clients) if clients else int(round((1 + math.sqrt(1 + 8 * len(upper))) / 2))
    if len(upper) != size * (size - 1) // 2:
        raise StudyError(
            path, f"round {round_}: {len(upper)} cosines do not fill the upper triangle of a {size} x {size} matrix"
        )
    matrix = np.eye(size)
    rows, cols = np.triu_indices(size, k=1)
    values = np.array([math.nan if v is None else float(v) for v in upper], dtype=float)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


def read_server(path: Path) -> tuple[ServerRound, ...]:
    if not path.is_file():
        return ()
    rounds = []
    for row in read_jsonl(path, ("round",)):
        clients = tuple(int(c) for c in row.get("clients") or ())
        upper = row.get("cosines_upper")
        rounds.append(
            ServerRound(
                round=int(row["round"]),
                conflict_fraction=row.get("conflict_fraction"),
                clients=clients,
                cosines=None if upper is None else cosine_matrix(path, int(row["round"]), upper, clients),
                bytes_up=row.get("bytes_up"),
                bytes_down=row.get("bytes_down"),
                epsilon=row.get("epsilon"),
            )
        )
    return tuple(rounds)


def read_task_cosines(path: Path) -> tuple[TaskCosine, ...]:
    if not path.is_file():
        return ()
    cosines = []
    for number, row in enumerate(read_jsonl(path, ("round", "client")), start=1):
        for pair in row.get("task_cosines") or ():
            try:
                first, second = pair["tasks"]
            except (KeyError, TypeError, ValueError):
                raise StudyError(path, f"row {number}: task_cosines entries need a two-task 'tasks' list") from None
            cosines.append(TaskCosine(int(row["round"]), int(row["client"]), (first, second), pair.get("cosine")))
    return tuple(cosines)


def read_run(run: Run, tasks: Sequence[Task], diagnostics: bool = True) -> RunResult:
    """One run directory: final metrics, learning curves, and (``diagnostics``) server rounds and
    task-gradient cosines."""
    if not run.dir.is_dir():
        raise StudyError(run.dir, f"run directory of arm {run.arm!r} seed {run.seed} not found")
    rows = [
        row
        for row in read_table(find_metrics_file(run.dir), ("round", "split", "client", "task", "num_examples"))
        if row["split"] == EVAL_SPLIT
    ]
    curves, final, by_client = {}, {}, {}
    for task in tasks:
        curve = weighted_by_round(rows, task.name, task.metric)
        if curve:
            curves[task.name] = curve
            final[task.name] = curve[max(curve)]
            by_client[task.name] = last_by_client(rows, task.name, task.metric)
    return RunResult(
        run=run,
        final=final,
        final_by_client=by_client,
        curves=curves,
        server=read_server(run.dir / SERVER_FILE) if diagnostics else (),
        task_cosines=read_task_cosines(run.dir / CLIENTS_FILE) if diagnostics else (),
    )


def collect_study(study_dir: str | Path) -> StudyData:
    """Read ``study.json`` and every finished run it lists."""
    study = load_study(study_dir)
    done = [run for run in study.runs if run.status == DONE]
    results = {(run.arm, run.seed): read_run(run, study.tasks) for run in done}
    return StudyData(study, results, tuple(run for run in study.runs if run.status != DONE))
