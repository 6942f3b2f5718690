"""The Flower ClientApp: converts records to plain dicts and calls ``fedmtl.local.client.LocalClient``.

Private parameters (task heads, ...) live in ``context.state`` under ``protocol.PRIVATE_STATE``;
the reply's arrays come only from ``protocol.outgoing_shared`` (inside ``LocalClient``). When a
state directory is known (``--node-config state-dir=...`` on a SuperNode, or the server's in
simulation), the private state is also written there after every round, so a restarted node or
a resumed run continues with it. Injected faults (``faults:``) act here, around the client.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY

from clients.arrays import to_record, to_state
from clients.secure import secure_reply, secure_request, secure_train_mod
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import config_from_run_config
from fedmtl.core import protocol, timeline
from fedmtl.data.participants import Participant
from fedmtl.local.client import LocalClient
from fedmtl.local.faults import InjectedFault, adversarial_clients, attack_generator, attack_update, draw_faults
from fedmtl.local.state_store import ClientStateStore

log = logging.getLogger(__name__)
CLIENT_ERROR_CODE = 1000  # a client-side exception, replied as an error message (Flower's own codes are < 1000)


def replies_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Turn an exception in ``handler`` into an error reply: the worker stays alive and the server
    learns the reason in one line (instead of Flower logging a Ray traceback)."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:  # noqa: BLE001 - every failure becomes the reply's reason
            log.debug("client handler failed", exc_info=True)
            return Message(Error(CLIENT_ERROR_CODE, f"{type(err).__name__}: {err}"), reply_to=msg)

    return wrapped


def _store(context: Context, config: ConfigRecord, participant: int) -> ClientStateStore | None:
    directory = context.node_config.get(protocol.STATE_DIR) or config.get(protocol.STATE_DIR)
    run_key = str(config.get(protocol.RUN_KEY, ""))
    return ClientStateStore(str(directory), participant, run_key) if directory else None


def _private_state(
    context: Context, store: ClientStateStore | None, at_most_round: int
) -> dict[str, torch.Tensor] | None:
    """The node's private state: in its context, else (a resumed run, a restarted SuperNode) this run's
    newest saved state at or before ``at_most_round`` (none in round 1 of a fresh run)."""
    record = context.state.array_records.get(protocol.PRIVATE_STATE)
    if record is not None:
        return to_state(record)
    version = store.newest(at_most_round) if store is not None and at_most_round > 0 else None
    if store is None or version is None:
        return None
    timeline.mark("state_restored", participant=store.directory.name, version=version)
    return store.load(version)


def participant_of(cfg: ExperimentConfig, context: Context) -> Participant:
    """The participant this node plays: the one its partition id names (``clients.participants``)."""
    partition = int(context.node_config[PARTITION_ID_KEY])
    participants = cfg.participants()
    if not 0 <= partition < len(participants):
        raise ValueError(f"node partition {partition} but the federation has {len(participants)} participants")
    return participants[partition]


def run_config_of(cfg: ExperimentConfig | None, context: Context, config: ConfigRecord) -> ExperimentConfig:
    """``cfg`` (simulate.py), else the run config's, with ``clients.count`` as the server sent it when the
    run config leaves it to the federation."""
    count = config.get(protocol.CLIENTS_COUNT)
    clients_count = int(protocol.as_number(count)) if count is not None else None
    return cfg or config_from_run_config(context.run_config, clients_count=clients_count)


def _client(cfg: ExperimentConfig | None, context: Context, config: ConfigRecord) -> LocalClient:
    experiment = run_config_of(cfg, context, config)
    return LocalClient(experiment, participant_of(experiment, context))


def _reports(reports: list[dict[str, float]]) -> RecordDict:
    """One metrics record per client a participant speaks for: ``metrics``, ``metrics.1``, ..."""
    keys = [protocol.METRICS, *(f"{protocol.METRICS}.{i}" for i in range(1, len(reports)))]
    content = RecordDict()
    for key, report in zip(keys, reports):
        content[key] = MetricRecord(dict(report))
    return content


def make_client_app(cfg: ExperimentConfig | None = None) -> ClientApp:
    app = ClientApp()

    @app.train(mods=[secure_train_mod])
    @replies_errors
    def train(msg: Message, context: Context) -> Message:
        secure = secure_request(msg)  # privacy.secure_aggregation: the request in SecAgg+'s layout
        config = secure[0] if secure else msg.content.config_records[protocol.CONFIG]
        server_round = int(protocol.as_number(config[protocol.SERVER_ROUND]))
        node = {"round": server_round, "partition": int(context.node_config.get(PARTITION_ID_KEY, -1))}
        if timeline.enabled():
            timeline.mark("clientapp_handler", process_started=timeline.process_started_at(), **node)
        client = _client(cfg, context, config)
        attempt = int(protocol.as_number(config.get(protocol.ATTEMPT, 0)))
        adversaries = adversarial_clients(client.cfg.faults, client.cfg.seed, client.cfg.clients.member_ids())
        # a pooled participant (client id -1) draws its faults as a client id nobody else has
        who = client.client_id if client.client_id >= 0 else client.cfg.clients.count
        faults = draw_faults(client.cfg.faults, client.cfg.seed, server_round, who, attempt, adversaries)
        if faults.kill_worker:
            os._exit(1)  # simulates an OOM-killed worker process
        if faults.delay_s > 0:  # sleep(0) still yields the core: about a millisecond a call on a loaded machine
            time.sleep(faults.delay_s)
        if faults.error:
            raise InjectedFault(f"client {client.client_id}: injected error in round {server_round}")
        store = _store(context, config, client.participant.index)
        shared = secure[1] if secure else to_state(msg.content.array_records[protocol.ARRAYS])
        timeline.mark("train_start", **node)
        outcome = client.train(shared, _private_state(context, store, server_round - 1), server_round)
        timeline.mark("train_end", **node)
        context.state[protocol.PRIVATE_STATE] = to_record(outcome.private)
        if store is not None:
            store.save(server_round, outcome.private, int(protocol.as_number(config.get(protocol.DURABLE_ROUND, 0))))
        sent, attacked = outcome.shared, {}
        if faults.attack != "none":  # a Byzantine client forges its encoder update (and says so in its metrics)
            generator = attack_generator(client.cfg.seed, server_round, who)
            sent = attack_update(faults.attack, client.cfg.faults.attack_scale, shared, sent, generator)
            attacked = {protocol.ATTACKED: 1.0}
        if faults.nan:
            sent = {k: torch.full_like(v, float("nan")) for k, v in sent.items()}
        if secure:
            metrics = {**outcome.metrics, **attacked}
            return secure_reply(msg, config, shared, sent, [metrics], metrics[protocol.NUM_EXAMPLES])
        reply = RecordDict(
            {protocol.ARRAYS: to_record(sent), protocol.METRICS: MetricRecord({**outcome.metrics, **attacked})}
        )
        timeline.mark("clientapp_reply", **node)
        return Message(reply, reply_to=msg)

    @app.evaluate()
    @replies_errors
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[protocol.CONFIG]
        client = _client(cfg, context, config)
        store = _store(context, config, client.participant.index)
        shared = to_state(msg.content.array_records[protocol.ARRAYS])
        server_round = int(protocol.as_number(config.get(protocol.SERVER_ROUND, 0)))
        reports = client.evaluate(shared, _private_state(context, store, server_round), server_round)
        return Message(_reports(reports), reply_to=msg)

    @app.query()
    @replies_errors
    def query(msg: Message, context: Context) -> Message:
        """Which participant this node plays (the server samples by participant, not by random node id)."""
        config = msg.content.config_records[protocol.CONFIG]
        experiment = run_config_of(cfg, context, config)
        participant = participant_of(experiment, context)
        metrics = MetricRecord({protocol.PARTICIPANT: participant.index, protocol.CLIENT_ID: participant.client_id})
        if protocol.NUM_EXAMPLES in config:  # asked before secure aggregation: the weight bound's input
            metrics[protocol.NUM_EXAMPLES] = LocalClient(experiment, participant).num_train_examples()
        return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)

    return app


app = make_client_app()
