"""Run a study (arms x seeds) or a sweep (grid points x study) into one directory, resumably.

Layout (what :mod:`fedmtl.report.report` and :mod:`fedmtl.report.sweep` read)::

    <study>/config.yaml  study.json  report.md  report.html  summary.json  plots/
    <study>/arms/<arm>/seed-<seed>/          one run directory per (arm, seed)
    <sweep>/config.yaml  sweep.json  sweep.md  sweep.csv  sweep.png
    <sweep>/points/<i>/                      one study per grid point

``study.json`` / ``sweep.json`` record what finished; running again on the same directory
(``simulate.py --resume``) skips finished runs and redoes an interrupted one from scratch.

Every run is one federation through the round driver: an arm is a configuration
(:mod:`fedmtl.config.arms`), built by :func:`fedmtl.config.expansion.arm_config`, the same function
that checked it before anything ran. The reports are written by the caller (:mod:`fedmtl.report`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from fedmtl.config.arms import ARMS
from fedmtl.config.expansion import arm_config, point_config, pretrain_config
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core.files import atomic_write_text
from fedmtl.core.layout import (
    CONFIG_FILE,
    ENCODER_FILE,
    PRETRAIN_DIR,
    STUDY_FILE,
    SWEEP_FILE,
    arm_run_dir,
    sweep_point_dir,
)
from fedmtl.experiments.progress import Progress, run_line

DONE = "done"
Federate = Callable[[ExperimentConfig], None]  # run one federation, writing the run directory its config names


def at(cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """``cfg`` writing into ``run_dir``, quietly (the study prints one line per run)."""
    return replace(cfg, output=replace(cfg.output, run_dir=str(run_dir), progress=False))


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def study_manifest(cfg: ExperimentConfig) -> dict[str, Any]:
    study = cfg.study
    seeds = list(study.seeds or (cfg.seed,))
    names = study.arm_names()
    tasks = [
        {"name": s.name, "metric": s.kind_impl.headline_metric, "higher_is_better": s.kind_impl.higher_is_better}
        for s in cfg.data.task_specs()
    ]
    runs = [
        {"arm": arm, "seed": seed, "dir": arm_run_dir(arm, seed), "status": "pending"}
        for seed in seeds
        for arm in names
    ]
    specs = {name: study.arm_spec(name) for name in names}
    return {
        "name": cfg.name,
        "arms": list(names),
        "arm_specs": {
            name: {
                "base": spec.base,
                "set": dict(spec.set),
                **({"pretrain": asdict(spec.pretrain)} if spec.pretrain else {}),
            }
            for name, spec in specs.items()
        },
        "single_task_arms": [name for name, spec in specs.items() if ARMS[spec.base].single_task],
        "seeds": seeds,
        "reference_arm": study.reference_arm,
        "pairs": [list(pair) for pair in study.pairs()],
        "correction": study.correction,
        "significance": study.significance,
        "tasks": tasks,
        "runs": runs,
    }


def pending_runs(manifest: dict[str, Any]) -> int:
    return sum(entry["status"] != DONE for entry in manifest["runs"])


StudyDone = Callable[[Path], object]  # called with a study directory once its runs are done (writes its report)


@dataclass(frozen=True)
class Job:
    """One (arm, seed) of a study: its run (after its pretraining phase, if the arm has one). Picklable, so
    that a pool can run it in another process or on another node of a cluster."""

    arm: str
    seed: int
    cfg: ExperimentConfig  # the study's config at this seed
    run_dir: Path
    pretrain_dir: Path


def run_job(job: Job, federate: Federate) -> None:
    """Run ``job`` from scratch (whatever an interrupted or retried attempt left is removed first)."""
    for stale in (job.run_dir, job.pretrain_dir):
        if stale.exists():
            shutil.rmtree(stale)
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = job.cfg.study.arm_spec(job.arm)
    pretrained = None
    if spec.pretrain is not None:  # the phase first; the arm starts from its encoder
        job.pretrain_dir.parent.mkdir(parents=True, exist_ok=True)
        federate(at(pretrain_config(job.cfg, spec), job.pretrain_dir))
        pretrained = str(job.pretrain_dir / ENCODER_FILE)
    federate(at(arm_config(job.cfg, spec, pretrained), job.run_dir))


class RunPool(Protocol):
    """Runs a study's jobs several at a time (server/study_pool.py: Ray tasks on a cluster's nodes)."""

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        """Every job, each once; yields each as it finishes, with where and when it ran."""
        ...


def run_study(
    cfg: ExperimentConfig,
    study_dir: Path,
    federate: Federate,
    echo: Callable[[str], None] = print,
    progress: Progress | None = None,
    on_done: StudyDone | None = None,
    pool: RunPool | None = None,
) -> None:
    """Run every unfinished (arm, seed) of ``cfg.study`` into ``study_dir`` (one after another, or through
    ``pool``), then call ``on_done``."""
    manifest_path = study_dir / STUDY_FILE
    manifest = _read(manifest_path) or study_manifest(cfg)
    _write(manifest_path, manifest)
    progress = progress or Progress(pending_runs(manifest))
    entries = {(e["arm"], e["seed"]): e for e in manifest["runs"] if e["status"] != DONE}
    jobs = [
        Job(arm, seed, replace(cfg, seed=seed), study_dir / e["dir"], study_dir / PRETRAIN_DIR / e["dir"])
        for (arm, seed), e in entries.items()
    ]

    def done(job: Job, seconds: float, placement: dict[str, Any]) -> None:
        entry = entries[(job.arm, job.seed)]
        entry.update(status=DONE, **placement)
        _write(manifest_path, manifest)
        progress.finished(seconds)
        echo(f"{cfg.name}: {progress.line()} | {run_line(job.arm, job.seed, job.run_dir)}")

    if pool is None:
        for job in jobs:
            started = time.perf_counter()
            run_job(job, federate)
            done(job, time.perf_counter() - started, {})
    else:
        for job, placement in pool.run(jobs):
            done(job, placement.get("finished_at", 0.0) - placement.get("started_at", 0.0), placement)
    if on_done is not None:
        on_done(study_dir)


def run_sweep(
    cfg: ExperimentConfig,
    sweep_dir: Path,
    federate: Federate,
    echo: Callable[[str], None] = print,
    on_study_done: StudyDone | None = None,
    pool: RunPool | None = None,
) -> None:
    """Run the study of every grid point of ``cfg.sweep`` into ``sweep_dir`` (``on_study_done`` after each)."""
    manifest_path = sweep_dir / SWEEP_FILE
    points = cfg.sweep.points()
    manifest = _read(manifest_path) or {
        "name": cfg.name,
        "keys": list(cfg.sweep.grid),
        "points": [
            {"values": values, "study_dir": sweep_point_dir(i), "status": "pending"} for i, values in enumerate(points)
        ],
    }
    _write(manifest_path, manifest)
    runs_per_point = len(cfg.study.seeds or (cfg.seed,)) * len(cfg.study.arms)
    unfinished = 0
    for entry in manifest["points"]:
        if entry["status"] != DONE:
            study = _read(sweep_dir / entry["study_dir"] / STUDY_FILE)
            unfinished += runs_per_point if study is None else pending_runs(study)
    progress = Progress(unfinished)
    for i, entry in enumerate(manifest["points"], 1):
        if entry["status"] == DONE:
            continue
        point = point_config(cfg, entry["values"])
        study_dir = sweep_dir / entry["study_dir"]
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_dir / CONFIG_FILE, yaml.safe_dump(point.to_dict(), sort_keys=False))
        echo(f"sweep {cfg.name}: point {i}/{len(points)}: {', '.join(f'{k}={v}' for k, v in entry['values'].items())}")
        run_study(point, study_dir, federate, echo, progress, on_study_done, pool)
        entry["status"] = DONE
        _write(manifest_path, manifest)
