"""`streamer bench NAME`: dispatch to one benchmark module in tools/ (each prints a table, or JSON with --json)."""
from __future__ import annotations

import importlib
import sys

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS: dict[str, tuple[str, str]] = {
    "codec": ("tools.bench_codec", "encode/decode time of kp2d and pose messages"),
    "transport": ("tools.bench_transport", "loopback PUB->SUB latency for 1, 4 and 16 publishers"),
    "triangulation": ("tools.bench_triangulation", "robust triangulation vs aniposelib at 4, 8, 16 views"),
    "body": ("tools.bench_body", "body-model keypoints forward+backward, synthetic generation speed"),
    "fit": ("tools.bench_fit", "warm-started fit latency and accuracy vs a cold Adam fit"),
    "fitter": ("tools.bench_fitter", "fitter node CPU per pose on a recorded take (streamer bench fitter TAKE)"),
    "fitter_start": ("tools.bench_fitter_start", "fitter node start-up phases and time to first pose"),
    "capture": ("tools.bench_capture", "capture node frames per second per camera (video + CPU estimator)"),
    "sync": ("tools.bench_sync", "frame-set assembly + person choice per frame set"),
    "consumers": ("tools.bench_consumers", "recorder write/read rate, VMC frame cost"),
    "e2e": ("tools.bench_e2e", "end-to-end latency capture publish -> pose publish, throughput"),
    "estimator": ("tools.bench_estimator", "SAM-3D Body GPU throughput (stock vs fast paths)"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: streamer bench NAME [--json] [options]\n\nbenchmarks:")
        for name, (_, text) in BENCHMARKS.items():
            print(f"  {name:<14} {text}")
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"streamer bench: unknown benchmark {argv[0]!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
