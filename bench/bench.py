#!/usr/bin/env python3
"""Trellis benchmark runner: latency, CPU and memory a proxy hop adds, against HAProxy and nginx.

Starts one backend (nginx, 1 KiB body) and, in front of it, every path under test: direct,
one trellis-proxy, two trellis-proxies (client and server sidecar), one HAProxy and one nginx,
all on 127.0.0.1. Then, for each round, for each load scenario, it runs every path once (the
path order rotates each round so that no path always runs first), and measures:

- latency percentiles from the load generator (oha open-loop with latency correction, or wrk
  closed-loop for maximum throughput);
- CPU time of each proxy process, from utime+stime in /proc/<pid>/stat before and after the run,
  divided by the requests answered;
- peak RSS of each proxy process (VmHWM in /proc/<pid>/status), reset before every run by
  writing 5 to /proc/<pid>/clear_refs so that it is the peak of that run's load.

It writes the raw results to a JSON file, then renders docs/benchmarks.md and
docs/benchmarks.png from that file (``--render-only FILE`` re-renders without measuring).
Standard library only; the plot needs matplotlib and is skipped with a note without it.

This is not part of ``cargo test``: it needs release binaries, haproxy, nginx, oha and wrk, and
minutes of a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from report import fmt, write_docs

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_BYTES = 1024
MIB = 1024 * 1024
# Extra flags for every trellis-proxy (--trellis-arg), e.g. to compare telemetry settings.
TRELLIS_EXTRA_ARGS: list[str] = []

# Open-loop scenarios run oha at a fixed rate; "max" runs wrk closed-loop as fast as it can.
SCENARIOS = [
    {"name": "open-1k", "kind": "open", "rate": 1000, "conns": 1,
     "title": "Open loop, 1,000 rps on 1 connection"},
    {"name": "open-5k", "kind": "open", "rate": 5000, "conns": 16,
     "title": "Open loop, 5,000 rps on 16 connections"},
    {"name": "max", "kind": "closed", "rate": None, "conns": 16,
     "title": "Closed loop, maximum throughput, 16 connections"},
]


@dataclass
class BenchPath:
    """One way from the load generator to the backend."""

    name: str
    hops: int
    url: str = ""
    # Processes whose CPU and RSS are charged to this path: (label, pid).
    proxies: list[tuple[str, int]] = field(default_factory=list)
    # Admin address per trellis proxy label, to read its /metrics after the runs.
    admins: dict[str, str] = field(default_factory=dict)


class Processes:
    """Everything this runner starts, so that all of it is stopped on the way out."""

    def __init__(self, out: Path):
        self.out = out
        self.started: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=self.out,
        )
        self.started.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, _ in self.started:
            if proc.poll() is not None:
                tail = (self.out / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} (pid {proc.pid}) exited with {proc.returncode}:\n{tail}")

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _, proc, log in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
            log.close()
        self.started.clear()


# ---------------------------------------------------------------------------------------------
# Small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: Path, dest: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise RuntimeError(f"{template}: unrendered placeholders {sorted(set(leftover))}")
    dest.write_text(text)
    return dest


def cpu_ticks(pid: int) -> int:
    # Fields after the parenthesised comm; utime and stime are fields 14 and 15 (1-based).
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def sched_ns(pid: int) -> int:
    """On-CPU time of all threads in ns (schedstat), a finer cross-check of cpu_ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended between listing and reading
    return total


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def host_cpu() -> list[int]:
    """The aggregate cpu line of /proc/stat: user nice system idle iowait irq softirq steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def count_procs(name: str) -> int:
    out = subprocess.run(["pgrep", "-c", name], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {last}")


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status, resp.read()


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


# ---------------------------------------------------------------------------------------------
# Setup


def machine_notes(tools: dict[str, str], trellis_commit: str | None) -> dict:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates/proxy",
                            "crates/model", "crates/identity", "crates/config", "crates/api"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "nproc": first_line(["nproc"]),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_kib // 1024,
        "kernel": first_line(["uname", "-r"]),
        "haproxy": first_line([tools["haproxy"], "-v"]),
        "nginx": first_line([tools["nginx"], "-v"]),
        "oha": first_line([tools["oha"], "--version"]),
        "wrk": first_line([tools["wrk"], "-v"]),
        "python": sys.version.split()[0],
        "rustc": first_line(["rustc", "--version"]),
        "trellis_commit": f"{trellis_commit} (built from `git archive`)" if trellis_commit
        else git + (" (work tree, with uncommitted changes in the proxy's crates)" if dirty else ""),
        "clk_tck": CLK_TCK,
    }


def start_backend(procs: Processes, tools, out: Path) -> tuple[str, int]:
    port = free_port()
    (out / "nginx-backend-tmp").mkdir(exist_ok=True)
    conf = render(BENCH_DIR / "nginx-backend.conf.in", out / "nginx-backend.conf", {
        "LISTEN": f"127.0.0.1:{port}", "DIR": str(out), "BODY": "x" * BODY_BYTES,
    })
    proc = procs.start("nginx-backend", [tools["nginx"], "-p", str(out), "-e",
                                         str(out / "nginx-backend.error.log"), "-c", str(conf)])
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: http_get(url)[0] == 200, 10, "backend nginx")
    return url, proc.pid


def start_haproxy(procs, tools, out, backend_port) -> BenchPath:
    port = free_port()
    conf = render(BENCH_DIR / "haproxy.cfg.in", out / "haproxy.cfg", {
        "LISTEN": f"127.0.0.1:{port}", "BACKEND": f"127.0.0.1:{backend_port}", "DIR": str(out),
    })
    proc = procs.start("haproxy", [tools["haproxy"], "-db", "-f", str(conf)])
    return BenchPath("haproxy", 1, f"http://127.0.0.1:{port}/", [("haproxy", proc.pid)])


def start_nginx_proxy(procs, tools, out, backend_port) -> BenchPath:
    port = free_port()
    (out / "nginx-proxy-tmp").mkdir(exist_ok=True)
    conf = render(BENCH_DIR / "nginx-proxy.conf.in", out / "nginx-proxy.conf", {
        "LISTEN": f"127.0.0.1:{port}", "BACKEND": f"127.0.0.1:{backend_port}", "DIR": str(out),
    })
    proc = procs.start("nginx-proxy", [tools["nginx"], "-p", str(out), "-e",
                                       str(out / "nginx-proxy.error.log"), "-c", str(conf)])
    return BenchPath("nginx", 1, f"http://127.0.0.1:{port}/", [("nginx", proc.pid)])


def start_trellis(procs, binary: str, out: Path, name: str, args: list[str]) -> dict:
    """Start one trellis-proxy and wait for its ready file; returns the ready file's JSON."""
    ready = out / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start(name, [binary, *args, "--admin", "127.0.0.1:0", "--threads", "1",
                              "--ready-file", str(ready), *TRELLIS_EXTRA_ARGS])

    def is_ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        return ready.exists() and ready.stat().st_size > 0 and json.loads(ready.read_text())

    try:
        wait_until(is_ready, 15, f"{name} ready file")
    except RuntimeError:
        procs.check_alive()
        raise
    info = json.loads(ready.read_text())
    info.setdefault("pid", proc.pid)
    if int(info["pid"]) != proc.pid:
        raise RuntimeError(f"{name}: ready file pid {info['pid']} is not the child {proc.pid}")
    return info


def trellis_one_hop_args(port: int, backend_port: int) -> list[str]:
    """The "trellis, 1 hop" proxy's flags: an explicit outbound port straight to the backend
    (also bench/critical_path.py's)."""
    return ["--outbound-port", f"127.0.0.1:{port}=127.0.0.1:{backend_port}",
            "--outbound", "none", "--inbound", "127.0.0.1:0"]


def start_trellis_paths(procs, binary, out, backend_port) -> list[BenchPath]:
    p1 = free_port()
    one = start_trellis(procs, binary, out, "trellis-1hop", trellis_one_hop_args(p1, backend_port))
    # Two hops: client sidecar's explicit outbound port -> server sidecar's inbound -> app.
    q = free_port()
    server = start_trellis(procs, binary, out, "trellis-server", [
        "--inbound", f"127.0.0.1:{q}", "--app", f"127.0.0.1:{backend_port}",
        "--outbound", "none",
    ])
    p2 = free_port()
    client = start_trellis(procs, binary, out, "trellis-client", [
        "--outbound-port", f"127.0.0.1:{p2}=127.0.0.1:{q}",
        "--outbound", "none", "--inbound", "127.0.0.1:0",
    ])
    return [
        BenchPath("trellis-1", 1, f"http://127.0.0.1:{p1}/", [("trellis", int(one["pid"]))],
                  {"trellis": one["admin"]}),
        BenchPath("trellis-2", 2, f"http://127.0.0.1:{p2}/",
                  [("trellis-client", int(client["pid"])), ("trellis-server", int(server["pid"]))],
                  {"trellis-client": client["admin"], "trellis-server": server["admin"]}),
    ]


def trellis_counters(admin: str) -> dict[str, float]:
    """Non-zero request and protocol-detection counters from a proxy's /metrics."""
    status, body = http_get(f"http://{admin}/metrics")
    if status != 200:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(("trellis_requests_total", "trellis_protocol_detections_total",
                            "trellis_tls_handshake", "trellis_limit")):
            name, _, value = line.rpartition(" ")
            if float(value):
                out[name] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# The meshed set (--set mesh): a local trellis-control and proxies registered with it

# Only the open-loop scenarios: the question is the per-request cost at a fixed rate.
MESH_SCENARIOS = [sc for sc in SCENARIOS if sc["kind"] == "open"]
MESH_PATHS = ["direct", "mesh-plaintext", "mesh-mtls", "mesh-traffic"]

# One Service per path, so that each path's client reaches only its own server proxies. The
# Service port is 80; every server proxy registers its app (the bench's nginx) as port 80.
MESH_CONFIG = """\
# Written by bench/bench.py --set mesh for its local trellis-control.
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: plain}
---
apiVersion: v1
kind: Service
metadata: {name: mtls, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: mtls}
---
apiVersion: v1
kind: Service
metadata: {name: traffic, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: traffic}
---
# mesh-plaintext: the same meshed pair as mesh-mtls, with the hop kept plaintext.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: default}
spec:
  host: plain
  trafficPolicy:
    tls: {mode: DISABLE}
---
# mesh-traffic: mTLS (the default), two subsets, outlier detection on.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: traffic, namespace: default}
spec:
  host: traffic
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: traffic, namespace: default}
spec:
  hosts: [traffic]
  http:
  - route:
    - {destination: {host: traffic, subset: v1}, weight: 90}
    - {destination: {host: traffic, subset: v2}, weight: 10}
    retries: {attempts: 2, retryOn: 5xx}
"""


def start_control(procs, binary: str, out: Path) -> dict:
    """Start trellis-control on a config dir written here; returns its ready file's JSON."""
    config_dir = out / "mesh-config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "mesh.yaml").write_text(MESH_CONFIG)
    ready = out / "trellis-control.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start("trellis-control", [
        binary, "--config-dir", str(config_dir), "--discovery", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warn",
        # A fresh control plane has no proxies to wait for.
        "--registration-grace", "0s",
    ])

    def is_ready():
        if proc.poll() is not None:
            raise RuntimeError(f"trellis-control exited with {proc.returncode}")
        return ready.exists() and ready.stat().st_size > 0 and json.loads(ready.read_text())

    try:
        wait_until(is_ready, 15, "trellis-control ready file")
    except RuntimeError:
        procs.check_alive()
        raise
    info = json.loads(ready.read_text())
    # Every document must be Accepted: a refused DestinationRule would measure something else.
    status, body = http_get(f"http://{info['http']}/api/v1/config")
    info["config_status"] = json.loads(body) if status == 200 else {"http_status": status}
    return info


def metric_sum(admin: str, name: str, **labels) -> float:
    """Sum of a counter's series on a proxy's /metrics whose labels include `labels`."""
    status, body = http_get(f"http://{admin}/metrics")
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def start_mesh_paths(procs, binary, control_bin, out, backend_port) -> tuple[list[BenchPath], dict]:
    control = start_control(procs, control_bin, out)
    ctl = ["--control", f"http://{control['discovery']}", "--namespace", "default"]

    def server(name, app, sa, extra_labels=()):
        labels = [a for kv in (f"app={app}", *extra_labels) for a in ("--label", kv)]
        return start_trellis(procs, binary, out, name, [
            *ctl, "--workload", name, "--service-account", sa, *labels,
            "--inbound", "127.0.0.1:0", "--app", f"127.0.0.1:{backend_port}", "--app-port", "80",
            "--outbound", "none",
        ])

    def client(name, service):
        port = free_port()
        info = start_trellis(procs, binary, out, name, [
            *ctl, "--workload", name, "--service-account", "bench-client",
            "--label", "app=bench-client", "--inbound", "127.0.0.1:0", "--outbound", "none",
            "--outbound-port", f"127.0.0.1:{port}={service}.default:80",
        ])
        return info, f"http://127.0.0.1:{port}/"

    paths = []
    # mesh-plaintext and mesh-mtls: the same pair, one DestinationRule apart.
    for pname, svc in (("mesh-plaintext", "plain"), ("mesh-mtls", "mtls")):
        s = server(f"{svc}-server", svc, svc)
        c, url = client(f"{svc}-client", svc)
        paths.append(BenchPath(pname, 2, url,
                               [(f"{svc}-client", int(c["pid"])), (f"{svc}-server", int(s["pid"]))],
                               {f"{svc}-client": c["admin"], f"{svc}-server": s["admin"]}))
    v1 = server("traffic-v1", "traffic", "traffic", ["version=v1"])
    v2 = server("traffic-v2", "traffic", "traffic", ["version=v2"])
    c, url = client("traffic-client", "traffic")
    paths.append(BenchPath("mesh-traffic", 2, url,
                           [("traffic-client", int(c["pid"])), ("traffic-v1", int(v1["pid"])),
                            ("traffic-v2", int(v2["pid"]))],
                           {"traffic-client": c["admin"], "traffic-v1": v1["admin"],
                            "traffic-v2": v2["admin"]}))
    return paths, control


def check_mesh_paths(paths: list[BenchPath]) -> dict:
    """Before measuring: each path answers through its proxies as configured, i.e. mTLS where
    claimed (inbound handshakes on the server proxies), none on mesh-plaintext, and both subsets
    of mesh-traffic reached. Bounded: 30 s for all paths."""
    checks = {}
    deadline = time.monotonic() + 30
    for p in paths:
        servers = {l: a for l, a in p.admins.items() if not l.endswith("-client")}

        def handshakes():
            return {l: metric_sum(a, "trellis_tls_handshakes_total", direction="inbound")
                    for l, a in servers.items()}

        def served():
            return {l: metric_sum(a, "trellis_requests_total", direction="inbound")
                    for l, a in servers.items()}

        def ok():
            if http_get(p.url) != (200, b"x" * BODY_BYTES):
                return False
            hs, sv = handshakes(), served()
            if p.name == "mesh-plaintext":
                return all(v > 0 for v in sv.values())
            return all(v > 0 for v in sv.values()) and all(v > 0 for v in hs.values())

        wait_until(ok, max(1.0, deadline - time.monotonic()),
                   f"{p.name}: 200 through every server proxy"
                   + ("" if p.name == "mesh-plaintext" else " with mTLS handshakes"))
        hs = handshakes()
        if p.name == "mesh-plaintext" and any(hs.values()):
            raise RuntimeError(f"mesh-plaintext: server proxy made TLS handshakes {hs}; "
                               "the DestinationRule tls.mode DISABLE is not in force")
        checks[p.name] = {"inbound_tls_handshakes": hs, "inbound_requests": served()}
        print(f"check {p.name}: inbound TLS handshakes {hs}, requests {served()}", flush=True)
    return checks


# ---------------------------------------------------------------------------------------------
# Load generators

UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def run_oha(tools, url: str, rate: int, conns: int, seconds: float) -> dict:
    argv = [tools["oha"], "--no-tui", "--output-format", "json", "--latency-correction",
            "--wait-ongoing-requests-after-deadline",
            "-z", f"{seconds}s", "-q", str(rate), "-c", str(conns), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    pct = data["latencyPercentiles"]
    codes = {str(k): int(v) for k, v in (data.get("statusCodeDistribution") or {}).items()}
    errors = sum(int(v) for v in (data.get("errorDistribution") or {}).values())
    ok = codes.get("200", 0)
    return {
        "tool": "oha",
        "requests": ok,
        "non_200": sum(codes.values()) - ok,
        "errors": errors,
        "error_kinds": data.get("errorDistribution") or {},
        "rps": ok / data["summary"]["total"] if data["summary"]["total"] else 0.0,
        "p50_ms": pct["p50"] * 1e3 if pct.get("p50") is not None else None,
        "p90_ms": pct["p90"] * 1e3 if pct.get("p90") is not None else None,
        "p99_ms": pct["p99"] * 1e3 if pct.get("p99") is not None else None,
    }


def run_wrk(tools, url: str, conns: int, seconds: float) -> dict:
    # One wrk thread: on a 2-core machine a second thread only takes CPU from the servers.
    argv = [tools["wrk"], "-t1", f"-c{conns}", f"-d{int(seconds)}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-2000:]}")
    text = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    total = int(m.group(1))
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", text).group(1)) \
        if "Non-2xx" in text else 0
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors = sum(int(x) for x in se.groups())
    pct = {}
    for p, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        pct[p] = float(val) * UNIT_S[unit] * 1e3
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return {
        "tool": "wrk",
        "requests": total - non2xx,
        "non_200": non2xx,
        "errors": errors,
        "error_kinds": {},
        "rps": rps,
        "p50_ms": pct.get("50"),
        "p90_ms": pct.get("90"),
        "p99_ms": pct.get("99"),
    }


def measure(tools, path: BenchPath, scenario: dict, seconds: float, extra_pids,
            load=None) -> dict:
    """One run. `load`, when given, is the load generator to call (no arguments; returns the
    same keys as run_oha), for scenarios that are neither oha nor wrk (bench/floor_set.py)."""
    pids = list(path.proxies) + list(extra_pids)
    for _, pid in pids:
        reset_peak_rss(pid)
    before = {label: cpu_ticks(pid) for label, pid in pids}
    before_ns = {label: sched_ns(pid) for label, pid in pids}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    host0 = host_cpu()
    t0 = time.monotonic()
    if load is not None:
        res = load()
    elif scenario["kind"] == "open":
        res = run_oha(tools, path.url, scenario["rate"], scenario["conns"], seconds)
    else:
        res = run_wrk(tools, path.url, scenario["conns"], seconds)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    host = [b - a for a, b in zip(host0, host_cpu())]
    after = {label: cpu_ticks(pid) for label, pid in pids}
    after_ns = {label: sched_ns(pid) for label, pid in pids}
    reqs = max(res["requests"], 1)
    res["wall_s"] = round(wall, 3)
    res["loadgen_cpu_s"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 3)
    res["cpu_us_per_req"] = {
        label: (after[label] - before[label]) / CLK_TCK * 1e6 / reqs for label, _ in pids
    }
    res["sched_cpu_us_per_req"] = {
        label: (after_ns[label] - before_ns[label]) / 1e3 / reqs for label, _ in pids
    }
    res["cpu_s"] = {label: (after[label] - before[label]) / CLK_TCK for label, _ in pids}
    res["peak_rss_kib"] = {label: status_kib(pid, "VmHWM") for label, pid in pids}
    # Share of all cores busy during the run, and share stolen by the hypervisor.
    res["host_busy"] = round(1 - (host[3] + host[4]) / max(sum(host), 1), 3)
    res["host_steal"] = round(host[7] / max(sum(host), 1), 3)
    res["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
    res["compilers_running"] = count_procs("rustc") + count_procs("cargo")
    return res


# ---------------------------------------------------------------------------------------------
# Main


def wait_quiet(max_wait: float, need: float = 60.0) -> dict:
    """Wait until no rustc or cargo process has run for `need` seconds, at most `max_wait`."""
    start = time.monotonic()
    quiet_since = None
    while True:
        busy = count_procs("rustc") + count_procs("cargo")
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= need:
            return {"quiet": True, "waited_s": round(now - start),
                    "verdict": f"no rustc/cargo for {need:.0f} s (waited {now - start:.0f} s)"}
        if now - start >= max_wait:
            return {"quiet": False, "waited_s": round(now - start),
                    "verdict": f"machine still busy after waiting {max_wait:.0f} s; ran anyway"}
        time.sleep(2)


def find_tool(name: str, extra: list[str]) -> str | None:
    for cand in [shutil.which(name), *extra]:
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 rounds, 3 s runs)")
    ap.add_argument("--set", dest="bench_set", choices=["default", "mesh", "floor"],
                    default="default",
                    help="default: direct, trellis 1/2 hops, HAProxy, nginx; mesh: direct and "
                    "the meshed paths with a local trellis-control (mesh-plaintext, mesh-mtls, "
                    "mesh-traffic), open loop only, rendered as a section of benchmarks.md; "
                    "floor: the mTLS pair with telemetry against the floor forwarder "
                    "(bench/floor_set.py), HTTP/1.1, HTTP/2, gRPC and new connections, SMP JSON")
    ap.add_argument("--floor-bin", default=str(REPO / "target/release/bench-floor"),
                    help="the floor forwarder, gRPC backend and load (bench/floor)")
    ap.add_argument("--control-bin", default=str(REPO / "target/release/trellis-control"))
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--open-seconds", type=float)
    ap.add_argument("--closed-seconds", type=float)
    ap.add_argument("--paths", help="comma-separated subset of "
                    "direct,trellis-1,trellis-2,haproxy,nginx (--set mesh: "
                    "direct,mesh-plaintext,mesh-mtls,mesh-traffic)")
    ap.add_argument("--trellis-bin", default=str(REPO / "target/release/trellis-proxy"))
    ap.add_argument("--trellis-commit", help="the commit --trellis-bin was built from "
                    "(default: HEAD of this work tree)")
    ap.add_argument("--trellis-arg", action="append", default=[], metavar="ARG",
                    help="extra flag for every trellis-proxy (repeatable; use --trellis-arg=--x)")
    ap.add_argument("--no-trellis", action="store_true", help="skip the trellis paths")
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="wait up to this many seconds for 60 s without rustc/cargo")
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop starting runs after")
    ap.add_argument("--docs-dir", help="where benchmarks.md/png go (default docs/, "
                    "bench/out/ with --quick)")
    ap.add_argument("--results", help="results JSON path (default bench/results/<date>.json, "
                    "bench/out/ with --quick)")
    ap.add_argument("--render-only", metavar="RESULTS_JSON", help="re-render docs, no runs")
    ap.add_argument("--command", help="the command line to print in the docs")
    ap.add_argument("--observations", metavar="MD_FILE",
                    help="with --render-only: hand-written notes on this run, kept in the results")
    args = ap.parse_args()

    docs_dir = Path(args.docs_dir) if args.docs_dir else (
        BENCH_DIR / "out" if args.quick else REPO / "docs")
    if args.render_only:
        results = json.loads(Path(args.render_only).read_text())
        if args.observations:
            results["observations"] = Path(args.observations).read_text()
        write_docs(results, docs_dir)
        Path(args.render_only).write_text(json.dumps(results, indent=1) + "\n")
        return 0

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    if args.bench_set == "floor":
        import floor_set  # noqa: PLC0415 - only this set needs it, and it imports this module
        return floor_set.main(args)

    TRELLIS_EXTRA_ARGS.extend(args.trellis_arg)
    args.trellis_bin = str(Path(args.trellis_bin).resolve())  # processes run in bench/out/...
    args.control_bin = str(Path(args.control_bin).resolve())
    mesh = args.bench_set == "mesh"
    scenarios = MESH_SCENARIOS if mesh else SCENARIOS
    rounds = args.rounds or (2 if args.quick else 5)
    open_s = args.open_seconds or (3 if args.quick else 10)
    closed_s = args.closed_seconds or (2 if args.quick else 6)

    tools = {
        "oha": find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
        "wrk": find_tool("wrk", []),
        "haproxy": find_tool("haproxy", ["/usr/sbin/haproxy"]),
        "nginx": find_tool("nginx", ["/usr/sbin/nginx"]),
    }
    missing = [k for k, v in tools.items() if not v]
    if missing:
        print(f"missing tools: {', '.join(missing)} (bench/run.sh installs them)", file=sys.stderr)
        return 2

    wanted = args.paths.split(",") if args.paths else \
        (MESH_PATHS if mesh else ["direct", "trellis-1", "trellis-2", "haproxy", "nginx"])
    notes = []
    use_trellis = any(p.startswith("trellis") for p in wanted) and not args.no_trellis
    if use_trellis and not os.access(args.trellis_bin, os.X_OK):
        notes.append(f"{args.trellis_bin} not found: trellis paths not measured")
        use_trellis = False
    if mesh:
        # The meshed set is the whole point of --set mesh: missing binaries are an error.
        for b in (args.trellis_bin, args.control_bin):
            if not os.access(b, os.X_OK):
                print(f"{b} not found (cargo build --release --bins)", file=sys.stderr)
                return 2

    out = BENCH_DIR / "out" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    results_file = Path(args.results) if args.results else (
        (out / "results.json") if args.quick
        else BENCH_DIR / "results" / f"{stamp:%Y-%m-%d}{'-mesh' if mesh else ''}.json")

    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet else {}
    if quiet:
        print(f"quiet check: {quiet['verdict']}", flush=True)

    procs = Processes(out)
    trellis_metrics: dict[str, dict] = {}
    mesh_info: dict = {}
    started = time.monotonic()
    try:
        backend_url, backend_pid = start_backend(procs, tools, out)
        backend_port = int(backend_url.rsplit(":", 1)[1].strip("/"))
        paths: list[BenchPath] = []
        if "direct" in wanted:
            paths.append(BenchPath("direct", 0, backend_url))
        if use_trellis:
            try:
                paths += [p for p in start_trellis_paths(procs, args.trellis_bin, out,
                                                         backend_port) if p.name in wanted]
            except RuntimeError as exc:
                # A broken proxy must not stop the peers being measured; say so in the doc.
                notes.append(f"trellis-proxy did not start, trellis paths not measured: "
                             f"{str(exc).splitlines()[0]}")
                print(f"warning: {exc}", file=sys.stderr)
                for name, proc, log in list(procs.started):
                    if name.startswith("trellis") and proc.poll() is not None:
                        procs.started.remove((name, proc, log))
                        log.close()
        if mesh:
            mesh_paths, control = start_mesh_paths(procs, args.trellis_bin, args.control_bin,
                                                   out, backend_port)
            paths += [p for p in mesh_paths if p.name in wanted]
            mesh_info["control"] = {k: control[k] for k in ("config_status",) if k in control}
            mesh_info["binaries"] = {
                Path(b).name: dt.datetime.fromtimestamp(Path(b).stat().st_mtime, dt.timezone.utc)
                .strftime("%Y-%m-%d %H:%M:%S UTC") for b in (args.trellis_bin, args.control_bin)}
        if "haproxy" in wanted:
            paths.append(start_haproxy(procs, tools, out, backend_port))
        if "nginx" in wanted:
            paths.append(start_nginx_proxy(procs, tools, out, backend_port))

        # Every path must answer 200 with the 1 KiB body before anything is measured.
        for p in paths:
            wait_until(lambda: http_get(p.url) == (200, b"x" * BODY_BYTES), 10, f"{p.name} path")
        if mesh:
            mesh_info["checks"] = check_mesh_paths([p for p in paths if p.name.startswith("mesh")])
        procs.check_alive()

        # Warm-up, not recorded: connections, allocator arenas, lazy initialisation.
        for p in paths:
            run_wrk(tools, p.url, 16, 1)

        runs = []
        backend = [("backend", backend_pid)]
        total = rounds * len(scenarios) * len(paths)
        for rnd in range(1, rounds + 1):
            # Only whole rounds start, so that every path has the same number of runs.
            if rnd > 1 and time.monotonic() - started > args.max_seconds:
                notes.append(f"stopped after {rnd - 1} of {rounds} rounds (--max-seconds "
                             f"{args.max_seconds:.0f})")
                rounds = rnd - 1
                break
            for sc in scenarios:
                k = (rnd - 1) % len(paths)
                for p in paths[k:] + paths[:k]:
                    secs = open_s if sc["kind"] == "open" else closed_s
                    res = measure(tools, p, sc, secs, backend)
                    procs.check_alive()
                    res.update({"round": rnd, "scenario": sc["name"], "path": p.name})
                    runs.append(res)
                    cpu = ", ".join(f"{k}={v:.1f}" for k, v in res["cpu_us_per_req"].items())
                    print(f"[{len(runs)}/{total}] r{rnd} {sc['name']:7} {p.name:14} "
                          f"rps={res['rps']:8.0f} p50={fmt(res['p50_ms'], 3)}ms "
                          f"p99={fmt(res['p99_ms'], 3)}ms cpu_us/req: {cpu} "
                          f"fail={res['non_200'] + res['errors']}", flush=True)

        # What the proxies themselves counted: requests, and which protocol each hop detected.
        for p in paths:
            for label, admin in p.admins.items():
                try:
                    trellis_metrics[label] = trellis_counters(admin)
                except OSError as exc:
                    trellis_metrics[label] = {"error": str(exc)}

        # trellis-proxy logs go to bench/out; a large one means per-request logging by default.
        for name, _, _ in procs.started:
            if name.startswith("trellis"):
                size = (out / f"{name}.log").stat().st_size
                if size > 64 * 1024:
                    notes.append(f"{name} wrote {size // 1024} KiB of logs during the run "
                                 "with its default log settings")
    finally:
        procs.stop_all()

    results = {
        "started_utc": stamp.strftime("%Y-%m-%d %H:%M"),
        "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": args.command or " ".join(["python3", "bench/bench.py", *sys.argv[1:]]),
        "results_file": str(results_file.relative_to(REPO)) if results_file.is_relative_to(REPO)
        else str(results_file),
        "set": args.bench_set,
        "config": {"trellis_extra_args": args.trellis_arg, "rounds": rounds, "open_seconds": open_s, "closed_seconds": closed_s,
                   "quick": args.quick, "body_bytes": BODY_BYTES},
        "machine": machine_notes(tools, args.trellis_commit),
        "quiet": quiet,
        "notes": notes,
        "scenarios": scenarios,
        "paths": [{"name": p.name, "hops": p.hops, "proxies": p.proxies} for p in paths],
        "runs": runs,
        "trellis_metrics": trellis_metrics,
    }
    if mesh:
        results["mesh"] = mesh_info
    results_file.parent.mkdir(parents=True, exist_ok=True)
    write_docs(results, docs_dir)
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
