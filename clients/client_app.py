"""The Flower ClientApp: converts records to plain dicts and calls ``fedmtl.client.LocalClient``.

Private parameters (task heads) live in ``context.state`` under ``protocol.PRIVATE_STATE``;
the reply's arrays come only from ``protocol.outgoing_shared`` (inside ``LocalClient``).
"""

from __future__ import annotations

import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict needs torch imported in the worker)
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmtl import protocol
from fedmtl.app_config import config_from_run_config
from fedmtl.client import LocalClient
from fedmtl.config import ExperimentConfig


def _private_state(context: Context) -> dict[str, torch.Tensor] | None:
    record = context.state.array_records.get(protocol.PRIVATE_STATE)
    return None if record is None else dict(record.to_torch_state_dict())


def _client(cfg: ExperimentConfig | None, context: Context) -> LocalClient:
    config = cfg or config_from_run_config(context.run_config)
    return LocalClient(config, int(context.node_config["partition-id"]))


def make_client_app(cfg: ExperimentConfig | None = None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = _client(cfg, context)
        shared = dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
        server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        outcome = client.train(shared, _private_state(context), server_round)
        context.state[protocol.PRIVATE_STATE] = ArrayRecord(outcome.private)
        reply = RecordDict({protocol.ARRAYS: ArrayRecord(outcome.shared), protocol.METRICS: MetricRecord(outcome.metrics)})
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client = _client(cfg, context)
        shared = dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
        metrics = client.evaluate(shared, _private_state(context))
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
