"""ZeroMQ transport of the stage, one socket pattern per module.

- `pubsub`: PUB/SUB data plane with counted drops and rejects, last-value state for late joiners.
- `liveness`: one-way heartbeats and peer liveness (Paranoid-Pirate style, monotonic clock).
- `curve`: CURVE authentication and encryption from key files.

Default bind is loopback; endpoints are `tcp://HOST:PORT` or `ipc://PATH`.
"""
from streamer.transport.curve import CurveKeypair, generate_keypair_files, load_keypair, load_public_key
from streamer.transport.liveness import HEARTBEAT_INTERVAL_S, LIVENESS_INTERVALS, Liveness
from streamer.transport.pubsub import DEFAULT_HWM, Publisher, Subscriber

__all__ = [
    "DEFAULT_HWM",
    "HEARTBEAT_INTERVAL_S",
    "LIVENESS_INTERVALS",
    "CurveKeypair",
    "Liveness",
    "Publisher",
    "Subscriber",
    "generate_keypair_files",
    "load_keypair",
    "load_public_key",
]
