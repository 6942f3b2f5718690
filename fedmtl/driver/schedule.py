"""The schedule of a run: which rounds are evaluated and checkpointed, and when a round counts."""

from __future__ import annotations

import math

from fedmtl.config.experiment import ExperimentConfig


def is_evaluation_round(cfg: ExperimentConfig, server_round: int) -> bool:
    """Round 0, every ``eval_every``-th round and the last round are evaluated."""
    return server_round % cfg.eval_every == 0 or server_round == cfg.rounds


def evaluation_rounds(cfg: ExperimentConfig) -> list[int]:
    return [r for r in range(cfg.rounds + 1) if is_evaluation_round(cfg, r)]


def is_checkpoint_round(cfg: ExperimentConfig, server_round: int) -> bool:
    return bool(cfg.checkpoint.every) and server_round % cfg.checkpoint.every == 0


def updates_needed(cfg: ExperimentConfig, sampled: int) -> int:
    """Valid updates a cohort needs to be aggregated (``server.min_fit_fraction`` of its sampled, at least one)."""
    return max(math.ceil(cfg.server.min_fit_fraction * sampled), 1)
