#!/usr/bin/env python3
"""System calls and wake-ups per request of each proxy on a path, counted, not timed.

    bench/syscalls.py --bin-dir DIR [--requests 2000] [--conns 1] [--paths a,b,...]
                      [--trace 5] [--json FILE]

DIR holds trellis-proxy, trellis-control and bench-floor (`cargo build --release --bin
trellis-proxy --bin trellis-control --bin bench-floor`; trellis-control only for the mtls path). Every path forwards plaintext HTTP/1.1 keep-alive `GET /`
from `bench-floor http-load` (closed loop, one request at a time per connection) to the same
backend (`bench-floor backend`, 1 KiB answers); every proxy runs one thread:

- trellis: one trellis-proxy, explicit outbound port (the benchmark's "trellis, 1 hop");
- haproxy, nginx: bench/haproxy.cfg.in and bench/nginx-proxy.conf.in, as in bench/bench.py;
- floor: one `bench-floor forward` (the floor forwarder);
- mtls: the trellis mTLS pair (a local trellis-control, client and server proxy, every
  default on, as `bench.py --set floor` and bench/floor_profile.py run it), HTTP/2 over mTLS
  between the proxies;
- floor2: two floor forwarders in a row (the pair mtls is measured against).

Per proxy, after a warm-up, N requests are sent while `perf stat -e 'syscalls:sys_enter_*'`
counts every system call the process makes (tracepoints: no PMU needed, and unlike strace it
does not slow the proxy down enough to change how its reads batch); wake-ups are the process's
voluntary context switches over the same requests (`/proc/PID/task/*/status`), i.e. how often
it went to sleep in epoll_wait and had to be woken. Each is counted over N and over 3N
requests and the difference divided by 2N, so what a proxy does on its own clock (timers,
heartbeats to the control plane) cancels out. Deterministic: a rerun on a busy machine gives
the same counts to about ±0.05.

`--trace K` also writes, per proxy, `strace -f -tt -T` of K requests (bench/out/syscalls-*/),
the order of the calls on one request's critical path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import smoke

BENCH_DIR = Path(__file__).resolve().parent
ALL_PATHS = ["trellis", "haproxy", "nginx", "floor", "mtls", "floor2"]

MESH_CONFIG = """\
# Written by bench/syscalls.py for its local trellis-control.
apiVersion: v1
kind: Service
metadata: {name: mtls, namespace: default}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: mtls}
"""


def render(template: Path, dest: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if re.search(r"@[A-Z_]+@", text):
        raise smoke.SetupError(f"{template}: placeholders left after rendering")
    dest.write_text(text)
    return dest


def wait_ready_file(procs: smoke.Procs, name: str, proc, path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check(name, proc)
        if path.exists() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass  # being written
        time.sleep(0.05)
    raise smoke.SetupError(f"{name}: no ready file {path} within {timeout:.0f} s")


def start_paths(procs: smoke.Procs, bins: Path, backend: int, wanted: list[str]) -> dict:
    """Starts each wanted path; returns name -> (port, [(label, proc)])."""
    out = procs.out
    paths: dict[str, tuple[int, list]] = {}
    for name in wanted:
        port = smoke.free_port()
        if name in ("trellis", "floor"):
            proc = procs.start(name, smoke.proxy_argv(name, bins, port, backend, []))
            paths[name] = (port, [(name, proc)])
        elif name == "haproxy":
            if not shutil.which("haproxy"):
                print("syscalls: haproxy is not installed; skipped", file=sys.stderr)
                continue
            conf = render(BENCH_DIR / "haproxy.cfg.in", out / "haproxy.cfg", {
                "LISTEN": f"127.0.0.1:{port}", "BACKEND": f"127.0.0.1:{backend}",
                "DIR": str(out)})
            proc = procs.start(name, ["haproxy", "-db", "-f", str(conf)])
            paths[name] = (port, [(name, proc)])
        elif name == "nginx":
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            if not Path(nginx).exists():
                print("syscalls: nginx is not installed; skipped", file=sys.stderr)
                continue
            (out / "nginx-proxy-tmp").mkdir(exist_ok=True)
            conf = render(BENCH_DIR / "nginx-proxy.conf.in", out / "nginx-proxy.conf", {
                "LISTEN": f"127.0.0.1:{port}", "BACKEND": f"127.0.0.1:{backend}",
                "DIR": str(out)})
            proc = procs.start(name, [nginx, "-p", str(out), "-e",
                                      str(out / "nginx-proxy.error.log"), "-c", str(conf)])
            paths[name] = (port, [(name, proc)])
        elif name == "floor2":
            server_port = smoke.free_port()
            server = procs.start("floor2-server", smoke.proxy_argv("floor", bins, server_port,
                                                                   backend, []))
            client = procs.start("floor2-client", smoke.proxy_argv("floor", bins, port,
                                                                   server_port, []))
            paths[name] = (port, [("floor2-client", client), ("floor2-server", server)])
        elif name == "mtls":
            cfg = out / "config"
            cfg.mkdir(exist_ok=True)
            (cfg / "mesh.yaml").write_text(MESH_CONFIG)
            ready = out / "control.json"
            ctl = procs.start("trellis-control", [
                str(bins / "trellis-control"), "--config-dir", str(cfg), "--discovery",
                "127.0.0.1:0", "--http", "127.0.0.1:0", "--ready-file", str(ready),
                "--log-level", "warn", "--registration-grace", "0s"])
            discovery = wait_ready_file(procs, "trellis-control", ctl, ready, 15)["discovery"]
            common = ["--control", f"http://{discovery}", "--namespace", "default",
                      "--admin", "127.0.0.1:0", "--threads", "1", "--log-level", "warn"]
            server = procs.start("mtls-server", [
                str(bins / "trellis-proxy"), *common, "--workload", "mtls-server",
                "--service-account", "mtls", "--label", "app=mtls", "--inbound",
                "127.0.0.1:0", "--app", f"127.0.0.1:{backend}", "--app-port", "80",
                "--outbound", "none"])
            client = procs.start("mtls-client", [
                str(bins / "trellis-proxy"), *common, "--workload", "mtls-client",
                "--service-account", "bench-client", "--label", "app=bench-client",
                "--inbound", "127.0.0.1:0", "--outbound", "none",
                "--outbound-port", f"127.0.0.1:{port}=mtls.default:80"])
            paths[name] = (port, [("mtls-client", client), ("mtls-server", server)])
        else:
            raise smoke.SetupError(f"--paths: unknown path {name!r} (one of {ALL_PATHS})")
    return paths


def wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each is one sleep, one wake."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)",
                          (task / "status").read_text(), re.M)
        except OSError:
            continue  # a thread that ended between listing and reading
        if m:
            total += int(m.group(1))
    return total


def perf_session(procs: smoke.Procs, bins: Path, port: int, members: list, n: int, conns: int,
                 tag: str) -> dict:
    """One perf session over n requests: per member, syscall name -> calls, and 'wakeups'."""
    perfs = []
    for label, proc in members:
        perf_out = procs.out / f"perf-{label}-{tag}.txt"
        perfs.append((label, proc, perf_out, subprocess.Popen(
            ["perf", "stat", "-x,", "-o", str(perf_out), "-e", "syscalls:sys_enter_*",
             "-p", str(proc.pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)))
    time.sleep(1.0)  # perf attaches to ~350 tracepoints before it counts
    before = {label: wakeups(proc.pid) for label, proc in members}
    smoke.http_load(bins, port, n, conns)
    after = {label: wakeups(proc.pid) for label, proc in members}
    res = {}
    for label, proc, perf_out, perf in perfs:
        perf.send_signal(signal.SIGINT)
        try:
            _, err = perf.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            perf.kill()
            raise smoke.SetupError(f"perf stat on {label} did not stop")
        calls = {}
        for line in perf_out.read_text().splitlines():
            m = re.match(r"^(\d+),[^,]*,syscalls:sys_enter_(\w+),", line)
            if m and int(m.group(1)):
                calls[m.group(2)] = int(m.group(1))
        if not calls:
            raise smoke.SetupError(f"perf stat counted nothing on {label}: {err.strip()[-300:]}")
        calls["wakeups"] = after[label] - before[label]
        res[label] = calls
    return res


def count(procs: smoke.Procs, bins: Path, port: int, members: list, n: int, conns: int) -> dict:
    """Per member: syscall name -> calls per request, plus 'wakeups'.

    Two sessions, of n and of 3n requests, and the difference divided by 2n: what a proxy does
    on its own while perf attaches and detaches (timers, heartbeats to the control plane) is in
    both and cancels, so what is left is per request.
    """
    small = perf_session(procs, bins, port, members, n, conns, "n")
    large = perf_session(procs, bins, port, members, 3 * n, conns, "3n")
    res = {}
    for label in large:
        names = set(small[label]) | set(large[label])
        res[label] = {s: max(0, large[label].get(s, 0) - small[label].get(s, 0)) / (2 * n)
                      for s in names}
    return res


def trace(procs: smoke.Procs, bins: Path, port: int, members: list, k: int) -> None:
    for label, proc in members:
        path = procs.out / f"strace-{label}.txt"
        st = subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", str(path), "-p",
                               str(proc.pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        time.sleep(0.5)
        smoke.http_load(bins, port, k, 1)
        time.sleep(0.2)
        st.send_signal(signal.SIGINT)
        st.wait(timeout=10)
        print(f"  strace of {k} requests through {label}: {path}", flush=True)


def table(results: dict) -> str:
    """Markdown: one column per proxy, one row per syscall (most frequent first)."""
    cols = [label for members in results.values() for label in members]
    per = {label: calls for members in results.values() for label, calls in members.items()}
    names = sorted({s for calls in per.values() for s in calls if s != "wakeups"},
                   key=lambda s: -max(per[c].get(s, 0) for c in cols))
    rows = [s for s in names if max(per[c].get(s, 0) for c in cols) >= 0.005]
    lines = ["| per request | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    total = {c: sum(v for s, v in per[c].items() if s != "wakeups") for c in cols}
    lines.append("| **system calls** | " + " | ".join(f"**{total[c]:.2f}**" for c in cols) + " |")
    lines.append("| wake-ups (voluntary switches) | "
                 + " | ".join(f"{per[c]['wakeups']:.2f}" for c in cols) + " |")
    for s in rows:
        lines.append(f"| {s} | " + " | ".join(
            f"{per[c][s]:.2f}" if per[c].get(s) else "–" for c in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--paths", default=",".join(ALL_PATHS))
    ap.add_argument("--trace", type=int, default=0, metavar="K",
                    help="also strace -f -tt -T K requests per proxy")
    ap.add_argument("--json", help="also write the counts to this file")
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    if why := smoke.perf_works():
        print(f"syscalls: {why}", file=sys.stderr)
        return 2
    out = BENCH_DIR / "out" / f"syscalls-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    procs = smoke.Procs(out)
    results: dict[str, dict] = {}
    try:
        backend = smoke.start_backend(procs, bins)
        paths = start_paths(procs, bins, backend, [p for p in args.paths.split(",") if p])
        for name, (port, members) in paths.items():
            smoke.wait_answering(bins, port, lambda: [procs.check(n, p) for n, p in members],
                                 30)
            smoke.http_load(bins, port, args.warmup, args.conns)
            results[name] = count(procs, bins, port, members, args.requests, args.conns)
            print(f"{name}: " + ", ".join(
                f"{label} {sum(v for s, v in c.items() if s != 'wakeups'):.2f} syscalls, "
                f"{c['wakeups']:.2f} wake-ups" for label, c in results[name].items()),
                flush=True)
            if args.trace:
                trace(procs, bins, port, members, args.trace)
    except smoke.SetupError as exc:
        print(f"syscalls: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    print(f"\n{args.requests} requests, {args.conns} connection(s), per request:\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"requests": args.requests, "conns": args.conns, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
