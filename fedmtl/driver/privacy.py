"""The privacy accountant of a run with client-level DP noise: epsilon after every round in ``server.jsonl``
(``epsilon``), and the run stopped before the round that would spend more than ``privacy.epsilon_budget``."""

from __future__ import annotations

from collections import Counter

from fedmtl.config.experiment import ExperimentConfig, sample_size
from fedmtl.core import protocol
from fedmtl.core.files import read_rows
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE
from fedmtl.core.messages import Exchange
from fedmtl.driver.loop import Callback, RunState
from fedmtl.federation.algorithm import TrainResult
from fedmtl.methods.accounting import central_epsilon, local_epsilon


class PrivacyAccounting(Callback):
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.privacy = cfg.privacy
        members = len(cfg.clients.member_ids())
        self.sampling_rate = sample_size(members, cfg.server.fraction_fit) / members
        self.rounds_done = 0
        self.sent: Counter[int] = Counter()  # client id -> updates aggregated (noise on the client)

    def epsilon(self, rounds: int, sent: Counter[int]) -> float:
        z, delta = self.privacy.noise_multiplier, self.privacy.delta
        if self.privacy.central:
            return central_epsilon(z, self.sampling_rate, rounds, delta)
        return local_epsilon(z, max(sent.values(), default=0), delta)

    def on_run_start(self, state: RunState) -> None:
        """On resume, the rounds and updates already spent, from the server rows that are kept."""
        if state.done == 0:
            return
        for row in read_rows(state.run.path / SERVER_FILE):
            if row["round"] <= state.done:
                self.rounds_done = max(self.rounds_done, row["round"])
                secure = row.get("secure_aggregation") or {}  # the server saw no rows: the contributors
                self.sent.update(row.get("clients") or secure.get("clients") or [])

    def on_trained(self, state: RunState, server_round: int, result: TrainResult, exchange: Exchange) -> None:
        self.rounds_done = server_round
        self.sent.update(result.accepted)
        spent = self.epsilon(self.rounds_done, self.sent)
        state.row["epsilon"] = state.epsilon = spent
        budget = self.privacy.epsilon_budget
        if budget is None or server_round >= state.cfg.rounds:
            return
        every_client_once_more = Counter({c: n + 1 for c, n in self.sent.items()}) or Counter({0: 1})
        following = self.epsilon(self.rounds_done + 1, every_client_once_more)
        if following > budget:
            state.stop(
                f"privacy budget: epsilon {spent:.3g} after round {server_round}; "
                f"round {server_round + 1} would reach {following:.3g} > {budget:g}"
            )


class SampleLevelAccounting(Callback):
    """``privacy.sample_level``: each client's own epsilon, as its last training report gave it."""

    def on_run_start(self, state: RunState) -> None:
        if state.done == 0:
            return
        for row in read_rows(state.run.path / CLIENTS_FILE):
            if row["round"] <= state.done and row.get("sample_epsilon") is not None:
                state.sample_epsilon[int(row["client"])] = float(row["sample_epsilon"])

    def on_trained(self, state: RunState, server_round: int, result: TrainResult, exchange: Exchange) -> None:
        for report in result.reports:
            if protocol.SAMPLE_EPSILON in report:
                client = int(protocol.as_number(report[protocol.CLIENT_ID]))
                state.sample_epsilon[client] = float(protocol.as_number(report[protocol.SAMPLE_EPSILON]))
