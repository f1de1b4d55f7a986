"""Pattern: CURVE authentication and encryption ("Ironhouse": server and clients have keypairs,
servers accept only client public keys found in an authorised-keys folder).

Key files are ZeroMQ certificates as written by `zmq.auth.create_certificates`:
`NAME.key` (public) and `NAME.key_secret` (public + secret). Generate one pair per node of a
graph with `python -m streamer.transport.keygen GRAPH.toml` (see that module).

A publisher (binding side) is the CURVE server; a subscriber is a client that must know the
server's public key. A client without the right keys completes no handshake and receives nothing.
CURVE works over tcp:// only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = [
    "CurveKeypair",
    "generate_keypair_files",
    "load_keypair",
    "load_public_key",
    "make_client",
    "make_server",
    "start_authenticator",
]


@dataclass(frozen=True)
class CurveKeypair:
    """A CURVE keypair, both keys 40-byte Z85."""

    public: bytes
    secret: bytes


def generate_keypair_files(keys_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write `NAME.key` and `NAME.key_secret` into keys_dir (created); returns both paths."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(keys_dir), name)
    return Path(public), Path(secret)


def load_keypair(path: str | Path) -> CurveKeypair:
    """Read a `NAME.key_secret` certificate; raises ValueError naming the file when unusable."""
    path = Path(path)
    public, secret = _read_certificate(path, "secret")
    if not secret:
        raise ValueError(f"{path}: holds no secret key (expected NAME.key_secret)")
    return CurveKeypair(public, secret)


def load_public_key(path: str | Path) -> bytes:
    """Read the public key of a `NAME.key` (or `.key_secret`) certificate."""
    public, _ = _read_certificate(Path(path), "public")
    return public


def _read_certificate(path: Path, kind: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a ZeroMQ certificate file; ValueError naming the file when unusable."""
    if not path.is_file():
        raise ValueError(f"{path}: CURVE {kind} key file not found")
    try:
        return zmq.auth.load_certificate(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a ZeroMQ certificate ({exc})") from None


def make_server(sock: zmq.Socket, keypair: CurveKeypair) -> None:
    """Make `sock` a CURVE server; call before bind."""
    sock.curve_secretkey = keypair.secret
    sock.curve_publickey = keypair.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, keypair: CurveKeypair, server_public: bytes) -> None:
    """Make `sock` a CURVE client of the server with `server_public`; call before connect."""
    sock.curve_secretkey = keypair.secret
    sock.curve_publickey = keypair.public
    sock.curve_serverkey = server_public


def start_authenticator(context: zmq.Context, authorized_dir: str | Path) -> ThreadAuthenticator:
    """Start the ZAP handler of this process: CURVE clients must hold a public key found in
    authorized_dir (`*.key` files). Stop it with `.stop()` before the context terminates."""
    authorized_dir = Path(authorized_dir)
    if not authorized_dir.is_dir():
        raise ValueError(f"{authorized_dir}: CURVE authorised-keys folder not found")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized_dir))
    return auth

