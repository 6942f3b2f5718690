"""The report's setup section: what each arm is (the arm it builds on, the settings it changes, its
pretraining phase) and which data issues the study injected (config ``data_issues``), read from
``study.json`` and the study's ``config.yaml``, so that a reader sees what was compared before the
comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fedmtl.core.layout import CONFIG_FILE, STUDY_FILE
from fedmtl.report.render import Block, Heading, Paragraph, Table


def _settings(values: dict[str, Any]) -> str:
    return "; ".join(f"`{key}: {json.dumps(value)}`" for key, value in values.items()) or "-"


def setup_blocks(study_dir: Path) -> list[Block]:
    """The arms table and the injected data issues; nothing for a study that records neither."""
    manifest = json.loads((study_dir / STUDY_FILE).read_text()) if (study_dir / STUDY_FILE).is_file() else {}
    specs: dict[str, dict[str, Any]] = manifest.get("arm_specs") or {}
    config_path = study_dir / CONFIG_FILE
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    issues: list[dict[str, Any]] = config.get("data_issues") or []
    blocks: list[Block] = []
    if specs:
        rows = []
        for name, spec in specs.items():
            pretrain = spec.get("pretrain")
            phase = f"{pretrain['rounds']} rounds on {', '.join(pretrain['tasks'])}" if pretrain else "-"
            rows.append([f"`{name}`", f"`{spec.get('base', name)}`", _settings(spec.get("set") or {}), phase])
        blocks += [
            Heading("Setup"),
            Paragraph("Each arm is the study's config as its base arm runs it, with the settings it changes."),
            Table(["arm", "base", "settings it changes", "pretraining"], rows),
        ]
    if issues:
        rows = [
            [
                str(issue.get("name")),
                str(issue.get("task")),
                ", ".join(map(str, issue.get("clients") or [])) or "all",
                _settings({k: v for k, v in issue.items() if k not in ("name", "task", "clients") and v is not None}),
            ]
            for issue in issues
        ]
        blocks += [
            Paragraph("Data issues injected on purpose (config `data_issues`, docs/DATA.md):"),
            Table(["issue", "task", "clients", "settings"], rows),
        ]
    return blocks
