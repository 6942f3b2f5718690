"""Which node a reply speaks for. A node's own reply names it as its sender; the reply a SuperLink makes
for a node whose heartbeats stopped (``Node Unavailable``) names the SuperLink, so that node is found
through the request the reply answers."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID


class RequestedNodes:
    """The nodes ``requests`` went to, by message id (read once the grid has sent them and set their ids)."""

    def __init__(self, requests: Iterable[Message]) -> None:
        self.requests = list(requests)
        self.by_id: dict[str, int] = {}

    def node_of(self, reply: Message) -> int:
        source = reply.metadata.src_node_id
        if source != SUPERLINK_NODE_ID:
            return source
        if not self.by_id:
            self.by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in self.requests}
        return self.by_id.get(reply.metadata.reply_to_message_id, source)
