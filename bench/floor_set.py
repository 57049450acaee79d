"""`bench.py --set floor`: the Trellis data plane as users run it, against the floor forwarder.

Issue 14's data-plane targets are ratios to a floor measured in the same run: the floor is
`bench-floor forward` (bench/floor), a minimal one-thread hyper forwarder without TLS or
metrics. This set runs, on one machine over loopback, behind the same backends:

- direct: the load generator straight to the backend;
- floor-1 / floor-2: one floor forwarder, and a pair (client floor -> server floor -> backend);
- trellis-1: one trellis-proxy, explicit outbound port, plaintext (the CI smoke run's path);
- mesh-mtls: the pair as users run it, every default feature on: a local trellis-control, a
  client proxy and a server proxy registered with it, mTLS between them (the mesh's automatic
  mTLS), metrics on (default `--metrics-labels full`), the retry budget and P2C peak-EWMA (the
  defaults; no DestinationRule or VirtualService changes them).

Scenarios: HTTP/1.1 open loop at 1,000 rps on 1 connection and 5,000 rps on 16 (oha, latency
corrected), closed loop on 16 connections (wrk, maximum throughput), a new connection per
request (oha --disable-keepalive, 1,000 rps), HTTP/2 (h2load, h2c prior knowledge, closed
loop, 16 connections) and gRPC unary (bench-floor grpc-load, closed loop, 4 connections x 4
streams). HTTP/2 and gRPC run through direct, floor-2 and mesh-mtls only, each with its own
backend (nginx with `listen ... http2`, bench-floor grpc-server) and its own proxies.

Every path runs one thread per proxy (`--threads 1`; the floor's current-thread runtime).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import bench as b
from floor_report import write_floor_docs

# proto -> which scenarios and paths it has.
SCENARIOS = [
    {"name": "open-1k", "proto": "h1", "kind": "open", "rate": 1000, "conns": 1,
     "title": "HTTP/1.1, open loop, 1,000 rps on 1 connection"},
    {"name": "open-5k", "proto": "h1", "kind": "open", "rate": 5000, "conns": 16,
     "title": "HTTP/1.1, open loop, 5,000 rps on 16 connections"},
    {"name": "max", "proto": "h1", "kind": "closed", "rate": None, "conns": 16,
     "title": "HTTP/1.1, closed loop, maximum throughput, 16 connections"},
    {"name": "newconn", "proto": "h1", "kind": "newconn", "rate": 1000, "conns": 16,
     "title": "HTTP/1.1, a new connection per request, open loop, 1,000 rps"},
    {"name": "h2", "proto": "h2", "kind": "h2load", "rate": None, "conns": 16,
     "title": "HTTP/2 (h2c), h2load closed loop, 16 connections x 1 stream"},
    {"name": "grpc", "proto": "grpc", "kind": "grpc", "rate": None, "conns": 4,
     "title": "gRPC unary, closed loop, 4 connections x 4 streams"},
]
H1_PATHS = ["direct", "floor-1", "floor-2", "trellis-1", "mesh-mtls"]
PAIR_PATHS = ["direct", "floor-2", "mesh-mtls"]

# The control plane's config: one Service per protocol, so each client proxy reaches only its
# own server proxy. Nothing else: every traffic default (mTLS, retry budget, peak-EWMA) stays.
CONFIG = """\
# Written by bench/floor_set.py for its local trellis-control.
apiVersion: v1
kind: Service
metadata: {name: mtls, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: mtls}
---
apiVersion: v1
kind: Service
metadata: {name: h2, namespace: default}
spec:
  ports: [{port: 80, name: http2}]
  selector: {app: h2}
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: default}
spec:
  ports: [{port: 80, name: grpc}]
  selector: {app: grpc}
"""


def h2_upgrade_rule(policy: str, service: str = "mtls") -> str:
    """A DestinationRule setting `service`'s `h2UpgradePolicy`."""
    return ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: {service}, namespace: default}}\n"
            f"spec:\n  host: {service}\n  trafficPolicy:\n    connectionPool:\n"
            f"      http: {{h2UpgradePolicy: {policy}}}\n")


class FloorPath(b.BenchPath):
    """A BenchPath with the protocol it carries and, for h2/gRPC, its target host:port."""

    def __init__(self, name, hops, url, proxies, admins=None, proto="h1", target=""):
        super().__init__(name, hops, url, proxies, admins or {})
        self.proto = proto
        self.target = target


def start_floor(procs, floor_bin: str, out: Path, name: str, upstream: str) -> tuple[int, str]:
    """One `bench-floor forward`; returns (pid, listen address)."""
    ready = out / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start(name, [floor_bin, "forward", "--listen", "127.0.0.1:0", "--upstream",
                              upstream, "--ready-file", str(ready)])
    b.wait_until(lambda: proc.poll() is None and ready.exists() and ready.stat().st_size > 0,
                 10, f"{name} ready file")
    info = json.loads(ready.read_text())
    return proc.pid, info["listen"]


def start_grpc_backend(procs, floor_bin: str, out: Path) -> tuple[int, str]:
    ready = out / "grpc-backend.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start("grpc-backend", [floor_bin, "grpc-server", "--listen", "127.0.0.1:0",
                                        "--ready-file", str(ready)])
    b.wait_until(lambda: proc.poll() is None and ready.exists() and ready.stat().st_size > 0,
                 10, "grpc-backend ready file")
    return proc.pid, json.loads(ready.read_text())["listen"]


def start_h2_backend(procs, tools, out: Path) -> tuple[int, str]:
    port = b.free_port()
    (out / "nginx-h2-backend-tmp").mkdir(exist_ok=True)
    conf = b.render(b.BENCH_DIR / "floor-h2-backend.conf.in", out / "nginx-h2-backend.conf", {
        "LISTEN": f"127.0.0.1:{port}", "DIR": str(out), "BODY": "x" * b.BODY_BYTES,
    })
    proc = procs.start("nginx-h2-backend", [tools["nginx"], "-p", str(out), "-e",
                                            str(out / "nginx-h2-backend.error.log"), "-c",
                                            str(conf)])
    addr = f"127.0.0.1:{port}"
    b.wait_until(lambda: h2_ok(addr), 10, "nginx h2c backend")
    return proc.pid, addr


def h2_ok(addr: str) -> bool:
    out = subprocess.run(["h2load", "-n", "1", "-c", "1", f"http://{addr}/"],
                         capture_output=True, text=True, timeout=10)
    return "1 succeeded" in out.stdout


def grpc_ok(floor_bin: str, addr: str) -> bool:
    out = subprocess.run([floor_bin, "grpc-load", "--target", addr, "--conns", "1",
                          "--streams", "1", "--seconds", "0.2"],
                         capture_output=True, text=True, timeout=30)
    # Errors are not a reason to wait: the runs count them (see the failed column).
    return out.returncode == 0 and json.loads(out.stdout)["requests"] > 0


def start_control(procs, binary: str, out: Path, extra: str = "") -> dict:
    """A local trellis-control with the set's Services, and `extra` YAML after them."""
    config_dir = out / "floor-config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "mesh.yaml").write_text(CONFIG + extra)
    ready = out / "trellis-control.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start("trellis-control", [
        binary, "--config-dir", str(config_dir), "--discovery", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warn",
        "--registration-grace", "0s",
    ])
    b.wait_until(lambda: proc.poll() is None and ready.exists() and ready.stat().st_size > 0,
                 15, "trellis-control ready file")
    return json.loads(ready.read_text())


def mesh_pair(procs, binary, control, out, svc: str, app: str) -> tuple[dict, dict, str]:
    """A server proxy (app = `app`, Service `svc`) and a client proxy whose explicit outbound
    port targets that Service; returns (client info, server info, client listen address)."""
    ctl = ["--control", f"http://{control['discovery']}", "--namespace", "default"]
    server = b.start_trellis(procs, binary, out, f"{svc}-server", [
        *ctl, "--workload", f"{svc}-server", "--service-account", svc, "--label", f"app={svc}",
        "--inbound", "127.0.0.1:0", "--app", app, "--app-port", "80", "--outbound", "none",
    ])
    port = b.free_port()
    client = b.start_trellis(procs, binary, out, f"{svc}-client", [
        *ctl, "--workload", f"{svc}-client", "--service-account", "bench-client",
        "--label", "app=bench-client", "--inbound", "127.0.0.1:0", "--outbound", "none",
        "--outbound-port", f"127.0.0.1:{port}={svc}.default:80",
    ])
    return client, server, f"127.0.0.1:{port}"


def start_paths(procs, tools, args, out: Path, backend: str,
                wanted: set[str]) -> tuple[list[FloorPath], dict[str, int]]:
    fb = args.floor_bin
    paths: list[FloorPath] = []
    control = start_control(procs, args.control_bin, out)
    h2_pid, h2_backend = start_h2_backend(procs, tools, out)
    grpc_pid, grpc_backend = start_grpc_backend(procs, fb, out)
    backends = {"h1": backend, "h2": h2_backend, "grpc": grpc_backend}
    for proto in ("h1", "h2", "grpc"):
        up = backends[proto]
        names = H1_PATHS if proto == "h1" else PAIR_PATHS
        names = [n for n in names if n in wanted]
        sfx = "" if proto == "h1" else f"-{proto}"

        def mk(name, hops, addr, proxies, admins=None):
            paths.append(FloorPath(name, hops, f"http://{addr}/", proxies, admins, proto, addr))

        if "direct" in names:
            mk("direct", 0, up, [])
        if "floor-1" in names:
            pid, addr = start_floor(procs, fb, out, f"floor-1{sfx}", up)
            mk("floor-1", 1, addr, [("floor", pid)])
        if "floor-2" in names:
            spid, saddr = start_floor(procs, fb, out, f"floor-server{sfx}", up)
            cpid, caddr = start_floor(procs, fb, out, f"floor-client{sfx}", saddr)
            mk("floor-2", 2, caddr, [("floor-client", cpid), ("floor-server", spid)])
        if "trellis-1" in names:
            port = b.free_port()
            one = b.start_trellis(procs, args.trellis_bin, out, "trellis-1hop", [
                "--outbound-port", f"127.0.0.1:{port}={up}", "--outbound", "none",
                "--inbound", "127.0.0.1:0"])
            mk("trellis-1", 1, f"127.0.0.1:{port}", [("trellis", int(one["pid"]))],
               {"trellis": one["admin"]})
        if "mesh-mtls" in names:
            svc = {"h1": "mtls", "h2": "h2", "grpc": "grpc"}[proto]
            client, server, addr = mesh_pair(procs, args.trellis_bin, control, out, svc, up)
            mk("mesh-mtls", 2, addr,
               [("mesh-client", int(client["pid"])), ("mesh-server", int(server["pid"]))],
               {f"{svc}-client": client["admin"], f"{svc}-server": server["admin"]})
    return paths, {"h2": h2_pid, "grpc": grpc_pid}


# ---------------------------------------------------------------------------------------------
# Load generators beyond bench.py's oha and wrk


def run_oha_newconn(tools, url: str, rate: int, conns: int, seconds: float) -> dict:
    """oha at a fixed rate with a new TCP connection for every request."""
    argv = [tools["oha"], "--no-tui", "--output-format", "json", "--latency-correction",
            "--wait-ongoing-requests-after-deadline", "--disable-keepalive",
            "-z", f"{seconds}s", "-q", str(rate), "-c", str(conns), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    pct = data["latencyPercentiles"]
    codes = {str(k): int(v) for k, v in (data.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("200", 0)
    return {
        "tool": "oha --disable-keepalive", "requests": ok, "non_200": sum(codes.values()) - ok,
        "errors": sum(int(v) for v in (data.get("errorDistribution") or {}).values()),
        "error_kinds": data.get("errorDistribution") or {},
        "rps": ok / data["summary"]["total"] if data["summary"]["total"] else 0.0,
        **{f"{q}_ms": pct[q] * 1e3 if pct.get(q) is not None else None
           for q in ("p50", "p90", "p99")},
    }


def percentile(sorted_us: list[float], q: float) -> float | None:
    if not sorted_us:
        return None
    i = min(len(sorted_us) - 1, max(0, int(len(sorted_us) * q + 0.999999) - 1))
    return sorted_us[i] / 1e3


def run_h2load(target: str, conns: int, seconds: float, out: Path) -> dict:
    """h2load, h2c prior knowledge, closed loop: `conns` connections, one stream each, for
    `seconds`; latency percentiles from its per-request log (h2load prints only mean/sd)."""
    log = out / "h2load.log"
    log.unlink(missing_ok=True)
    argv = ["h2load", "-c", str(conns), "-m", "1", "-t", "1", "-D", str(int(seconds)),
            "--log-file", str(log), f"http://{target}/"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    text = res.stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"h2load failed ({res.returncode}): {text[-1500:]} {res.stderr[-500:]}")
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    ok2xx = int(codes.group(1)) if codes else int(m.group(4))
    not2xx = sum(int(x) for x in codes.groups()[1:]) if codes else 0
    lat = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            lat.append(float(parts[2]))
    lat.sort()
    wall = re.search(r"finished in ([\d.]+)(s|ms)", text)
    secs = float(wall.group(1)) * (1e-3 if wall and wall.group(2) == "ms" else 1) if wall \
        else seconds
    return {
        "tool": "h2load", "requests": ok2xx, "non_200": not2xx,
        "errors": int(m.group(5)) + int(m.group(6)) + int(m.group(7)), "error_kinds": {},
        "rps": ok2xx / secs if secs else 0.0,
        "p50_ms": percentile(lat, 0.5), "p90_ms": percentile(lat, 0.9),
        "p99_ms": percentile(lat, 0.99),
    }


def run_grpc(floor_bin: str, target: str, conns: int, seconds: float) -> dict:
    argv = [floor_bin, "grpc-load", "--target", target, "--conns", str(conns), "--streams", "4",
            "--seconds", str(seconds)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if res.returncode != 0:
        raise RuntimeError(f"grpc-load failed ({res.returncode}): {res.stderr[-1500:]}")
    d = json.loads(res.stdout)
    return {
        "tool": "bench-floor grpc-load", "requests": d["requests"], "non_200": 0,
        "errors": d["errors"], "error_kinds": {}, "rps": d["rps"],
        "p50_ms": d["p50_ms"], "p90_ms": d["p90_ms"], "p99_ms": d["p99_ms"],
    }


def loader(tools, args, sc: dict, p: FloorPath, secs: float, out: Path):
    kind = sc["kind"]
    if kind == "newconn":
        return lambda: run_oha_newconn(tools, p.url, sc["rate"], sc["conns"], secs)
    if kind == "h2load":
        return lambda: run_h2load(p.target, sc["conns"], secs, out)
    if kind == "grpc":
        return lambda: run_grpc(args.floor_bin, p.target, sc["conns"], secs)
    return None  # oha / wrk: bench.measure's own


# ---------------------------------------------------------------------------------------------


def main(args) -> int:
    tools = {
        "oha": b.find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
        "wrk": b.find_tool("wrk", []),
        "haproxy": b.find_tool("haproxy", ["/usr/sbin/haproxy"]),
        "nginx": b.find_tool("nginx", ["/usr/sbin/nginx"]),
        "h2load": b.find_tool("h2load", []),
    }
    missing = [k for k, v in tools.items() if not v]
    for binary in (args.trellis_bin, args.control_bin, args.floor_bin):
        if not os.access(binary, os.X_OK):
            missing.append(binary)
    if missing:
        print(f"missing: {', '.join(missing)} (bench/run.sh --set floor builds and installs "
              "them)", file=sys.stderr)
        return 2
    args.trellis_bin = str(Path(args.trellis_bin).resolve())
    args.control_bin = str(Path(args.control_bin).resolve())
    args.floor_bin = str(Path(args.floor_bin).resolve())
    rounds = args.rounds or (1 if args.quick else 3)
    open_s = args.open_seconds or (3 if args.quick else 8)
    closed_s = args.closed_seconds or (2 if args.quick else 5)
    wanted = set(args.paths.split(",")) if args.paths else set(H1_PATHS)

    out = b.BENCH_DIR / "out" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-floor")
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    results_file = Path(args.results) if args.results else (
        (out / "results.json") if args.quick
        else b.BENCH_DIR / "results" / f"{stamp:%Y-%m-%d}-floor.json")
    docs_dir = Path(args.docs_dir) if args.docs_dir else (
        out if args.quick else b.REPO / "docs")
    quiet = b.wait_quiet(args.wait_quiet) if args.wait_quiet else {}
    if quiet:
        print(f"quiet check: {quiet['verdict']}", flush=True)

    procs = b.Processes(out)
    notes: list[str] = []
    trellis_metrics: dict[str, dict] = {}
    runs = []
    started = time.monotonic()
    try:
        backend_url, backend_pid = b.start_backend(procs, tools, out)
        backend = backend_url.removeprefix("http://").rstrip("/")
        paths, other_backends = start_paths(procs, tools, args, out, backend, wanted)
        backend_pids = {"h1": backend_pid, **other_backends}

        # Every path answers before anything is measured; the meshed pair really is mTLS.
        for p in paths:
            if p.proto == "h1":
                b.wait_until(lambda: b.http_get(p.url) == (200, b"x" * b.BODY_BYTES), 15,
                             f"{p.name} path")
            elif p.proto == "h2":
                b.wait_until(lambda: h2_ok(p.target), 15, f"{p.name} h2 path")
            else:
                b.wait_until(lambda: grpc_ok(args.floor_bin, p.target), 15,
                             f"{p.name} gRPC path")
        mesh_checks = {}
        for p in paths:
            if p.name == "mesh-mtls":
                server = next(a for l, a in p.admins.items() if l.endswith("-server"))
                hs = b.metric_sum(server, "trellis_tls_handshakes_total", direction="inbound")
                if hs <= 0:
                    raise RuntimeError(f"mesh-mtls ({p.proto}): the server proxy made no inbound "
                                       "TLS handshake; the pair is not mTLS")
                mesh_checks[p.proto] = {"inbound_tls_handshakes": hs}
        procs.check_alive()
        for p in paths:  # warm-up, not recorded
            if p.proto == "h1":
                b.run_wrk(tools, p.url, 16, 1)
            elif p.proto == "h2":
                run_h2load(p.target, 4, 1, out)
            else:
                run_grpc(args.floor_bin, p.target, 1, 1)

        scenarios = SCENARIOS
        total = rounds * sum(len([p for p in paths if p.proto == sc["proto"]])
                             for sc in scenarios)
        for rnd in range(1, rounds + 1):
            if rnd > 1 and time.monotonic() - started > args.max_seconds:
                notes.append(f"stopped after {rnd - 1} of {rounds} rounds (--max-seconds "
                             f"{args.max_seconds:.0f})")
                rounds = rnd - 1
                break
            for sc in scenarios:
                ps = [p for p in paths if p.proto == sc["proto"]]
                k = (rnd - 1) % max(len(ps), 1)
                for p in ps[k:] + ps[:k]:
                    secs = open_s if sc["kind"] in ("open", "newconn") else closed_s
                    backend_label = [("backend", backend_pids[p.proto])]
                    res = b.measure(tools, p, sc, secs, backend_label,
                                    load=loader(tools, args, sc, p, secs, out))
                    procs.check_alive()
                    # What the resident memory is at the end of the run: anonymous (heap,
                    # stacks) or file-backed (the binary's pages), to say what limits RSS.
                    res["rss_split_kib"] = {
                        label: {k: b.status_kib(pid, k) for k in ("RssAnon", "RssFile")}
                        for label, pid in p.proxies}
                    end = dt.datetime.now(dt.timezone.utc)
                    res.update({"round": rnd, "scenario": sc["name"], "path": p.name,
                                "proto": p.proto,
                                "end_utc": end.isoformat(timespec="seconds"),
                                "start_utc": (end - dt.timedelta(seconds=res["wall_s"]))
                                .isoformat(timespec="seconds")})
                    runs.append(res)
                    cpu = ", ".join(f"{k}={v:.1f}" for k, v in res["cpu_us_per_req"].items())
                    print(f"[{len(runs)}/{total}] r{rnd} {sc['name']:8} {p.name:10} "
                          f"rps={res['rps']:8.0f} p50={b.fmt(res['p50_ms'], 3)}ms "
                          f"p90={b.fmt(res['p90_ms'], 3)}ms cpu_us/req: {cpu} "
                          f"fail={res['non_200'] + res['errors']}", flush=True)
        for p in paths:
            for label, admin in p.admins.items():
                try:
                    trellis_metrics[label] = b.trellis_counters(admin)
                except OSError as exc:
                    trellis_metrics[label] = {"error": str(exc)}
    finally:
        procs.stop_all()

    machine = b.machine_notes(tools, args.trellis_commit)
    machine["h2load"] = b.first_line(["h2load", "--version"])
    results = {
        "started_utc": stamp.strftime("%Y-%m-%d %H:%M"),
        "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": args.command or " ".join(["python3", "bench/bench.py", *sys.argv[1:]]),
        "results_file": str(results_file.relative_to(b.REPO))
        if results_file.is_relative_to(b.REPO) else str(results_file),
        "set": "floor",
        "config": {"rounds": rounds, "open_seconds": open_s, "closed_seconds": closed_s,
                   "quick": args.quick, "body_bytes": b.BODY_BYTES},
        "machine": machine,
        "binaries": {Path(x).name: dt.datetime.fromtimestamp(Path(x).stat().st_mtime,
                                                              dt.timezone.utc)
                     .strftime("%Y-%m-%d %H:%M:%S UTC")
                     for x in (args.trellis_bin, args.control_bin, args.floor_bin)},
        "quiet": quiet,
        "notes": notes,
        "scenarios": SCENARIOS,
        "paths": [{"name": p.name, "hops": p.hops, "proxies": p.proxies, "proto": p.proto}
                  for p in paths],
        "runs": runs,
        "mesh_checks": mesh_checks,
        "trellis_metrics": trellis_metrics,
    }
    results_file.parent.mkdir(parents=True, exist_ok=True)
    write_floor_docs(results, docs_dir)
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {results_file}")
    return 0
