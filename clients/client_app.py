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
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import config_from_run_config
from fedmtl.core import protocol
from fedmtl.federation.faults import InjectedFault, adversarial_clients, attack_generator, attack_update, draw_faults
from fedmtl.local.client import LocalClient
from fedmtl.runfiles.checkpoint import ClientStateStore

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


def _store(context: Context, config: ConfigRecord, client_id: int) -> ClientStateStore | None:
    directory = context.node_config.get(protocol.STATE_DIR) or config.get(protocol.STATE_DIR)
    return ClientStateStore(str(directory), client_id) if directory else None


def _private_state(
    context: Context, store: ClientStateStore | None, config: ConfigRecord
) -> dict[str, torch.Tensor] | None:
    record = context.state.array_records.get(protocol.PRIVATE_STATE)
    if record is not None:
        return dict(record.to_torch_state_dict())
    resume_round = int(protocol.as_number(config.get(protocol.RESUME_ROUND, 0)))
    return store.load(resume_round) if store is not None and resume_round > 0 else None


def client_id_of(cfg: ExperimentConfig, context: Context) -> int:
    """The client this node plays: its partition id, mapped through ``clients.members`` when set."""
    partition = int(context.node_config["partition-id"])
    return cfg.clients.participants()[partition]


def run_config_of(cfg: ExperimentConfig | None, context: Context, config: ConfigRecord) -> ExperimentConfig:
    """``cfg`` (simulate.py), else the run config's, with ``clients.count`` as the server sent it when the
    run config leaves it to the federation."""
    count = config.get(protocol.CLIENTS_COUNT)
    clients_count = int(protocol.as_number(count)) if count is not None else None
    return cfg or config_from_run_config(context.run_config, clients_count=clients_count)


def _client(cfg: ExperimentConfig | None, context: Context, config: ConfigRecord) -> LocalClient:
    experiment = run_config_of(cfg, context, config)
    return LocalClient(experiment, client_id_of(experiment, context))


def make_client_app(cfg: ExperimentConfig | None = None) -> ClientApp:
    app = ClientApp()

    @app.train()
    @replies_errors
    def train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[protocol.CONFIG]
        client = _client(cfg, context, config)
        server_round = int(protocol.as_number(config[protocol.SERVER_ROUND]))
        attempt = int(protocol.as_number(config.get(protocol.ATTEMPT, 0)))
        adversaries = adversarial_clients(client.cfg.faults, client.cfg.seed, client.cfg.clients.participants())
        faults = draw_faults(client.cfg.faults, client.cfg.seed, server_round, client.client_id, attempt, adversaries)
        if faults.kill_worker:
            os._exit(1)  # simulates an OOM-killed worker process
        time.sleep(faults.delay_s)
        if faults.error:
            raise InjectedFault(f"client {client.client_id}: injected error in round {server_round}")
        store = _store(context, config, client.client_id)
        shared = dict(msg.content.array_records[protocol.ARRAYS].to_torch_state_dict())
        outcome = client.train(shared, _private_state(context, store, config), server_round)
        context.state[protocol.PRIVATE_STATE] = ArrayRecord(outcome.private)
        if store is not None:
            store.save(server_round, outcome.private, int(protocol.as_number(config.get(protocol.DURABLE_ROUND, 0))))
        sent, attacked = outcome.shared, {}
        if faults.attack != "none":  # a Byzantine client forges its encoder update (and says so in its metrics)
            generator = attack_generator(client.cfg.seed, server_round, client.client_id)
            sent = attack_update(faults.attack, client.cfg.faults.attack_scale, shared, sent, generator)
            attacked = {protocol.ATTACKED: 1.0}
        if faults.nan:
            sent = {k: torch.full_like(v, float("nan")) for k, v in sent.items()}
        reply = RecordDict(
            {protocol.ARRAYS: ArrayRecord(sent), protocol.METRICS: MetricRecord({**outcome.metrics, **attacked})}
        )
        return Message(reply, reply_to=msg)

    @app.evaluate()
    @replies_errors
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[protocol.CONFIG]
        client = _client(cfg, context, config)
        store = _store(context, config, client.client_id)
        shared = dict(msg.content.array_records[protocol.ARRAYS].to_torch_state_dict())
        metrics = client.evaluate(shared, _private_state(context, store, config))
        return Message(RecordDict({protocol.METRICS: MetricRecord(dict(metrics))}), reply_to=msg)

    @app.query()
    @replies_errors
    def query(msg: Message, context: Context) -> Message:
        """Which client this node is (the server samples by client id, not by random node id)."""
        config = msg.content.config_records[protocol.CONFIG]
        client_id = client_id_of(run_config_of(cfg, context, config), context)
        return Message(RecordDict({protocol.METRICS: MetricRecord({protocol.CLIENT_ID: client_id})}), reply_to=msg)

    return app


app = make_client_app()
