"""How the apps find their experiment config when Flower (not simulate.py) starts them.

``flwr run`` and deployed SuperLinks hand the apps a flat ``run_config``: ``config-file``
(a YAML path), the typed keys of :data:`TYPED_KEYS` (declared in ``pyproject.toml``'s
``[tool.flwr.app.config]``, so Flower's tools show them; their "unset" value leaves the setting to
the file or the defaults), and ``config-overrides`` (``key.path=value`` assignments separated by
``;``), applied in that order. ``resume-dir`` names a run directory to continue from its last
checkpoint (see :func:`resume_dir`).

``clients.count`` may be left to the federation: when the run config does not set it, the ServerApp
takes the number of nodes (``num-supernodes`` in simulation, the SuperNodes connected in a
deployment) and sends it to the clients with every message (``protocol.CLIENTS_COUNT``); both
sides pass it here as ``clients_count``.

Flower does not change the working directory of the apps it starts: a ServerApp runs in the
SuperLink's working directory, a ClientApp in its SuperNode's. So a relative ``config-file`` is
looked up first inside the app itself (the FAB that ``flwr run`` shipped, e.g.
``configs/default.yaml``: the same file on every node), then in the working directory. Paths
*inside* the config (``output.run_dir``, ``output.dir``) are not rewritten: make them absolute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.loading import build_config
from fedmtl.config.raw import apply_override, load_raw, set_path
from fedmtl.core.errors import ConfigError

CONFIG_FILE_KEY = "config-file"
OVERRIDES_KEY = "config-overrides"
RESUME_DIR_KEY = "resume-dir"  # "" = a fresh run
PULL_INTERVAL_KEY = "pull-interval"  # seconds between the ServerApp's pulls for replies; 0.0 = fedmtl's default
CLIENTS_COUNT_PATH = "clients.count"
# run-config key -> (config key path, the value that means "not set here")
TYPED_KEYS: dict[str, tuple[str, object]] = {
    "rounds": ("rounds", 0),
    "seed": ("seed", -1),
    "aggregator": ("server.aggregator", ""),  # the whole component: {name: pcgrad} with its defaults
    "fraction-fit": ("server.fraction_fit", 0.0),
    "local-steps": ("client.local_steps", 0),
    "lr": ("client.lr", 0.0),
    "output-dir": ("output.dir", ""),
}
APP_ROOT = Path(__file__).resolve().parents[2]  # the project checkout, or the installed FAB's directory


def resolve_config_file(value: str, app_root: Path = APP_ROOT) -> str | None:
    """The YAML path to load for a ``config-file`` value ('' -> None: built-in defaults)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    bundled = app_root / path
    return str(bundled) if bundled.is_file() else str(path)


def split_overrides(value: str) -> list[str]:
    return [part.strip() for part in value.split(";") if part.strip()]


def raw_from_run_config(run_config: Mapping[str, object], app_root: Path = APP_ROOT) -> dict:
    """The raw (unvalidated) config mapping: the file, then the typed keys, then the overrides."""
    raw = load_raw(resolve_config_file(str(run_config.get(CONFIG_FILE_KEY, "") or ""), app_root))
    for key, (key_path, unset) in TYPED_KEYS.items():
        if (value := run_config.get(key, unset)) != unset:
            set_path(raw, key_path, value, f"run config {key}")  # the typed value itself, not re-parsed text
    for assignment in split_overrides(str(run_config.get(OVERRIDES_KEY, "") or "")):
        apply_override(raw, assignment)
    return raw


def fixed_clients_count(run_config: Mapping[str, object], app_root: Path = APP_ROOT) -> int | None:
    """``clients.count`` as the run config sets it (file, typed keys, overrides), or None: left to the federation."""
    return _count_in(raw_from_run_config(run_config, app_root))


def _count_in(raw: Mapping[str, object]) -> int | None:
    clients = raw.get("clients")
    count = clients.get("count") if isinstance(clients, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def resume_dir(run_config: Mapping[str, object]) -> str | None:
    """The run directory that ``resume-dir`` names, or None for a fresh run."""
    value = str(run_config.get(RESUME_DIR_KEY, "") or "")
    return value or None


def pull_interval(run_config: Mapping[str, object], default: float) -> float:
    """``pull-interval`` in seconds (``default`` when unset, i.e. 0)."""
    value = run_config.get(PULL_INTERVAL_KEY, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"run config {PULL_INTERVAL_KEY}", f"must be a number of seconds >= 0, got {value!r}")
    return float(value) or default


def config_from_run_config(
    run_config: Mapping[str, object], app_root: Path = APP_ROOT, clients_count: int | None = None
) -> ExperimentConfig:
    """The config of one federation; ``clients_count`` (the federation's size) fills in ``clients.count``
    when the run config leaves it unset. A study or sweep runs many federations, which only
    ``simulate.py`` drives: refused here with one line, rather than silently running one."""
    raw = raw_from_run_config(run_config, app_root)
    if clients_count is not None and "count" not in (raw.get("clients") or {}):
        set_path(raw, CLIENTS_COUNT_PATH, clients_count, "the federation's size")
    cfg = build_config(raw)
    if cfg.study.arms or cfg.sweep.grid:
        section = "sweep.grid" if cfg.sweep.grid else "study.arms"
        raise ConfigError(
            section,
            "a study or sweep runs many federations: run it with `python simulate.py --config <file>`, not with flwr run",
        )
    return cfg
