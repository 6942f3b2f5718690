"""How the apps find their experiment config when Flower (not simulate.py) starts them.

``flwr run`` and deployed SuperLinks hand the apps a flat ``run_config``: ``config-file``
(a YAML path) and/or ``config-overrides`` (``key.path=value`` assignments separated by ``;``).
"""

from __future__ import annotations

from collections.abc import Mapping

from fedmtl.config import ExperimentConfig, load_config

CONFIG_FILE_KEY = "config-file"
OVERRIDES_KEY = "config-overrides"


def config_from_run_config(run_config: Mapping[str, object]) -> ExperimentConfig:
    path = str(run_config.get(CONFIG_FILE_KEY, "") or "") or None
    overrides = [part.strip() for part in str(run_config.get(OVERRIDES_KEY, "") or "").split(";") if part.strip()]
    return load_config(path, overrides)
