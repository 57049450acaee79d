#!/usr/bin/env python3
"""Telemetry overhead, deterministic A/B: user-space instructions per request of one
trellis-proxy hop with `--metrics-labels full` against the same binary with `minimal`, counted by
callgrind. Instruction counts barely move when other processes compete for the cores, so this
is the A/B to trust on a busy machine; bench/telemetry_ab.py gives the CPU-time A/B.

    python3 bench/telemetry_ab_callgrind.py [--bin-dir DIR] [--rounds N] [--requests N]
                                            [--conns C] [--trellis-arg=--flag ...]

DIR holds `trellis-proxy` and `bench-floor` (default target/smoke/release, which
`bench/smoke.sh` builds; a fat-LTO `target/release` works too if it has bench-floor). Both
proxies run as smoke.py's "trellis, 1 hop" (an explicit outbound port, --threads 1) in front of
`bench-floor backend` (1 KiB answers), both under `valgrind --tool=callgrind`; each round zeroes
the counters, sends N keep-alive `GET /` with `bench-floor http-load` and dumps, alternating
which mode goes first. Prints each round and the medians; `--json FILE` writes them.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind  # noqa: E402  (the measured window and its dumps)
import smoke  # noqa: E402  (the same process handling and load)

MODES = ("full", "minimal")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=str(smoke.REPO / "target" / "smoke" / "release"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--trellis-arg", action="append", default=[], metavar="ARG")
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--out", help="scratch directory (default bench/out/telemetry-ab-<time>)")
    args = ap.parse_args()

    bin_dir = Path(args.bin_dir).resolve()
    out = Path(args.out) if args.out else smoke.BENCH_DIR / "out" / "telemetry-ab-callgrind"
    out.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    procs = smoke.Procs(out)
    per_req: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        backend = smoke.start_backend(procs, bin_dir)
        started = {}
        for mode in MODES:
            port = smoke.free_port()
            argv = [*callgrind.valgrind(out),
                    *smoke.proxy_argv("trellis", bin_dir, port, backend,
                                      [f"--metrics-labels={mode}", *args.trellis_arg])]
            started[mode] = (port, procs.start(f"trellis-{mode}", argv))
        for mode, (port, proc) in started.items():
            smoke.wait_answering(bin_dir, port, lambda: procs.check(f"trellis-{mode}", proc), 60)
            smoke.http_load(bin_dir, port, args.warmup, args.conns)
        for rnd in range(args.rounds):
            order = MODES if rnd % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                port, proc = started[mode]
                counted = callgrind.measure(out, [proc.pid], lambda: smoke.http_load(
                    bin_dir, port, args.requests, args.conns))
                _, total = counted[proc.pid]
                per_req[mode].append(total / args.requests)
                print(f"  round {rnd + 1} {mode:8} {total / args.requests:10,.0f} "
                      f"instructions/request", flush=True)
    except smoke.SetupError as exc:
        print(f"telemetry_ab_callgrind: setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    full, minimal = (statistics.median(per_req[m]) for m in MODES)
    print(f"median instructions/request: full {full:,.0f}, minimal {minimal:,.0f}, "
          f"overhead {100 * (full / minimal - 1):+.1f}% ({full - minimal:+,.0f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"full": round(full), "minimal": round(minimal),
                                               "rounds": per_req}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
