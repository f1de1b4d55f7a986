"""Test hosts as Linux network namespaces joined by veth pairs (root only).

Each `TestHosts` makes its own namespaces with a per-process unique prefix and removes
them on exit; traffic stays between these namespaces. Used by the multi-host tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

__all__ = ["TestHosts", "netns_available"]


def netns_available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"stp{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class TestHosts:
    """Namespaces `names` on one bridge-less star: host i gets 10.77.<k>.<i+1>/24 on a veth to a hub namespace."""

    __test__ = False  # not a pytest class

    def __init__(self, names: list[str]):
        tag = uuid.uuid4().hex[:6]
        self.hub = f"hub{tag}"
        self.ns = {name: f"{name[:6]}{tag}" for name in names}
        subnet = int(tag[:2], 16) % 200 + 20
        self.address = {name: f"10.77.{subnet}.{i + 1}" for i, name in enumerate(names)}
        self._subnet = subnet

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def __enter__(self) -> "TestHosts":
        self._ip("netns", "add", self.hub)
        self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("link", "add", f"v{ns}", "type", "veth", "peer", "name", f"p{ns}")
            self._ip("link", "set", f"v{ns}", "netns", ns)
            self._ip("link", "set", f"p{ns}", "netns", self.hub)
            self._ip("-n", ns, "link", "set", f"v{ns}", "name", "eth0")
            self._ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", self.hub, "link", "set", f"p{ns}", "master", "br0")
            self._ip("-n", self.hub, "link", "set", f"p{ns}", "up")
        return self

    def __exit__(self, *exc) -> None:
        for ns in [*self.ns.values(), self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def popen(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside host `name`'s namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns[name], *argv], **kwargs)
