"""Run a study (arms x seeds) or a sweep (grid points x study) into one directory, resumably.

Layout (what :mod:`fedmtl.study.report` and :mod:`fedmtl.study.sweep` read)::

    <study>/config.yaml  study.json  report.md  report.html  summary.json  plots/
    <study>/arms/<arm>/seed-<seed>/          one run directory per (arm, seed)
    <sweep>/config.yaml  sweep.json  sweep.md  sweep.csv  sweep.png
    <sweep>/points/<i>/                      one study per grid point

``study.json`` / ``sweep.json`` record what finished; running again on the same directory
(``simulate.py --resume``) skips finished runs and redoes an interrupted one from scratch.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fedmtl.config.experiment import ExperimentConfig, StudyConfig, SweepConfig, point_config
from fedmtl.runfiles.rundir import CONFIG_FILE, atomic_write_text
from fedmtl.study.arms import ARMS, Federate

STUDY_FILE = "study.json"
SWEEP_FILE = "sweep.json"
DONE = "done"


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def study_manifest(cfg: ExperimentConfig) -> dict[str, Any]:
    seeds = list(cfg.study.seeds or (cfg.seed,))
    tasks = [
        {"name": s.name, "metric": s.kind_impl.headline_metric, "higher_is_better": s.kind_impl.higher_is_better}
        for s in cfg.data.task_specs()
    ]
    runs = [
        {"arm": arm, "seed": seed, "dir": f"arms/{arm}/seed-{seed}", "status": "pending"}
        for seed in seeds
        for arm in cfg.study.arms
    ]
    return {
        "name": cfg.name,
        "arms": list(cfg.study.arms),
        "seeds": seeds,
        "reference_arm": cfg.study.reference_arm,
        "tasks": tasks,
        "runs": runs,
    }


def run_study(
    cfg: ExperimentConfig, study_dir: Path, federate: Federate, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every unfinished (arm, seed) of ``cfg.study`` into ``study_dir``; write the report; return its summary."""
    from fedmtl.study.report import write_report  # matplotlib only once something is reported

    manifest_path = study_dir / STUDY_FILE
    manifest = _read(manifest_path) or study_manifest(cfg)
    _write(manifest_path, manifest)
    total = len(manifest["runs"])
    for index, entry in enumerate(manifest["runs"], 1):
        if entry["status"] == DONE:
            continue
        run_dir = study_dir / entry["dir"]
        if run_dir.exists():  # interrupted: start this run over
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        arm_cfg = replace(cfg, seed=entry["seed"], study=StudyConfig(), sweep=SweepConfig())
        ARMS[entry["arm"]]().run(arm_cfg, run_dir, federate)
        entry["status"] = DONE
        _write(manifest_path, manifest)
        echo(
            f"study {cfg.name}: [{index}/{total}] {entry['arm']} seed {entry['seed']} done in {time.perf_counter() - started:.1f} s"
        )
    return write_report(study_dir)


def run_sweep(
    cfg: ExperimentConfig, sweep_dir: Path, federate: Federate, echo: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run the study of every grid point of ``cfg.sweep`` into ``sweep_dir``; write the sweep report."""
    from fedmtl.study.sweep import write_sweep_report

    manifest_path = sweep_dir / SWEEP_FILE
    points = cfg.sweep.points()
    manifest = _read(manifest_path) or {
        "name": cfg.name,
        "keys": list(cfg.sweep.grid),
        "points": [
            {"values": values, "study_dir": f"points/{i}", "status": "pending"} for i, values in enumerate(points)
        ],
    }
    _write(manifest_path, manifest)
    raw = cfg.to_dict()
    for i, entry in enumerate(manifest["points"], 1):
        if entry["status"] == DONE:
            continue
        point = point_config(raw, entry["values"])
        study_dir = sweep_dir / entry["study_dir"]
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_dir / CONFIG_FILE, yaml.safe_dump(point.to_dict(), sort_keys=False))
        echo(f"sweep {cfg.name}: point {i}/{len(points)}: {', '.join(f'{k}={v}' for k, v in entry['values'].items())}")
        run_study(point, study_dir, federate, echo)
        entry["status"] = DONE
        _write(manifest_path, manifest)
    return write_sweep_report(sweep_dir)
