#!/usr/bin/env python3
"""CI smoke check: what one trellis-proxy hop costs per request, relative to the floor forwarder.

    bench/smoke.py --bin-dir DIR [--baseline bench/smoke-baseline.json] [--record]

DIR holds `trellis-proxy` and `bench-floor` (bench/smoke.sh builds them). Both proxies forward
plaintext HTTP/1.1 keep-alive `GET /` to the same backend (`bench-floor backend`, 1 KiB answers),
one thread each (`trellis-proxy --threads 1`, the floor's current-thread runtime), trellis as
the benchmark's "trellis, 1 hop" path (an explicit outbound port, every default feature on).

Two measurements, in alternating rounds (trellis, floor, then floor, trellis, ...):

1. User-space instructions per request, counted by callgrind (both proxies run under
   `valgrind --tool=callgrind`; each round zeroes the counters, sends N requests with
   `bench-floor http-load`, dumps). Instruction counts barely move when other processes compete
   for the cores, which CPU time on a shared 2-core machine does; this VM has no PMU
   (`perf stat -e instructions` is not supported), hence callgrind.
2. System calls per request, counted with `perf stat -e raw_syscalls:sys_enter -p PID` (a
   tracepoint, no PMU needed) on the proxies running natively, plus their CPU time per request
   (schedstat) for information. Skipped, with a note, where perf cannot.

The gate: the median trellis/floor instruction ratio, and the syscall ratio when measured, must
not exceed the ratios in the baseline file by more than --tolerance (25 %). `--record` writes the
measured ratios as the new baseline instead. Exit status 0 pass, 1 regression, 2 setup failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


class SetupError(Exception):
    """Something other than the proxies' cost went wrong: exit 2, not 1."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Every process this run starts; all are stopped on the way out."""

    def __init__(self, out: Path):
        self.out = out
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.out)
        log.close()
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_all(self) -> None:
        for _, proc in list(reversed(self.started)):
            self.stop(proc)

    def check(self, name: str, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            tail = (self.out / f"{name}.log").read_text(errors="replace")[-1500:]
            raise SetupError(f"{name} exited with {proc.returncode}:\n{tail}")


def http_load(bin_dir: Path, port: int, requests: int, conns: int) -> dict:
    out = subprocess.run([str(bin_dir / "bench-floor"), "http-load", "--target",
                          f"127.0.0.1:{port}", "--requests", str(requests), "--conns", str(conns)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SetupError(f"http-load to :{port} failed: {out.stderr.strip()[-500:]}")
    res = json.loads(out.stdout)
    if res["failed"] or res["ok"] != requests:
        raise SetupError(f"http-load to :{port}: {res['ok']} of {requests} answered, "
                         f"{res['failed']} failed")
    return res


def wait_answering(bin_dir: Path, port: int, proc_check, timeout: float) -> None:
    """Until one request goes through (valgrind starts a program slowly)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc_check()
        out = subprocess.run([str(bin_dir / "bench-floor"), "http-load", "--target",
                              f"127.0.0.1:{port}", "--requests", "1"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and json.loads(out.stdout)["ok"] == 1:
            return
        last = (out.stderr or out.stdout).strip()[-300:]
        time.sleep(0.2)
    raise SetupError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s: {last}")


def start_backend(procs: Procs, bin_dir: Path) -> int:
    port = free_port()
    proc = procs.start("backend", [str(bin_dir / "bench-floor"), "backend", "--listen",
                                   f"127.0.0.1:{port}"])
    wait_answering(bin_dir, port, lambda: procs.check("backend", proc), 10)
    return port


def proxy_argv(kind: str, bin_dir: Path, port: int, backend: int, extra: list[str]) -> list[str]:
    if kind == "trellis":
        return [str(bin_dir / "trellis-proxy"), "--outbound-port",
                f"127.0.0.1:{port}=127.0.0.1:{backend}", "--outbound", "none",
                "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--threads", "1",
                "--log-level", "warn", *extra]
    return [str(bin_dir / "bench-floor"), "forward", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{backend}"]


# ---------------------------------------------------------------------------------------------
# 1. Instructions per request (callgrind)

TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def callgrind_control(flag: str, pid: int) -> None:
    out = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0 or "OK" not in out.stdout:
        raise SetupError(f"callgrind_control {flag} {pid}: {out.stdout.strip()} "
                         f"{out.stderr.strip()}")


def dump_total(out: Path, pid: int, before: set[Path]) -> int:
    """Total instructions in the dump that `callgrind_control -d` just wrote."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        new = sorted(set(out.glob(f"callgrind.out.{pid}.*")) - before)
        for path in new:
            m = TOTAL.search(path.read_text(errors="replace"))
            if m:
                return int(m.group(1))
        time.sleep(0.1)
    raise SetupError(f"no callgrind dump for pid {pid} in {out}")


def instructions(procs: Procs, bin_dir: Path, backend: int, args) -> dict:
    kinds = {}
    for kind in ("trellis", "floor"):
        port = free_port()
        argv = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-jumps=no",
                f"--callgrind-out-file={procs.out}/callgrind.out.%p",
                *proxy_argv(kind, bin_dir, port, backend, args.trellis_arg)]
        proc = procs.start(f"{kind}-callgrind", argv)
        kinds[kind] = (port, proc)
    for kind, (port, proc) in kinds.items():
        wait_answering(bin_dir, port, lambda: procs.check(f"{kind}-callgrind", proc), 60)
        http_load(bin_dir, port, args.warmup, args.conns)  # warm-up, not counted
    per_req: dict[str, list[float]] = {"trellis": [], "floor": []}
    for rnd in range(args.rounds):
        order = ["trellis", "floor"] if rnd % 2 == 0 else ["floor", "trellis"]
        for kind in order:
            port, proc = kinds[kind]
            before = set(procs.out.glob(f"callgrind.out.{proc.pid}.*"))
            callgrind_control("-z", proc.pid)
            http_load(bin_dir, port, args.requests, args.conns)
            callgrind_control("-d", proc.pid)
            total = dump_total(procs.out, proc.pid, before)
            per_req[kind].append(total / args.requests)
            print(f"  round {rnd + 1} {kind:7} {total / args.requests:10,.0f} instructions/request",
                  flush=True)
    for _, proc in kinds.values():
        procs.stop(proc)
    return per_req


# ---------------------------------------------------------------------------------------------
# 2. System calls and CPU time per request, natively


def cpu_ns(pid: int) -> int:
    """On-CPU time of all the process's threads, ns (schedstat: finer than utime's ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended between listing and reading
    return total


def perf_works() -> str | None:
    """None if `perf stat` can count the syscall tracepoint here, else why not."""
    if not shutil.which("perf"):
        return "perf is not installed"
    out = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not re.search(r"^\d+,", out.stderr, re.M):
        return f"perf cannot count raw_syscalls:sys_enter: {out.stderr.strip()[-200:]}"
    return None


def syscalls_and_cpu(procs: Procs, bin_dir: Path, backend: int, args) -> dict:
    kinds = {}
    for kind in ("trellis", "floor"):
        port = free_port()
        proc = procs.start(f"{kind}-native", proxy_argv(kind, bin_dir, port, backend,
                                                        args.trellis_arg))
        kinds[kind] = (port, proc)
    for kind, (port, proc) in kinds.items():
        wait_answering(bin_dir, port, lambda: procs.check(f"{kind}-native", proc), 15)
        http_load(bin_dir, port, args.warmup, args.conns)
    res: dict[str, dict[str, list[float]]] = {k: {"syscalls": [], "cpu_us": []} for k in kinds}
    for rnd in range(args.rounds):
        order = ["trellis", "floor"] if rnd % 2 == 0 else ["floor", "trellis"]
        for kind in order:
            port, proc = kinds[kind]
            n = args.native_requests
            t0 = cpu_ns(proc.pid)
            perf_out = procs.out / f"perf-{kind}-{rnd}.txt"
            out = subprocess.run(
                ["perf", "stat", "-x,", "-o", str(perf_out), "-e", "raw_syscalls:sys_enter",
                 "-p", str(proc.pid), "--", str(bin_dir / "bench-floor"), "http-load",
                 "--target", f"127.0.0.1:{port}", "--requests", str(n), "--conns",
                 str(args.conns)], capture_output=True, text=True, timeout=120)
            cpu_us = (cpu_ns(proc.pid) - t0) / 1e3 / n
            if out.returncode != 0:
                raise SetupError(f"perf stat on {kind}: {out.stderr.strip()[-300:]}")
            load = json.loads(out.stdout)
            if load["ok"] != n:
                raise SetupError(f"{kind}: {load['ok']} of {n} requests answered")
            m = re.search(r"^(\d+),", perf_out.read_text(), re.M)
            if not m:
                raise SetupError(f"no syscall count in {perf_out}")
            res[kind]["syscalls"].append(int(m.group(1)) / n)
            res[kind]["cpu_us"].append(cpu_us)
            print(f"  round {rnd + 1} {kind:7} {int(m.group(1)) / n:6.2f} syscalls/request, "
                  f"{cpu_us:6.1f} CPU µs/request", flush=True)
    for _, proc in kinds.values():
        procs.stop(proc)
    return res


# ---------------------------------------------------------------------------------------------


def ratio_of_medians(t: list[float], f: list[float]) -> float:
    return statistics.median(t) / statistics.median(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True, help="holds trellis-proxy and bench-floor")
    ap.add_argument("--baseline", default=str(BENCH_DIR / "smoke-baseline.json"))
    ap.add_argument("--record", action="store_true", help="write the measured ratios as the baseline")
    ap.add_argument("--tolerance", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000, help="per round, under callgrind")
    ap.add_argument("--native-requests", type=int, default=5000, help="per round, natively")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--trellis-arg", action="append", default=[], metavar="ARG",
                    help="extra trellis-proxy flag (repeatable; use --trellis-arg=--x)")
    ap.add_argument("--out", help="scratch directory (default bench/out/smoke-<time>)")
    args = ap.parse_args()

    bin_dir = Path(args.bin_dir).resolve()
    for b in ("trellis-proxy", "bench-floor"):
        if not os.access(bin_dir / b, os.X_OK):
            print(f"smoke: {bin_dir / b} not found (bench/smoke.sh builds it)", file=sys.stderr)
            return 2
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("smoke: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else \
        BENCH_DIR / "out" / f"smoke-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    procs = Procs(out)
    started = time.monotonic()
    try:
        backend = start_backend(procs, bin_dir)
        print(f"smoke: instructions per request (callgrind), {args.rounds} rounds of "
              f"{args.requests} requests on {args.conns} connection(s)", flush=True)
        instr = instructions(procs, bin_dir, backend, args)
        why_not = perf_works()
        native = None
        if why_not is None:
            print(f"smoke: system calls and CPU per request (native), {args.rounds} rounds of "
                  f"{args.native_requests} requests", flush=True)
            native = syscalls_and_cpu(procs, bin_dir, backend, args)
        else:
            print(f"smoke: system calls not measured: {why_not}", flush=True)
    except SetupError as exc:
        print(f"smoke: setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()

    measured = {
        "instructions_ratio": round(ratio_of_medians(instr["trellis"], instr["floor"]), 3),
        "trellis_instructions_per_request": round(statistics.median(instr["trellis"])),
        "floor_instructions_per_request": round(statistics.median(instr["floor"])),
    }
    if native:
        measured.update({
            "syscalls_ratio": round(ratio_of_medians(native["trellis"]["syscalls"],
                                                     native["floor"]["syscalls"]), 3),
            "trellis_syscalls_per_request": round(statistics.median(
                native["trellis"]["syscalls"]), 2),
            "floor_syscalls_per_request": round(statistics.median(native["floor"]["syscalls"]), 2),
            # Informational: CPU time on a shared machine is too noisy to gate on.
            "cpu_ratio": round(ratio_of_medians(native["trellis"]["cpu_us"],
                                                native["floor"]["cpu_us"]), 3),
        })
    print(f"smoke: measured {json.dumps(measured)} in {time.monotonic() - started:.0f} s")
    (out / "measured.json").write_text(json.dumps(measured, indent=1) + "\n")

    baseline_path = Path(args.baseline)
    if args.record:
        record = {
            "what": "trellis-proxy 1 hop / floor forwarder, per request, medians over rounds "
                    "(bench/smoke.py); the build is bench/smoke.sh's (release, no LTO)",
            "recorded_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "rounds": args.rounds, "requests": args.requests, "conns": args.conns,
            **measured,
        }
        baseline_path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"smoke: recorded {baseline_path}")
        return 0
    try:
        baseline = json.loads(baseline_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"smoke: cannot read baseline {baseline_path}: {exc}", file=sys.stderr)
        return 2
    failed = []
    for key in ("instructions_ratio", "syscalls_ratio"):
        if key not in measured or key not in baseline:
            continue
        limit = baseline[key] * (1 + args.tolerance)
        verdict = "ok" if measured[key] <= limit else "REGRESSED"
        print(f"smoke: {key} {measured[key]:.3f} (baseline {baseline[key]:.3f}, limit "
              f"{limit:.3f}): {verdict}")
        if verdict != "ok":
            failed.append(key)
    if failed:
        print(f"smoke: FAILED: trellis-proxy's cost per request relative to the floor grew more "
              f"than {args.tolerance:.0%} over {baseline_path.name} ({', '.join(failed)}); "
              f"profile it with bench/profile.sh", file=sys.stderr)
        return 1
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
