"""Redis Streams transport: keys, topology, publisher, the delivery loops, RPC, retention."""

from .batch import BatchConsumer, BatchHandler, Entry, Rejected, Staged, StreamSource
from .connection import (
    ClusterMode,
    HiredisPackingConnection,
    RedisClient,
    as_text,
    connect,
    connect_cluster,
    is_cluster,
    open_client,
)
from .consumer import Delivery, Handler, StreamConsumer
from .deadletter import DeadLetters
from .errors import TRANSIENT, BusError, DeadLetter, NotReplicated, RemoteError, RpcTimeout
from .group import Backoff
from .keys import PARTITIONS, Keys, PartitionSet, check_stream_name, partition_of
from .maintenance import ConsumerNameTaken, claim_consumer_name, hold_consumer_name
from .middleware import Middleware
from .policy import DeliveryPolicy
from .publisher import Publisher
from .retention import drop_finished_reply_streams, fully_consumed, safe_trim_boundary, trim_acknowledged
from .rpc import ErrorReply, RpcClient, send_reply
from .topology import DEFAULT_TOPOLOGY, Topology

__all__ = [
    "DEFAULT_TOPOLOGY",
    "PARTITIONS",
    "TRANSIENT",
    "Backoff",
    "BatchConsumer",
    "BatchHandler",
    "BusError",
    "ClusterMode",
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
    "NotReplicated",
    "PartitionSet",
    "Publisher",
    "RedisClient",
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
    "connect_cluster",
    "drop_finished_reply_streams",
    "fully_consumed",
    "hold_consumer_name",
    "is_cluster",
    "open_client",
    "partition_of",
    "safe_trim_boundary",
    "send_reply",
    "trim_acknowledged",
]
