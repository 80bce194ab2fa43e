"""Redis Streams transport: keys, topology, publisher, the delivery loops, RPC, retention."""

from .batch import BatchConsumer, BatchHandler, Entry, Rejected, Staged, StreamSource
from .connection import HiredisPackingConnection, as_text, connect
from .consumer import Delivery, Handler, StreamConsumer
from .deadletter import DeadLetters
from .errors import TRANSIENT, BusError, DeadLetter, RemoteError, RpcTimeout
from .group import Backoff
from .keys import Keys, check_stream_name
from .maintenance import ConsumerNameTaken, claim_consumer_name, hold_consumer_name
from .middleware import Middleware
from .policy import DeliveryPolicy
from .publisher import Publisher
from .retention import drop_finished_reply_streams, fully_consumed, safe_trim_boundary, trim_acknowledged
from .rpc import ErrorReply, RpcClient, send_reply
from .topology import DEFAULT_TOPOLOGY, Topology

__all__ = [
    "DEFAULT_TOPOLOGY",
    "TRANSIENT",
    "Backoff",
    "BatchConsumer",
    "BatchHandler",
    "BusError",
    "ConsumerNameTaken",
    "DeadLetter",
    "DeadLetters",
    "Delivery",
    "DeliveryPolicy",
    "Entry",
    "ErrorReply",
    "Handler",
    "HiredisPackingConnection",
    "Keys",
    "Middleware",
    "Publisher",
    "Rejected",
    "RemoteError",
    "RpcClient",
    "RpcTimeout",
    "Staged",
    "StreamConsumer",
    "StreamSource",
    "Topology",
    "as_text",
    "check_stream_name",
    "claim_consumer_name",
    "connect",
    "drop_finished_reply_streams",
    "fully_consumed",
    "hold_consumer_name",
    "safe_trim_boundary",
    "send_reply",
    "trim_acknowledged",
]
