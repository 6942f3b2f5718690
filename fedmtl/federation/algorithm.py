"""The server's side of a round, without Flower: who is sent what, and what the replies make of the encoders.

:class:`ServerAlgorithm` holds one :class:`~fedmtl.federation.cohort.Cohort` per group of participants
that share an encoder (``server.cohorts``: one for the federation, one per task for the single-task
federation, one per participant for local training), the federated heads when ``server.federate_heads``,
and every rule of the server: sampling, screening, aggregation, head averaging, personalisation. It
returns what it computed (:class:`TrainResult`); the round driver owns the loop, the engine the messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmtl.config.experiment import ExperimentConfig, sample_size
from fedmtl.core import protocol
from fedmtl.core.messages import EVALUATE, TRAIN, Config, Kind, Reply, SecureMean, Send
from fedmtl.data.participants import Participant, client_ids
from fedmtl.federation import groups
from fedmtl.federation.cohort import Cohort, OnlyCohort
from fedmtl.federation.head_averaging import HeadAverager
from fedmtl.federation.round_rows import RoundRows
from fedmtl.federation.sampling import Sampler
from fedmtl.federation.screening import Accepted, screen
from fedmtl.federation.server_update import RoundDiagnostics, ServerUpdater
from fedmtl.model.networks import initial_head_state, initial_shared_state


@dataclass(frozen=True)
class CohortRound:
    key: str
    sampled: int
    accepted: int
    diagnostics: RoundDiagnostics | None  # None when nothing was aggregated (or the cohort adopts)


@dataclass
class TrainResult:
    """One training round as the server saw it: replies screened, accepted updates aggregated."""

    replies: int = 0  # replies received (failures included)
    failures: int = 0
    accepted: list[int] = field(default_factory=list)  # client ids whose update was aggregated
    rejected: list[tuple[int | None, str]] = field(default_factory=list)  # (client id, reason)
    cohorts: list[CohortRound] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # every reply's metric reports
    failed: list[str] = field(default_factory=list)  # the failures' reasons (first line each)
    groups: dict[str, list[int]] | None = None  # server.grouping: cohort key -> client ids after the round
    splits: list[dict[str, Any]] = field(default_factory=list)  # groups split this round, and into what
    secure: dict[str, Any] | None = None  # privacy.secure_aggregation: the protocol's figures for the round

    def count(self, reply: Reply) -> bool:
        """Count ``reply`` and its reports; False (and the reason's first line kept) when it failed."""
        self.replies += 1
        self.reports += reply.reports
        if reply.error is None:
            return True
        self.failures += 1
        self.failed.append(reply.error.splitlines()[0][:200] if reply.error else "?")
        return False


class ServerAlgorithm:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.participants = cfg.participants()
        shape, dim = cfg.data.image_shape(), cfg.data.feature_dim()
        self._initial = initial_shared_state(cfg.model, dim, cfg.seed, shape)
        server = cfg.server
        self.grouping = server.grouping
        self.regrouper = server.grouping.start()
        self.min_group = groups.smallest_group(server.aggregator.min_rows(), server.fraction_fit)
        if not server.grouping.groups_clients:
            keyed = server.cohorts.split(self.participants)
        else:
            initial = server.grouping.initial(client_ids(self.participants).tolist())
            keys = groups.initial_keys(initial)
            keyed = {key: groups.members_of(self.participants, g) for key, g in zip(keys, initial)}
        self.cohorts = [self._new_cohort(key, keyed[key]) for key in sorted(keyed)]
        self._index_cohorts()
        # server.client_affinity_every: cohort key -> (the encoder it sent, client id -> the encoder
        # that client trained from it) of the last round, probed by the cohort's clients this round
        self._probes: dict[str, tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]] = {}
        self._shared_mask = None  # server.shared_across_groups: the coordinates every group shares
        if server.shared_across_groups > 0:
            layout = self.cohorts[0].updater.layout
            self._shared_mask = groups.lower_blocks_mask(layout, server.shared_across_groups)
        self._rows: RoundRows | None = None  # this training round's rows, taken as replies arrive
        self.heads = None
        if server.federate_heads:
            heads = initial_head_state(cfg.model, dim, cfg.data.task_specs(), cfg.seed, shape)
            self.heads = HeadAverager(heads, across_tasks=server.heads_across_tasks)

    def _new_cohort(self, key: str, members: Sequence[Participant]) -> Cohort:
        server, adopts = self.cfg.server, self.cfg.server.cohorts.adopts
        updater = ServerUpdater(
            self._initial,
            server.aggregator,
            server.optimizer,
            seed=self.cfg.seed,
            device=server.device,
            gramian_precision=server.gramian_precision,
            personalisation=None if adopts else server.personalisation,
            central_privacy=self.cfg.privacy if self.cfg.privacy.central and not adopts else None,
            rows_per_round=sample_size(len(members), server.fraction_fit),
        )
        return Cohort(key, members, self._sampler(key), updater, adopts=adopts)

    def _sampler(self, key: str) -> Sampler:
        server = self.cfg.server
        return groups.sampler_for(self.cfg.seed, key, server.fraction_fit, server.fraction_evaluate)

    def _index_cohorts(self) -> None:
        if len(self.cohorts) == 1 and len(self.cohorts[0].members) == len(self.participants):
            self.cohort_of: Mapping[int, Cohort] = OnlyCohort(self.cohorts[0], len(self.participants))
        else:
            self.cohort_of = {p.index: c for c in self.cohorts for p in c.members}

    @property
    def interchangeable(self) -> bool:
        """Every participant is sent the same thing every round, so an engine that cannot tell nodes apart
        may send to every node without asking which participant it plays."""
        (cohort, *others) = self.cohorts
        alone = not others and not cohort.adopts and not cohort.sampler.samples
        return alone and cohort.updater.personal is None and not self.grouping.splits

    # --- what is sent ---------------------------------------------------------------------------

    def state_for(self, participant: int) -> dict[str, torch.Tensor]:
        """The parameters ``participant`` receives: its cohort's encoder (or its own) and the federated heads."""
        encoder = self.cohort_of[participant].state_for(participant)
        return encoder if self.heads is None else {**encoder, **self.heads.state_dict()}

    def sends(self, kind: Kind, server_round: int, config: Config) -> list[Send]:
        """One instruction per sampled participant, cohort by cohort; identical states are one object."""
        heads = None if self.heads is None else self.heads.state_dict()
        sends = []
        for cohort in self.cohorts:
            chosen = (
                cohort.sampler.train(cohort.members)
                if kind == TRAIN
                else cohort.sampler.evaluate(cohort.members, server_round)
            )
            shared = cohort.global_state() if heads is None else {**cohort.global_state(), **heads}
            probes = self._probes_for(cohort.key) if kind == TRAIN else None
            if probes is not None:  # the group's own members only (after a split: not the sibling group's)
                base, trained = probes
                members = {p.client_id for p in cohort.members}
                mine = {c: state for c, state in trained.items() if c in members}
                shared = {**shared, **protocol.probe_arrays(base, mine)}
            for p in chosen:
                arrays = shared if cohort.updater.client_offset(p.index) is None else self.state_for(p.index)
                sends.append(Send(p.index, kind, arrays, {**config, protocol.SERVER_ROUND: server_round}))
        return sends

    def _probes_for(self, key: str) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]] | None:
        """Last round's probes of cohort ``key``, or of the nearest group it split from (keys ``a.0.1``)."""
        parts = key.split(".")
        for length in range(len(parts), 0, -1):  # a bounded loop: no edit of it can spin forever
            probes = self._probes.get(".".join(parts[:length]))
            if probes is not None:
                return probes
        return None

    def train_sends(self, server_round: int, config: Config) -> list[Send]:
        """The round's instructions; their replies' rows are then taken as they come (:meth:`on_reply`)."""
        sends = self.sends(TRAIN, server_round, config)
        secure = self.cfg.privacy.secure_aggregation.enabled  # the server sees no row
        self._rows = None if secure else RoundRows(sends, self.cohort_of, lambda p: self.participants[p].client_id)
        return sends

    def on_reply(self, reply: Reply) -> None:
        """A training reply as it arrives, before the round ends: its update row is written now
        (:mod:`fedmtl.federation.round_rows`); it is screened with the others when the round ends."""
        if self._rows is not None:
            self._rows.take(reply)

    def evaluate_sends(self, server_round: int, config: Config) -> list[Send]:
        return self.sends(EVALUATE, server_round, config)

    # --- what comes back ------------------------------------------------------------------------

    def aggregate(
        self, sent: Sequence[Send], replies: Sequence[Reply], secure: SecureMean | None = None
    ) -> TrainResult:
        """Screen every reply, aggregate each cohort's accepted updates (stepping its encoder); under
        secure aggregation, step the one cohort with the ``secure`` mean update."""
        if secure is not None:
            return self._aggregate_secure(sent, replies, secure)
        result = TrainResult()
        accepted: list[Accepted] = []
        origin: dict[int, Reply] = {}  # id(accepted update) -> its reply
        expected = self.cohorts[0].updater.layout.expected_shapes
        optional = self.heads.expected_shapes if self.heads else None
        for reply in replies:
            if not result.count(reply):
                continue
            outcome = screen(
                reply, {a.participant for a in accepted}, expected, optional, self._update_norm,
                self.cfg.server.max_update_norm,
            )  # fmt: skip
            if isinstance(outcome, str):
                result.rejected.append((_client_of(reply), outcome))
                continue
            accepted.append(outcome)
            origin[id(outcome)] = reply
        accepted.sort(key=lambda a: (a.client_id, a.participant))  # row order independent of arrival order
        result.accepted = [a.client_id for a in accepted]
        if self.heads is not None and accepted:
            examples = [
                {t: v["num_examples"] for t, v in protocol.unflatten_task_metrics(a.report, protocol.TRAIN).items()}
                for a in accepted
            ]
            self.heads.step([a.heads for a in accepted], examples)
        sampled_by_cohort = {c.key: 0 for c in self.cohorts}
        for send in sent:
            sampled_by_cohort[self.cohort_of[send.participant].key] += 1
        server_round = int(protocol.as_number(sent[0].config[protocol.SERVER_ROUND])) if sent else 0
        stepped = []
        every = self.cfg.server.client_affinity_every
        self._probes = {}
        for cohort in self.cohorts:
            mine = [a for a in accepted if self.cohort_of[a.participant] is cohort]
            if every and server_round % every == 0 and len(mine) > 1:
                self._probes[cohort.key] = (cohort.global_state(), {a.client_id: dict(a.encoder) for a in mine})
            rows = None  # the update rows, taken before the step moves the encoder, when the rule wants them
            if mine and self.regrouper.wants_updates(server_round):
                rows = cohort.updater.update_matrix([a.encoder for a in mine]).cpu()
            streamed = self._rows.rows_for(cohort, mine, origin) if self._rows is not None and mine else None
            diagnostics = cohort.step(mine, streamed) if mine else None
            result.cohorts.append(CohortRound(cohort.key, sampled_by_cohort[cohort.key], len(mine), diagnostics))
            stepped.append((cohort, diagnostics, [a.report for a in mine], rows))
        if self._shared_mask is not None:
            aggregated = [
                float(sum(protocol.as_number(r[protocol.NUM_EXAMPLES]) for r in sent_back))
                for _, _, sent_back, _ in stepped
            ]
            groups.share_across(self.cohorts, self._shared_mask, aggregated)
        regrouped: list[Cohort] = []
        for cohort, diagnostics, reports, rows in stepped:
            regrouped += self._regroup(server_round, cohort, diagnostics, reports, result, rows)
        self._rows = None
        if self.grouping.groups_clients:
            self.cohorts = regrouped
            self._index_cohorts()
            result.groups = groups.membership(self.cohorts)
        return result

    def _aggregate_secure(self, sent: Sequence[Send], replies: Sequence[Reply], secure: SecureMean) -> TrainResult:
        """The server never saw a row: the mean update is the one row FedAvg averages (the config checks
        allow nothing else under secure aggregation), weighted by every contributor's examples; federated
        heads average per task from their weighted sums."""
        (cohort,) = self.cohorts
        result = TrainResult()
        contributed: list[dict[str, Any]] = []
        for reply in replies:
            if result.count(reply):
                contributed += reply.reports
        result.accepted = sorted(int(protocol.as_number(r[protocol.CLIENT_ID])) for r in contributed)
        layout = cohort.updater.layout
        if self.heads is not None:  # each head's weighted mean update beside the mean of its weights
            prefix = protocol.SECURE_WEIGHT_PREFIX
            weights = {k[len(prefix) :]: float(v.sum()) for k, v in secure.update.items() if k.startswith(prefix)}
            self.heads.step_from_means({k: secure.update[k] for k in weights}, weights)
        mean_update = layout.flatten({k: secure.update[k] for k in layout.keys})
        encoder = layout.unflatten(cohort.updater.param.detach() - mean_update)
        examples = sum(protocol.as_number(r[protocol.NUM_EXAMPLES]) for r in contributed)
        cohort.step([Accepted(-1, -1, encoder, {}, {protocol.NUM_EXAMPLES: examples})])
        result.cohorts.append(CohortRound(cohort.key, len(sent), int(secure.info["contributors"]), None))
        result.secure = {
            **secure.info,
            "clients": result.accepted,
            "mean_update_norm": round(float(mean_update.norm()), 6),
        }
        return result

    def _regroup(
        self,
        server_round: int,
        cohort: Cohort,
        diagnostics: RoundDiagnostics | None,
        reports: list,
        result: TrainResult,
        rows: torch.Tensor | None,
    ) -> list[Cohort]:
        """``cohort``, or the cohorts it splits into after this round (``server.grouping``)."""
        if not self.grouping.splits or diagnostics is None:
            return [cohort]
        seen = groups.group_round(cohort, diagnostics, reports, self.min_group, len(self.cohorts), rows)
        parts = self.regrouper.observe(server_round, seen)
        if parts is None:
            return [cohort]
        children = groups.split(cohort, parts, self._sampler)
        result.splits.append({"group": cohort.key, "into": groups.membership(children)})
        return children

    def _update_norm(self, participant: int, encoder: dict[str, torch.Tensor]) -> float:
        cohort = self.cohort_of[participant]
        return float((cohort.updater.layout.flatten(encoder) - cohort.received(participant)).norm())

    # --- state ------------------------------------------------------------------------------------

    def encoders(self) -> dict[str, dict[str, torch.Tensor]]:
        """Cohort key -> its encoder."""
        return {c.key: c.global_state() for c in self.cohorts}

    def state_dict(self) -> dict[str, Any]:
        return {
            "cohorts": {c.key: c.state_dict() for c in self.cohorts},
            "heads": None if self.heads is None else self.heads.state_dict(),
            "groups": groups.membership(self.cohorts) if self.grouping.splits else None,  # fixed groups: the config's
            "regrouper": self.regrouper.state_dict(),
            "probes": self._probes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.grouping.splits and "groups" in state:  # the groups formed before the checkpoint
            self.cohorts = [
                self._new_cohort(key, groups.members_of(self.participants, clients))
                for key, clients in sorted(state["groups"].items())
            ]
            self._index_cohorts()
            self.regrouper.load_state_dict(state["regrouper"])
        if set(state["cohorts"]) != {c.key for c in self.cohorts}:
            raise ValueError(
                f"the checkpoint's cohorts {sorted(state['cohorts'])} are not this config's "
                f"{[c.key for c in self.cohorts]}: resume with the run's config"
            )
        if (self.heads is None) != (state["heads"] is None):
            raise ValueError(
                "the checkpoint and server.federate_heads disagree on federated heads: resume with the run's config"
            )
        for cohort in self.cohorts:
            cohort.load_state_dict(state["cohorts"][cohort.key])
        self._probes = state.get("probes", {})
        if self.heads is not None:
            self.heads.load_state_dict(state["heads"])

    def participant(self, index: int) -> Participant:
        return self.participants[index]


def _client_of(reply: Reply) -> int | None:
    report = reply.reports[0] if reply.reports else {}
    value = report.get(protocol.CLIENT_ID)
    return None if value is None else int(protocol.as_number(value))
