"""The end of a run as callbacks: the final encoder and the per-task summary, and a progress line per
evaluated round."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core import protocol
from fedmtl.core.layout import CLIENTS_FILE, SUMMARY_JSON, SUMMARY_MD
from fedmtl.driver.loop import Callback, RunState
from fedmtl.driver.schedule import is_evaluation_round
from fedmtl.runfiles.gates import final_readings, gates_table, per_task
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runfiles.summary import EvalCurves, format_table, task_summary


class Summary(Callback):
    """``encoder.pt`` (one cohort's state dict, or cohort key -> state dict) and ``summary.json``/``.md``."""

    def on_run_end(self, state: RunState) -> None:
        encoders = state.algorithm.encoders()
        state.run.save_encoder(next(iter(encoders.values())) if len(encoders) == 1 else encoders)
        write_run_summary(state.run, state.cfg, state.curves, state.stopped, state.epsilon, state.sample_epsilon)


def write_run_summary(
    run: RunDirectory,
    cfg: ExperimentConfig,
    curves: EvalCurves,
    stopped: str | None = None,
    epsilon: float | None = None,
    sample_epsilon: Mapping[int, float] | None = None,
) -> list[dict]:
    """``summary.json``/``summary.md`` from the evaluation curves (why the run stopped early, if it did, and
    the privacy spent, with noise); returns the per-task summary."""
    specs = cfg.data.task_specs()
    summary = task_summary(curves, specs, protocol.EVAL)
    personal = task_summary(curves, specs, protocol.PERSONAL)
    overview: dict[str, Any] = {"name": cfg.name, "seed": cfg.seed, "rounds": cfg.rounds, "tasks": summary}
    text = f"# {cfg.name}: per-task summary\n\n{format_table(summary)}\n"
    if epsilon is not None:
        overview["privacy"] = {"epsilon": epsilon, "delta": cfg.privacy.delta}
        text += (
            f"\nPrivacy spent: epsilon {epsilon:.3g} at delta {cfg.privacy.delta:g} ({cfg.privacy.noise_at} noise).\n"
        )
    if sample_epsilon:
        worst = max(sample_epsilon.values())
        overview.setdefault("privacy", {"delta": cfg.privacy.delta})["sample_level"] = {
            "epsilon_max": worst,
            "epsilon_by_client": {str(c): e for c, e in sorted(sample_epsilon.items())},
        }
        text += (
            f"\nSample-level DP inside the clients: epsilon up to {worst:.3g} at delta {cfg.privacy.delta:g} "
            "(each client's own, clients.jsonl).\n"
        )
    if stopped:
        overview["stopped"] = stopped
        text += f"\nStopped early: {stopped}.\n"
    gates = per_task(final_readings(run.path / CLIENTS_FILE)) if cfg.model.sharing.num_experts else []
    if gates:  # a mixture of experts: how each task's gates weigh the experts at the end (clients' means)
        overview["gates"] = [asdict(g) for g in gates]
        text += f"\n## Expert gates (model.sharing mmoe; clients.jsonl)\n\n{gates_table(gates)}\n"
    if personal:  # soft sharing: each client's personalised copy, evaluated on the same data
        overview["personal"] = personal
        text += f"\n## Personalised copies (model.sharing soft)\n\n{format_table(personal)}\n"
    run.write_json(SUMMARY_JSON, overview)
    run.write_text(SUMMARY_MD, text)
    return summary


class Progress(Callback):
    """One line per evaluated round: round, seconds, each task's headline metric (``output.progress``)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def on_round_end(self, state: RunState, server_round: int) -> None:
        evaluated = is_evaluation_round(state.cfg, server_round) or state.stopped
        if state.failed or not (state.cfg.output.progress and evaluated):
            return
        summary = task_summary(state.curves, state.cfg.data.task_specs(), protocol.EVAL)
        self.echo(progress_line(server_round, state.cfg.rounds, state.seconds, summary))
        if state.stopped:
            self.echo(f"stopped after round {server_round}: {state.stopped}")


def progress_line(server_round: int, rounds: int, seconds: float, summary: Sequence[Mapping[str, Any]]) -> str:
    tasks = "  ".join(f"{s['task']} {s['metric']}={s['value_final']:.3f}" for s in summary)
    return f"round {server_round:>3}/{rounds}  {seconds:6.2f}s  {tasks}"
