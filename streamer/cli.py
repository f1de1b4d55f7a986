"""The one `streamer` command: a table of subcommands, each a module with `main(argv) -> int`.

Subcommands are named by module path (strings), so the CLI imports a subcommand's
module only when it runs: `streamer --help` stays fast and `streamer/` keeps no
import-time dependency on `nodes/` or `tools/`.
"""
from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# name -> (module:function, one-line help). Nested names ("bench codec") dispatch on
# the first word; the module receives the remaining argv.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tools.demo:main", "run the embedded synthetic stage end to end and print a summary"),
    "run": ("streamer.launch:main", "start a graph file (all nodes, or one host's share)"),
    "nodes": ("streamer.launch:list_nodes_main", "list node kinds and their settings"),
    "node": ("streamer.launch:node_main", "run a single node (used by the launcher)"),
    "keys": ("streamer.transport.keygen:main", "generate CURVE key pairs for the nodes of a graph"),
    "synth": ("tools.synth:main", "generate a synthetic take with ground truth"),
    "import": ("tools.importers:main", "import real takes (pose2sim, caliscope, legacy npy) as kp2d recordings"),
    "eval": ("tools.evaluate:main", "accuracy checks on real data (charuco, pose2sim)"),
    "replay": ("tools.replay:main", "replay a recorded take (live timing or --offline)"),
    "recover": ("tools.recover:main", "make a crashed recording whole again"),
    "export": ("tools.export:main", "export a take (bvh)"),
    "bench": ("tools.bench:main", "benchmarks: codec, transport, triangulation, body, fit, capture, e2e, estimator"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: streamer COMMAND [ARGS...]",
        "",
        "Open real-time multi-camera body capture.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`streamer COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"streamer: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
