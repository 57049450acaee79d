#!/usr/bin/env python3
"""User and system CPU per request of one proxy hop, for several builds side by side.

    bench/cpu_ab.py --bin head=/tmp/tp-head --bin new=target/release/trellis-proxy \\
        [--haproxy] [--rounds 3] [--seconds 5] [--conns 16]

Starts the benchmark's nginx backend (bench/nginx-backend.conf.in), one trellis-proxy per
--bin exactly as bench.py's "trellis, 1 hop" path (explicit outbound port, --threads 1), and
with --haproxy HAProxy (bench/haproxy.cfg.in). Every round loads each proxy in turn with a
closed-loop `oha -z SECONDS -c CONNS` (order rotating per round) and reads the proxy's utime
and stime from /proc/<pid>/stat before and after. Prints µs per request, user and system,
per run and the median over rounds. Instructions per request (bench/profile.sh) are exact;
this is the wall-clock side of the same question, and noisy on a shared machine: compare
builds measured in the same rounds.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime, stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def wait_up(port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = subprocess.run(
            ["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def oha(port: int, seconds: int, conns: int) -> int:
    """Runs oha closed-loop; returns the number of successful requests."""
    out = subprocess.run(
        ["oha", "-z", f"{seconds}s", "-c", str(conns), "--no-tui", "--output-format", "json",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    summary = json.loads(out)
    codes = summary.get("statusCodeDistribution", {})
    return int(codes.get("200", 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--haproxy", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=16)
    args = ap.parse_args()
    os.environ["PATH"] = f"{Path.home()}/.local/oha/bin:{os.environ['PATH']}:/usr/sbin"
    if not args.bin and not args.haproxy:
        ap.error("give at least one --bin NAME=PATH or --haproxy")

    work = Path(tempfile.mkdtemp(prefix="cpu-ab-"))
    (work / "nginx-backend-tmp").mkdir()
    procs: list[subprocess.Popen] = []
    try:
        backend = free_port()
        conf = (REPO / "bench/nginx-backend.conf.in").read_text()
        conf = conf.replace("@LISTEN@", f"127.0.0.1:{backend}").replace("@DIR@", str(work))
        conf = conf.replace("@BODY@", "x" * 1023)
        (work / "nginx-backend.conf").write_text(conf)
        procs.append(subprocess.Popen(
            ["nginx", "-p", str(work), "-e", str(work / "nginx.err"), "-c",
             str(work / "nginx-backend.conf")]))
        wait_up(backend)

        proxies: list[tuple[str, int, int]] = []  # name, port, pid
        for spec in args.bin:
            name, _, path = spec.partition("=")
            port = free_port()
            p = subprocess.Popen(
                [path, "--outbound-port", f"127.0.0.1:{port}=127.0.0.1:{backend}",
                 "--outbound", "none", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                 "--threads", "1"],
                stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
            procs.append(p)
            proxies.append((name, port, p.pid))
        if args.haproxy:
            port = free_port()
            cfg = (REPO / "bench/haproxy.cfg.in").read_text()
            cfg = cfg.replace("@LISTEN@", f"127.0.0.1:{port}")
            cfg = cfg.replace("@BACKEND@", f"127.0.0.1:{backend}").replace("@DIR@", str(work))
            (work / "haproxy.cfg").write_text(cfg)
            p = subprocess.Popen([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f",
                                  str(work / "haproxy.cfg")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            proxies.append(("haproxy", port, p.pid))
        for _, port, _ in proxies:
            wait_up(port)
            oha(port, 1, args.conns)  # warm-up: connections pooled, allocator settled

        results: dict[str, list[tuple[float, float]]] = {n: [] for n, _, _ in proxies}
        for r in range(args.rounds):
            order = proxies[r % len(proxies):] + proxies[: r % len(proxies)]
            for name, port, pid in order:
                u0, s0 = cpu_ticks(pid)
                n = oha(port, args.seconds, args.conns)
                u1, s1 = cpu_ticks(pid)
                per = 1e6 / TICK / max(n, 1)
                user, system = (u1 - u0) * per, (s1 - s0) * per
                results[name].append((user, system))
                print(f"round {r + 1} {name}: {n} requests, {n / args.seconds:,.0f} rps, "
                      f"user {user:.2f} µs, system {system:.2f} µs per request", flush=True)
        print(f"median over {args.rounds} rounds, {args.seconds} s, {args.conns} connections "
              f"(load average {os.getloadavg()[0]:.2f}):")
        for name, runs in results.items():
            user = statistics.median(u for u, _ in runs)
            system = statistics.median(s for _, s in runs)
            print(f"  {name}: user {user:.2f} µs, system {system:.2f} µs, "
                  f"total {user + system:.2f} µs per request "
                  f"(user range {min(u for u, _ in runs):.2f}-{max(u for u, _ in runs):.2f})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
