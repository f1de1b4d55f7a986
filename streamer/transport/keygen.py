"""Generate CURVE key pairs (`NAME.key`, `NAME.key_secret`) for the nodes of a graph.

    python -m streamer.transport.keygen launch/stage.toml     # every node, into [graph] keys_dir
    python -m streamer.transport.keygen --dir keys cam0 sync  # named pairs (e.g. a viewer's)

Existing pairs are kept unless --force. Every public key in the folder is authorised by every
node of a graph using it, so copy only the `.key` (public) files of clients you trust into it,
and each host needs the `.key_secret` files of its own nodes only.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from streamer.transport.curve import generate_keypair_files

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.transport.keygen", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="a graph file (TOML), or node names with --dir")
    parser.add_argument("--dir", help="key folder (default: the graph's [graph] keys_dir)")
    parser.add_argument("--force", action="store_true", help="overwrite existing key pairs")
    args = parser.parse_args(argv)
    if args.dir is None:
        if len(args.targets) != 1 or not args.targets[0].endswith(".toml"):
            parser.error("give one GRAPH.toml, or --dir DIR NAME [NAME ...]")
        graph = Path(args.targets[0])
        try:
            data = tomllib.loads(graph.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            print(f"{graph}: cannot read the graph ({exc})", file=sys.stderr)
            return 2
        keys_dir = data.get("graph", {}).get("keys_dir")
        if not isinstance(keys_dir, str):
            print(f"{graph}: [graph] keys_dir is not set; set it or pass --dir", file=sys.stderr)
            return 2
        keys = graph.parent / keys_dir
        names = list(data.get("nodes", {}))
    else:
        keys, names = Path(args.dir), args.targets
    for name in names:
        if (keys / f"{name}.key_secret").exists() and not args.force:
            print(f"{name}: kept {keys / (name + '.key_secret')}")
            continue
        public, secret = generate_keypair_files(keys, name)
        print(f"{name}: wrote {public} {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
