"""One run, assembled: the server algorithm, the run's callbacks, the driver, over a given engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.driver.checkpointing import Checkpointing
from fedmtl.driver.engine import Engine
from fedmtl.driver.loop import Callback, RoundDriver, RunState
from fedmtl.driver.privacy import PrivacyAccounting, SampleLevelAccounting
from fedmtl.driver.recording import Recorder
from fedmtl.driver.summary import Progress, Summary
from fedmtl.driver.tensorboard import TensorBoard
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runfiles.summary import EvalCurves


def run_callbacks(cfg: ExperimentConfig, run: RunDirectory, echo: Callable[[str], None] | None) -> list[Callback]:
    """What every run does besides training, in the order it happens at each point: rows are written
    before the checkpoint that covers them (the privacy spent is in the round's row before it is written),
    TensorBoard mirrors the written rows, the summary comes last."""
    callbacks: list[Callback] = [Recorder(), Checkpointing()]
    if cfg.privacy.noise_multiplier > 0:
        callbacks.append(PrivacyAccounting(cfg))
    if cfg.privacy.sample_level.enabled:
        callbacks.append(SampleLevelAccounting())
    if run.tensorboard:
        callbacks.append(TensorBoard())
    callbacks.append(Summary())
    if echo is not None:
        callbacks.append(Progress(echo))
    return callbacks


def run_rounds(
    cfg: ExperimentConfig,
    run: RunDirectory,
    engine: Engine,
    *,
    resume: bool = False,
    attempt: int = 0,
    state_dir: str | None = None,
    echo: Callable[[str], None] | None = print,
    extra: Sequence[Callback] = (),
) -> RunState:
    """Run ``cfg``'s rounds over ``engine`` into ``run`` (from its checkpoint when ``resume``)."""
    state = RunState(cfg, run, ServerAlgorithm(cfg), EvalCurves(cfg.data.task_specs()), resume, attempt, state_dir)
    RoundDriver(state, engine, [*run_callbacks(cfg, run, echo), *extra]).run()
    return state
