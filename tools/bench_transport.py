"""`streamer bench transport`: loopback PUB->SUB latency for 1, 4 and 16 publishers at 60 Hz.

A publisher process hosts N `Publisher`s (one tcp endpoint each, like N capture nodes), each
sending a one-person kp2d at `rate_hz`, staggered over the period. This process subscribes to
all N with one `Subscriber` and measures, per message, receive-and-decode time minus the
message's `t_send_ns` (both on this host's clock). So a figure includes encode-to-wire,
ZeroMQ tcp loopback, and decode + validation on the receiving side.

`--realtime` runs both processes under SCHED_FIFO (needs root or CAP_SYS_NICE), which shows the
transport's own latency on a machine shared with other busy processes; without it, figures on a
loaded machine are mostly waiting for a core.

Stable `--json` keys: `p50_us_1pub`, `p99_us_1pub`, `p99_us_16pub`, plus `p50_us_4pub`,
`p99_us_4pub`, `p50_us_16pub`, `messages_<N>pub`, `lost_<N>pub`, `rate_hz`, `seconds`, `scheduler`, `cpus`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from streamer.transport import Publisher, Subscriber

__all__ = ["main", "measure"]

TARGET_P99_US = 1000.0
_WARMUP_S = 1.0  # publishers wait this long so every subscription is through


def _publish(n: int, base_port: int, rate_hz: float, seconds: float, ready) -> None:
    from tools.bench_codec import sample_kp2d

    pubs = [Publisher(f"tcp://127.0.0.1:{base_port + i}", name=f"bench{i}") for i in range(n)]
    msgs = []
    for i in range(n):
        m = sample_kp2d()
        m.camera = f"cam{i:02d}"
        msgs.append(m)
    ready.set()
    period_ns = int(1e9 / rate_hz)
    start = time.monotonic_ns() + int(_WARMUP_S * 1e9)
    end = start + int(seconds * 1e9)
    k = 0
    while True:
        for i in range(n):
            due = start + k * period_ns + i * period_ns // n
            if due >= end:
                for p in pubs:
                    p.close(flush_ms=200)
                return
            wait = due - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            msgs[i].seq = msgs[i].frame_index = k
            pubs[i].publish(msgs[i])
        k += 1


def measure(n_publishers: int, *, rate_hz: float = 60.0, seconds: float = 5.0, base_port: int = 6700) -> dict:
    """Latencies (us) of every message received from n publishers sending for `seconds`."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    sub = Subscriber({f"bench{i}": f"tcp://127.0.0.1:{base_port + i}" for i in range(n_publishers)}, ("kp2d/",))
    proc = ctx.Process(target=_publish, args=(n_publishers, base_port, rate_hz, seconds, ready), daemon=True)
    proc.start()
    ready.wait(30)
    latencies = []
    deadline = time.monotonic() + _WARMUP_S + seconds + 5
    while time.monotonic() < deadline:
        got = sub.recv(200)
        if got is None:
            if not proc.is_alive():
                break
            continue
        now = time.time_ns()
        latencies.append((now - got[1].t_send_ns) / 1e3)
    proc.join(10)
    sub.close()
    lat = np.asarray(latencies)
    return {
        "p50_us": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_us": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "max_us": float(lat.max()) if lat.size else float("nan"),
        "messages": int(lat.size),
        "lost": sub.drops,  # gaps in the transport sequence numbers
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamer bench transport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help="sending time per configuration")
    parser.add_argument("--rate-hz", type=float, default=60.0, help="messages per second per publisher")
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base-port", type=int, default=6700)
    parser.add_argument("--realtime", action="store_true", help="run publisher and subscriber under SCHED_FIFO 50")
    parser.add_argument("--cpus", type=int, nargs="+",
                        help="pin publisher and subscriber (and their ZeroMQ threads) to these CPUs, as a graph's "
                             "`cpus` does: wake-ups stay on one core instead of crossing cores")
    args = parser.parse_args(argv)
    if args.cpus:
        try:
            os.sched_setaffinity(0, args.cpus)  # inherited by the publisher process
        except OSError as exc:
            print(f"streamer bench transport: cannot pin to cpus {args.cpus}: {exc}", file=sys.stderr)
            return 2
    scheduler = "other"
    if args.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))  # inherited by the publisher process
            scheduler = "fifo"
        except (PermissionError, AttributeError, OSError) as exc:
            print(f"streamer bench transport: --realtime not permitted here ({exc})", file=sys.stderr)
            return 2
    out: dict = {"rate_hz": args.rate_hz, "seconds": args.seconds, "target_p99_us": TARGET_P99_US, "scheduler": scheduler,
                 "cpus": sorted(os.sched_getaffinity(0)) if args.cpus else None}
    rows = []
    for n in args.publishers:
        r = measure(n, rate_hz=args.rate_hz, seconds=args.seconds, base_port=args.base_port)
        rows.append((n, r))
        out[f"p50_us_{n}pub"] = round(r["p50_us"], 1)
        out[f"p99_us_{n}pub"] = round(r["p99_us"], 1)
        out[f"messages_{n}pub"] = r["messages"]
        out[f"lost_{n}pub"] = r["lost"]
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"loopback tcp PUB->SUB, kp2d 1 person, {args.rate_hz:g} Hz per publisher, {args.seconds:g} s, "
          f"scheduler {scheduler}{', cpus ' + str(out['cpus']) if out['cpus'] else ''}; target p99 < {TARGET_P99_US:.0f} us")
    print(f"{'publishers':>10}{'messages':>10}{'lost':>6}{'p50 us':>9}{'p99 us':>9}{'max us':>9}")
    for n, r in rows:
        print(f"{n:>10}{r['messages']:>10}{r['lost']:>6}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['max_us']:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
