"""`streamer recover TAKE.mcap`: make a crashed recording whole again.

Keeps every message of the intact prefix (all closed chunks, CRC-checked), rebuilds the summary,
index and footer, and marks the take `recovered=true` in its metadata. By default the file is
repaired in place and the damaged original is kept beside it as `TAKE.mcap.damaged`.
Exit codes (as `mcap recover`): 0 nothing was lost (file already whole), 3 recovered with loss, 1 nothing recovered.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from streamer.recording import salvage_take

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer recover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("take", type=Path, help="the take file (.mcap) to repair")
    parser.add_argument("-o", "--output", type=Path, help="write the repaired take here instead of in place")
    parser.add_argument("--no-backup", action="store_true", help="in place: do not keep TAKE.damaged")
    args = parser.parse_args(argv)
    src: Path = args.take
    if not src.is_file():
        print(f"streamer recover: {src}: no such file")
        return 1
    out = args.output or src.with_name(src.name + ".recovering")
    report = salvage_take(src, out)
    if report.complete and args.output is None:
        out.unlink()
        print(f"{src}: already complete ({report.messages} messages in {report.chunks} chunks); left untouched")
        return 0
    if args.output is None:
        if not args.no_backup:
            os.replace(src, src.with_name(src.name + ".damaged"))
        os.replace(out, src)
        out = src
    lost = "nothing lost" if report.complete else f"stopped at byte {report.stopped_at_byte} ({report.reason})"
    print(f"{src}: recovered {report.messages} messages in {report.chunks} chunks into {out}; {lost}")
    return report.exit_code
