#!/usr/bin/env python3
"""Instructions per request of each proxy of a pair, under callgrind: the trellis mTLS pair (a
local trellis-control, client and server proxy, every default on, as in `bench.py --set floor`)
against the floor pair, behind the same backend.

    bench/floor_profile.py --bin-dir DIR [--requests 5000] [--conns 1]
                           [--h2-upgrade-policy DO_NOT_UPGRADE]

DIR holds trellis-proxy, trellis-control and bench-floor. Every proxy runs under callgrind;
after a warm-up the counters are zeroed, N keep-alive requests are sent (`bench-floor
http-load`), and each proxy's counters are dumped. Prints user-space instructions per request
per proxy, and writes each dump's top functions (callgrind_annotate, inclusive) next to it, in
bench/out/floor-profile-<time>/. Instructions, not time: repeatable on a busy machine.
--h2-upgrade-policy adds a DestinationRule for the pair's Service with that
`connectionPool.http.h2UpgradePolicy` (DO_NOT_UPGRADE: HTTP/1.1 between the proxies, over mTLS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import callgrind
import floor_set
import smoke

BENCH_DIR = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--h2-upgrade-policy", choices=["DEFAULT", "UPGRADE", "DO_NOT_UPGRADE"])
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    out = BENCH_DIR / "out" / f"floor-profile-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    procs = smoke.Procs(out)
    vg = callgrind.valgrind(out)
    try:
        backend = smoke.start_backend(procs, bins)
        # The control plane, natively (it is not on the request path).
        cfg = out / "config"
        cfg.mkdir()
        (cfg / "mesh.yaml").write_text(floor_set.CONFIG)
        if args.h2_upgrade_policy:
            (cfg / "policy.yaml").write_text(floor_set.h2_upgrade_rule(args.h2_upgrade_policy))
        ready = out / "control.json"
        ctl = procs.start("trellis-control", [
            str(bins / "trellis-control"), "--config-dir", str(cfg), "--discovery",
            "127.0.0.1:0", "--http", "127.0.0.1:0", "--ready-file", str(ready), "--log-level",
            "warn", "--registration-grace", "0s"])
        deadline = time.monotonic() + 15
        while not (ready.exists() and ready.stat().st_size) and time.monotonic() < deadline:
            procs.check("trellis-control", ctl)
            time.sleep(0.1)
        discovery = json.loads(ready.read_text())["discovery"]
        common = ["--control", f"http://{discovery}", "--namespace", "default",
                  "--admin", "127.0.0.1:0", "--threads", "1", "--log-level", "warn"]
        mesh_port = smoke.free_port()
        server = procs.start("mesh-server", [
            *vg, str(bins / "trellis-proxy"), *common, "--workload", "mtls-server",
            "--service-account", "mtls", "--label", "app=mtls", "--inbound", "127.0.0.1:0",
            "--app", f"127.0.0.1:{backend}", "--app-port", "80", "--outbound", "none"])
        client = procs.start("mesh-client", [
            *vg, str(bins / "trellis-proxy"), *common, "--workload", "mtls-client",
            "--service-account", "bench-client", "--label", "app=bench-client",
            "--inbound", "127.0.0.1:0", "--outbound", "none",
            "--outbound-port", f"127.0.0.1:{mesh_port}=mtls.default:80"])
        fs_port, fc_port = smoke.free_port(), smoke.free_port()
        fserver = procs.start("floor-server", [
            *vg, str(bins / "bench-floor"), "forward", "--listen", f"127.0.0.1:{fs_port}",
            "--upstream", f"127.0.0.1:{backend}"])
        fclient = procs.start("floor-client", [
            *vg, str(bins / "bench-floor"), "forward", "--listen", f"127.0.0.1:{fc_port}",
            "--upstream", f"127.0.0.1:{fs_port}"])
        pairs = {"mesh-mtls": (mesh_port, [("mesh-client", client), ("mesh-server", server)]),
                 "floor-2": (fc_port, [("floor-client", fclient), ("floor-server", fserver)])}
        for name, (port, members) in pairs.items():
            smoke.wait_answering(bins, port, lambda: [procs.check(n, p) for n, p in members], 90)
            smoke.http_load(bins, port, 1000, args.conns)
        for name, (port, members) in pairs.items():
            counted = callgrind.measure(out, [p.pid for _, p in members],
                                        lambda: smoke.http_load(bins, port, args.requests,
                                                                args.conns))
            for label, p in members:
                dump, total = counted[p.pid]
                top = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dump)],
                                     capture_output=True, text=True).stdout
                (out / f"top-{label}.txt").write_text(top)
                print(f"{name:10} {label:13} {total / args.requests:10,.0f} instructions/request "
                      f"(top functions: {out / f'top-{label}.txt'})", flush=True)
    except smoke.SetupError as exc:
        print(f"floor_profile: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
