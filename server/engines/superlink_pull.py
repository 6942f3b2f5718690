"""Replies pulled from a SuperLink as Flower's ``HttpGrid.pull_messages`` pulls them (flwr 1.41), with the
first retry for a reply's arrays after 0.05 s instead of 1 s.

A SuperNode pushes a reply in two steps: the message, then its objects (the arrays). A pull that lands
between the two finds the message but not yet its objects, and Flower's ``pull_objects`` then retries after
``PULL_INITIAL_BACKOFF`` = 1 s (``flwr/supercore/constant.py``), doubling up to 10 s. fedmtl's ServerApp
pulls every 0.1 s, so a reply was often caught in between: on loopback its first pull of a round took
1.2-1.8 s where the others took 0.1-0.2 s (timeline ``pull_s``, docs/DEPLOYMENT.md). The rest is
Flower's code path unchanged: the same requests, the same confirmation, the same error reply when a
reply's objects never arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from flwr.app import Message, Metadata
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest
from flwr.proto.runtime_pb2 import PullAppMessagesRequest
from flwr.supercore.constant import PULL_BACKOFF_CAP, SYSTEM_MESSAGE_TYPE
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, inflate_object_from_contents, pull_objects

FIRST_RETRY_S = 0.05  # then 0.1, 0.2, ... up to Flower's 10 s cap


def pull_replies(grid: Any, message_ids: Iterable[str]) -> list[Message]:
    """``grid.pull_messages(message_ids)`` for Flower's ``HttpGrid`` (its runtime client, node and run)."""
    client, run_id = grid._runtime_client, grid._run.run_id
    found = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    replies: list[Message] = []
    for proto, tree in zip(found.messages_list, found.message_object_trees, strict=True):
        message_id = proto.metadata.message_id
        try:
            contents = pull_objects(
                [node.object_id for node in iterate_object_tree(tree)],
                make_pull_object_fn_protobuf(pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id),
                initial_backoff=FIRST_RETRY_S,
                backoff_cap=PULL_BACKOFF_CAP,
            )
        except ObjectPullError as err:
            replies.append(unavailable(grid.node.node_id, run_id, proto.metadata.reply_to_message_id, err))
            continue
        client.ConfirmMessageReceived(
            ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id, message_object_id=message_id)
        )
        reply = cast(Message, inflate_object_from_contents(message_id, contents))
        reply.metadata.__dict__["_message_id"] = message_id
        replies.append(reply)
    return replies


def unavailable(node_id: int, run_id: int, reply_to: str, err: ObjectPullError) -> Message:
    """The error reply Flower's ``HttpGrid`` makes when a reply's objects never arrive."""
    metadata = Metadata(
        run_id=run_id, message_id="", src_node_id=node_id, dst_node_id=node_id, message_type=SYSTEM_MESSAGE_TYPE,
        group_id="", ttl=0, reply_to_message_id=reply_to, created_at=now().timestamp(),
    )  # fmt: skip
    reason = f"Reply message objects are unavailable: the sender did not finish uploading them. {err}"
    return make_message(metadata=metadata, error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason))
