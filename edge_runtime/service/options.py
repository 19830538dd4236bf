"""Channel options shared by the server and the client: message size limits and keepalive.

Message sizes are explicit, not gRPC's defaults (4 MiB receive, unlimited send): a request carries at
most a long conversation (Nemotron's 128k-token context is well under 2 MiB of text) and a response
event at most a few tokens, so 16 MiB each way bounds what one peer can make the other buffer while
leaving ample room. Larger messages are refused by gRPC with RESOURCE_EXHAUSTED.

Keepalive, and why it matters here: a Chat call can be silent for a long time — waiting in the queue
for a slot, or prefilling a long prompt — and the link to a robot can die without a FIN (Wi-Fi loss).
Clients ping every CLIENT_KEEPALIVE_MS while connected, calls or not, and keep pinging through a stream
that sends no data. gRPC servers by default answer a client that pings more often than every 5 minutes
without data with GOAWAY ("too_many_pings"), which would kill exactly those long silent streams; the
server therefore accepts pings every SERVER_MIN_PING_INTERVAL_MS without data, never counts strikes,
and pings idle connections itself to drop dead peers (whose cancelled calls then free their slots).
"""

from __future__ import annotations

from edge_runtime.engine.limits import MAX_MESSAGE_BYTES

CLIENT_KEEPALIVE_MS = 30_000
SERVER_KEEPALIVE_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
# Must stay below CLIENT_KEEPALIVE_MS, or well-behaved clients collect strikes.
SERVER_MIN_PING_INTERVAL_MS = 10_000

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # The server's own pings: find connections whose peer vanished.
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Accept client pings with no call in flight, and as often as every 10 s while no data flows.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
    # 0: never send GOAWAY for "too many pings".
    ("grpc.http2.max_ping_strikes", 0),
    # 0: the server may keep pinging a connection that sends no data (a silent stream).
    ("grpc.http2.max_pings_without_data", 0),
    # Two servers must not share a TCP port silently; the second one fails to bind instead.
    ("grpc.so_reuseport", 0),
]

CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
