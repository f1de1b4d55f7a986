"""Node `relay`: republishes what its inputs publish, to bridge hosts or fan in publishers.

Topics in `state_topics` are republished as last-value state, so late joiners of the relay get
them too (one value per topic: per-camera `calib` from several inputs is merged by a sync node,
not here). Heartbeats are not relayed (each hop has its own).
Recovers by itself: inputs reconnect, state is re-sent on reconnection.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from streamer.node import Node, run_node

__all__ = ["Relay", "Settings", "main"]


@dataclass(frozen=True)
class Settings:
    topics: tuple[str, ...] = ("",)  # topic prefixes to relay
    state_topics: tuple[str, ...] = ("calib", "stage")  # exact topics relayed as last-value state
    relay_stats: bool = False  # also relay upstream stats/<node> messages


class Relay(Node):
    Settings = Settings

    def input_topics(self) -> tuple[str, ...]:
        return self.settings.topics

    def on_message(self, topic: str, msg) -> None:
        if topic.startswith("stats/") and not self.settings.relay_stats:
            return
        if topic in self.settings.state_topics:
            self.publish_state(msg)
        else:
            self.publish(msg)
        self.count("relayed")


def main(argv: list[str]) -> int:
    return run_node(Relay, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
