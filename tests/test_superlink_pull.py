"""fedmtl's pull of replies from a SuperLink (``server/engines/superlink_pull.py``) against a fake runtime API:
a reply whose arrays arrive late is retried until they are there and then confirmed, and one whose arrays
never come becomes an error reply that counts against the node the request went to."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_to_proto
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

from server.engines.replies import RequestedNodes
from server.engines.superlink_pull import pull_replies

NODE = 4242


class FakeRuntime:
    """A SuperLink's runtime API holding one reply whose objects become available after ``late`` pulls each
    (or are never found)."""

    def __init__(self, reply: Message, late: int, found: bool = True) -> None:
        self.objects = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(reply).items()}
        self.tree, self.proto = get_object_tree(reply), message_to_proto(remove_content_from_message(reply))
        self.late, self.found = late, found
        self.tries: Counter[str] = Counter()
        self.confirmed: list[str] = []

    def PullMessages(self, request):  # noqa: N802 - Flower's runtime API names
        return SimpleNamespace(messages_list=[self.proto], message_object_trees=[self.tree])

    def PullObject(self, request):  # noqa: N802
        self.tries[request.object_id] += 1
        available = self.tries[request.object_id] > self.late
        content = self.objects[request.object_id] if available else b""
        return SimpleNamespace(object_found=self.found, object_available=available, object_content=content)

    def ConfirmMessageReceived(self, request):  # noqa: N802
        self.confirmed.append(request.message_object_id)


def exchanged(flower_identity) -> tuple[Message, Message]:
    request = Message(RecordDict(), dst_node_id=NODE, message_type="train")
    request.metadata.__dict__["_message_id"] = "request-1"
    reply = Message(RecordDict({"arrays": ArrayRecord([np.arange(6.0).reshape(2, 3)])}), reply_to=request)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return request, reply


def grid_over(runtime: FakeRuntime) -> SimpleNamespace:
    return SimpleNamespace(
        _runtime_client=runtime, _run=SimpleNamespace(run_id=7), node=Node(node_id=SUPERLINK_NODE_ID)
    )


def test_a_reply_whose_arrays_arrive_late_is_retried_then_confirmed(flower_identity):
    request, reply = exchanged(flower_identity)
    runtime = FakeRuntime(reply, late=2)
    [pulled] = pull_replies(grid_over(runtime), [reply.metadata.message_id])
    assert not pulled.has_error() and pulled.metadata.message_id == reply.metadata.message_id
    assert pulled.metadata.reply_to_message_id == "request-1"
    assert np.array_equal(pulled.content.array_records["arrays"].to_numpy_ndarrays()[0], np.arange(6.0).reshape(2, 3))
    assert set(runtime.tries.values()) == {3} and runtime.confirmed == [reply.metadata.message_id]


def test_a_reply_whose_arrays_never_come_is_an_error_for_the_node_asked(flower_identity):
    request, reply = exchanged(flower_identity)
    runtime = FakeRuntime(reply, late=0, found=False)
    [pulled] = pull_replies(grid_over(runtime), [reply.metadata.message_id])
    assert pulled.has_error() and pulled.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert "did not finish uploading" in pulled.error.reason and runtime.confirmed == []
    assert RequestedNodes([request]).node_of(pulled) == NODE
