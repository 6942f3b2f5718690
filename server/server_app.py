"""The Flower ServerApp. ``app`` reads its config from the run config (``flwr run``, deployment);
``simulate.py`` builds one with :func:`make_server_app` around an already validated config.

From the run config, ``clients.count`` may be left to the federation (see
:func:`server.loop.config_for_federation`), and ``resume-dir`` continues a run directory from its last
checkpoint, as ``simulate.py --resume`` does. ``flwr run`` exits 0 even when the ServerApp fails, so a
failure ends with one line, ``fedmtl: run failed: ...``, in the run's log (``flwr run --stream``,
``flwr log``) before Flower marks the run ``finished:failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import RESUME_DIR_KEY, pull_interval, resume_dir
from fedmtl.core.errors import ConfigError
from fedmtl.runfiles.rundir import RunDirectory
from server.engines.grid import PULL_INTERVAL_S
from server.federation import config_for_federation, run_federation

RESUME_IGNORED = ("output",)  # sections a resumed run may change: where and how files are written


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_for_resume(path: str, cfg: ExperimentConfig) -> RunDirectory:
    """The run directory ``resume-dir`` names. Its clients rebuild the experiment from the run config,
    so the run config must give the experiment the directory was started with (``output`` aside)."""
    if not Path(path).is_absolute():
        raise ConfigError(RESUME_DIR_KEY, f"must be an absolute path (the ServerApp runs elsewhere), got {path!r}")
    run, stored = RunDirectory.open(path)
    old, new = (
        {k: v for k, v in _flat(c.to_dict()).items() if k.split(".")[0] not in RESUME_IGNORED} for c in (stored, cfg)
    )
    if differing := sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)):
        key = differing[0]
        raise ConfigError(
            RESUME_DIR_KEY,
            f"{path} was started with {key} = {old.get(key)!r} but this run config gives {new.get(key)!r} "
            f"({len(differing)} keys differ): resume with the run config of the original run",
        )
    return run


def make_server_app(
    cfg: ExperimentConfig | None = None,
    run: RunDirectory | None = None,
    resume: bool = False,
    attempt: int = 0,
    client_state_dir: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> ServerApp:
    """``client_state_dir``: where simulated clients persist private state (a deployed SuperNode
    names its own with ``--node-config state-dir=...``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_dir = run
        try:
            config = cfg or config_for_federation(grid, context.run_config)
            resume_from = None if cfg else resume_dir(context.run_config)
            if run_dir is None:
                run_dir = open_for_resume(resume_from, config) if resume_from else RunDirectory.create(config)
            if resume_from:
                print(f"fedmtl: resuming {run_dir.path} from its last checkpoint", flush=True)
            run_federation(
                grid, config, run_dir, echo=echo, resume=resume or bool(resume_from), attempt=attempt,
                client_state_dir=client_state_dir,
                pull_interval_s=pull_interval(context.run_config, PULL_INTERVAL_S),
            )  # fmt: skip
        except Exception as err:
            if cfg is None:  # under flwr run: the one line to look for (simulate.py reports errors itself)
                where = f" (files so far in {run_dir.path}; continue with resume-dir)" if run_dir else ""
                print(f"fedmtl: run failed: {type(err).__name__}: {err}{where}", flush=True)
            raise

    return app


app = make_server_app()
