"""The round driver: the one loop over rounds. Evaluate round 0, then train -> aggregate -> evaluate.

The driver talks to an :class:`~fedmtl.driver.engine.Engine` for messages and to the
:class:`~fedmtl.federation.algorithm.ServerAlgorithm` for every server rule; everything else a run
does (its files, checkpoints and resume, the summary, TensorBoard, progress lines) is a
:class:`Callback` called at fixed points: run start, replies in and aggregated, evaluated, round end,
run end. A callback may add entries to the round's server row (:attr:`RunState.row`) or stop the run
(:meth:`RunState.stop`). Every study arm runs through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core import protocol
from fedmtl.core.errors import FederationError
from fedmtl.core.messages import Exchange
from fedmtl.driver.engine import Engine
from fedmtl.driver.schedule import is_evaluation_round, updates_needed
from fedmtl.federation.algorithm import ServerAlgorithm, TrainResult
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runfiles.summary import EvalCurves


@dataclass
class RunState:
    """What the driver and its callbacks share during a run."""

    cfg: ExperimentConfig
    run: RunDirectory
    algorithm: ServerAlgorithm
    curves: EvalCurves
    resume: bool = False  # continue from the run directory's checkpoint
    attempt: int = 0  # restarts after dead workers so far (clients draw their faults per attempt)
    state_dir: str | None = None  # where simulated participants persist private state
    done: int = 0  # the last round already in the run files (set by the checkpoint callback on resume)
    durable: int = 0  # the last checkpointed round
    row: dict[str, Any] = field(default_factory=dict)  # the current round's server row, filled by callbacks
    failed: bool = False  # the current round failed (too few valid updates): the run stops after it
    stopped: str | None = None
    epsilon: float | None = None  # privacy with noise: the (epsilon, privacy.delta) spent so far
    sample_epsilon: dict[int, float] = field(default_factory=dict)  # privacy.sample_level: client -> its epsilon
    seconds: float = 0.0  # the last round's wall time
    round_rows: list[dict[str, Any]] = field(default_factory=list)  # the metric rows recorded this round

    def metric_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows just written to the metrics table: the evaluation curves and later callbacks see them."""
        self.curves.add(rows)
        self.round_rows.extend(rows)

    def stop(self, reason: str) -> None:
        """End the run after this round (a callback's decision, e.g. a budget spent)."""
        self.stopped = reason

    def round_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            protocol.DURABLE_ROUND: self.durable,
            protocol.ATTEMPT: self.attempt,
            protocol.CLIENTS_COUNT: self.cfg.clients.count,
            protocol.RUN_KEY: self.run.path.name,
        }
        if self.state_dir:
            config[protocol.STATE_DIR] = self.state_dir
        return config


class Callback:
    """A hook into the round loop; every method is optional."""

    def on_run_start(self, state: RunState) -> None:
        """Before round 0's evaluation (or the first resumed round)."""

    def on_round_start(self, state: RunState, server_round: int) -> None:
        """Before the round's training messages are sent."""

    def on_trained(self, state: RunState, server_round: int, result: TrainResult, exchange: Exchange) -> None:
        """The round's training replies are in, screened and aggregated (also when the round then fails)."""

    def on_evaluated(self, state: RunState, server_round: int, reports: Sequence[dict], exchange: Exchange) -> None:
        """An evaluation's reports are in (one per client evaluated)."""

    def on_round_end(self, state: RunState, server_round: int) -> None:
        """The round is complete (``state.row`` holds its server row), or it failed and the run stops."""

    def on_run_end(self, state: RunState) -> None:
        """Every round is done (not called when the run stops on an error)."""

    def on_close(self, state: RunState) -> None:
        """Always last, whether the run finished or failed: release what the callback holds."""


@dataclass
class RoundDriver:
    """Runs ``state.cfg``'s rounds over ``engine``, calling ``callbacks`` in order at every point."""

    state: RunState
    engine: Engine
    callbacks: Sequence[Callback]

    def _each(self, hook: Callable[[Callback], object]) -> None:
        for callback in self.callbacks:
            hook(callback)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._each(lambda c: c.on_close(self.state))

    def _run(self) -> None:
        state, cfg = self.state, self.state.cfg
        self.engine.connect(len(state.algorithm.participants), state.algorithm.interchangeable)
        self._each(lambda c: c.on_run_start(state))
        if state.done == 0:
            state.round_rows = []
            self._evaluate(0)
        for server_round in range(state.done + 1, cfg.rounds + 1):
            state.row, state.round_rows = {}, []
            for callback in self.callbacks:
                callback.on_round_start(state, server_round)
            self._train(server_round)
            if is_evaluation_round(cfg, server_round) or state.stopped:  # a run that stops early ends evaluated
                self._evaluate(server_round)
            for callback in self.callbacks:
                callback.on_round_end(state, server_round)
            if state.stopped:
                break
        self._each(lambda c: c.on_run_end(state))

    def _train(self, server_round: int) -> None:
        state, cfg = self.state, self.state.cfg
        sends = state.algorithm.train_sends(server_round, state.round_config())
        exchange = self.engine.exchange(sends, cfg.server.round_timeout_s, on_reply=state.algorithm.on_reply)
        result = state.algorithm.aggregate(sends, exchange.replies, exchange.secure)
        self._each(lambda c: c.on_trained(state, server_round, result, exchange))
        short = [c for c in result.cohorts if c.accepted < updates_needed(cfg, c.sampled)]
        if short:
            state.failed = True
            self._each(lambda c: c.on_round_end(state, server_round))  # the failed round's row is written
            cohort = short[0]
            where = "" if len(result.cohorts) == 1 else f" of cohort {cohort.key}"
            raise FederationError(
                f"round {server_round}: only {cohort.accepted} of {cohort.sampled} sampled clients{where} sent a "
                f"valid update (server.min_fit_fraction = {cfg.server.min_fit_fraction}); stopping. Files up to "
                f"round {server_round - 1} are complete."
            )

    def _evaluate(self, server_round: int) -> None:
        state = self.state
        sends = state.algorithm.evaluate_sends(server_round, state.round_config())
        exchange = self.engine.exchange(sends, state.cfg.server.round_timeout_s)
        failed = [reply for reply in exchange.replies if reply.error is not None]
        if exchange.replies and len(failed) == len(exchange.replies):  # nothing to record: say why
            raise FederationError(
                f"round {server_round}: every evaluation failed; participant {failed[0].participant}: {failed[0].error}"
            )
        reports = [report for reply in exchange.replies if reply.error is None for report in reply.reports]
        self._each(lambda c: c.on_evaluated(state, server_round, reports, exchange))
