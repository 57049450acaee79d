#!/usr/bin/env python3
"""The mTLS pair with and without the HTTP/2 upgrade between the proxies, against the floor pair.

    bench/h2_upgrade_ab.py [--bin-dir target/release] [--rounds 3] [--seconds 8]

Starts the floor set's pieces (bench/floor_set.py): the nginx backend (1 KiB), a local
trellis-control, and three pairs in front of the backend: the floor pair (`bench-floor
forward` twice), the trellis mTLS pair as `bench.py --set floor` runs it (Service `mtls`, every
default on, so HTTP/1.1 from the load rides one HTTP/2 connection between the proxies), and a
second trellis mTLS pair for Service `mtls-h1`, whose DestinationRule says
`connectionPool.http.h2UpgradePolicy: DO_NOT_UPGRADE` (HTTP/1.1 between the proxies over pooled
mTLS connections). Each round runs, pair by pair in rotating order, the floor set's HTTP/1.1
scenarios: open loop 1,000 rps on 1 connection, open loop 5,000 rps on 16 connections, closed
loop on 16 connections. Prints per pair the median over rounds of p50 and p90 added per hop
((pair - direct) / 2, direct measured in the same round), CPU microseconds per request per
proxy, peak RSS and maximum rps, and each trellis pair's ratios to the floor pair's (the
targets of issue 14). Writes the raw runs to bench/out/h2-upgrade-ab-<time>/runs.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import bench as b
import floor_set

SERVICE_H1 = """\
---
apiVersion: v1
kind: Service
metadata: {name: mtls-h1, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: mtls-h1}
---
""" + floor_set.h2_upgrade_rule("DO_NOT_UPGRADE", "mtls-h1")

SCENARIOS = [s for s in b.SCENARIOS if s["name"] in ("open-1k", "open-5k", "max")]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=str(b.REPO / "target" / "release"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    tools = {
        "oha": b.find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
        "wrk": b.find_tool("wrk", []),
        "nginx": b.find_tool("nginx", ["/usr/sbin/nginx"]),
    }
    missing = [k for k, v in tools.items() if not v]
    if missing:
        print(f"h2_upgrade_ab: missing {', '.join(missing)} (bench/run.sh installs them)",
              file=sys.stderr)
        return 2
    out = b.BENCH_DIR / "out" / f"h2-upgrade-ab-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    procs = b.Processes(out)
    runs = []
    try:
        backend_url, _ = b.start_backend(procs, tools, out)
        backend = backend_url.removeprefix("http://").rstrip("/")
        control = floor_set.start_control(procs, str(bins / "trellis-control"), out,
                                          extra=SERVICE_H1)
        fb = str(bins / "bench-floor")
        spid, saddr = floor_set.start_floor(procs, fb, out, "floor-server", backend)
        cpid, caddr = floor_set.start_floor(procs, fb, out, "floor-client", saddr)
        paths = [b.BenchPath("direct", 0, backend_url, []),
                 b.BenchPath("floor-2", 2, f"http://{caddr}/",
                             [("client", cpid), ("server", spid)])]
        for name, svc in (("mesh-h2", "mtls"), ("mesh-h1", "mtls-h1")):
            client, server, addr = floor_set.mesh_pair(
                procs, str(bins / "trellis-proxy"), control, out, svc, backend)
            paths.append(b.BenchPath(name, 2, f"http://{addr}/",
                                     [("client", int(client["pid"])),
                                      ("server", int(server["pid"]))],
                                     {"client": client["admin"], "server": server["admin"]}))
        for p in paths:
            b.wait_until(lambda p=p: b.http_get(p.url)[0] == 200, 30, f"{p.name} answering")
            b.run_oha(tools, p.url, 500, 1, 2)  # warm-up: connections, pools, code pages
        for r in range(args.rounds):
            for scenario in SCENARIOS:
                order = paths[r % len(paths):] + paths[:r % len(paths)]
                for p in order:
                    procs.check_alive()
                    res = b.measure(tools, p, scenario, args.seconds, [])
                    runs.append({"round": r, "scenario": scenario["name"], "path": p.name,
                                 **res})
                    print(f"round {r} {scenario['name']:8} {p.name:8} "
                          f"p50 {res.get('p50_ms')} ms, rps {res['rps']:.0f}, cpu "
                          f"{ {k: round(v, 1) for k, v in res['cpu_us_per_req'].items()} }",
                          flush=True)
        for p in paths[2:]:
            hs = b.metric_sum(p.admins["server"], "trellis_tls_handshakes_total",
                              direction="inbound")
            print(f"{p.name}: server proxy's inbound mTLS handshakes {hs:.0f}")
    finally:
        procs.stop_all()
        (out / "runs.json").write_text(json.dumps(runs, indent=1))
    report(runs)
    print(f"raw runs: {out / 'runs.json'}")
    return 0


def report(runs: list[dict]) -> None:
    def pick(scenario, path):
        return [r for r in runs if r["scenario"] == scenario and r["path"] == path]

    def added(scenario, path, key):
        """Median over rounds of (pair - direct) / 2 for latency key, in µs."""
        vals = []
        for r in pick(scenario, path):
            d = [x for x in pick(scenario, "direct") if x["round"] == r["round"]]
            if d and r.get(key) is not None and d[0].get(key) is not None:
                vals.append((r[key] - d[0][key]) * 1e3 / 2)
        return median(vals)

    rows = []
    for path in ("floor-2", "mesh-h2", "mesh-h1"):
        row = {"path": path}
        for sc in ("open-1k", "open-5k"):
            row[f"{sc} p50"] = added(sc, path, "p50_ms")
            row[f"{sc} p90"] = added(sc, path, "p90_ms")
            for side in ("client", "server"):
                row[f"{sc} cpu {side}"] = median(
                    [x["cpu_us_per_req"].get(side) for x in pick(sc, path)])
            row[f"{sc} rss"] = median([max(x["peak_rss_kib"].values()) / 1024
                                       for x in pick(sc, path)])
        row["max rps"] = median([x["rps"] for x in pick("max", path)])
        rows.append(row)
    floor = rows[0]
    print("\nmedians over rounds (added per hop in µs, CPU µs per request, peak RSS MiB):")
    for row in rows:
        cells = []
        for k, v in row.items():
            if k == "path":
                continue
            ratio = ""
            if row is not floor and v is not None and floor.get(k) and "rss" not in k:
                ratio = f" ({v / floor[k]:.2f}x)"
            cells.append(f"{k} {v:,.1f}{ratio}" if v is not None else f"{k} -")
        print(f"{row['path']:8} " + "; ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
