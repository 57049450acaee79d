#!/usr/bin/env python3
"""Where a hop's latency goes at a fixed rate: inside the proxy, or outside it.

    bench/critical_path.py [--trellis-bin target/release/trellis-proxy] [--rates 500,1000,2000]
                           [--rounds 6] [--seconds 4] [--trace-rate 1000] [--json FILE]
                           [--with-batch] [--hogs N] [--no-trace]

Starts the benchmark's nginx backend (bench/nginx-backend.conf.in) and, in front of it, one
trellis-proxy exactly as bench.py's "trellis, 1 hop" path (explicit outbound port, --threads 1)
and one HAProxy (bench/haproxy.cfg.in). Then two measurements:

1. **Latency by rate, untraced.** For each rate, `--rounds` rounds; each round loads every
   path once (order alternating) with `oha -q RATE -c 1 -z SECONDS --latency-correction`, as
   bench.py's open-loop scenario does. Prints, per path, the median p50 and p99, the median of
   the per-round p50 differences against HAProxy (paired: both ran in the same minute), and the
   scheduler's counters per request over the same runs, for the proxy and for the backend
   (`/proc/PID/sched`: migrations between CPUs, sleeps, preemptions), each round's too.
2. **The critical path, traced.** At `--trace-rate`, per proxy, `perf record` of the
   `raw_syscalls` tracepoints of that one process (no PMU needed; about 1 µs per event, far less
   than strace) while oha loads it. Each request is the proxy's cycle: woken, read the request,
   write it upstream, wait, woken, read the response, write it downstream. Classified by size
   (a read or write under 1,000 bytes is the request, one over it the response), each segment
   is timed from the tracepoints' nanosecond timestamps:

   - `wake→read` from the return of the wait (epoll_wait) to the read that follows;
   - `read`, `write` the system calls themselves (a loopback write runs the receiver's TCP
     input and wakes it, so it is most of the kernel's share);
   - `request`, `response` the user-space work between the read and the write.

   Their sum is the time the proxy holds the request; the rest of a hop's added latency is
   outside the proxy: the scheduler waking it, the other processes, the VM. A system-wide
   record of the scheduler's events at the same time gives how long the proxy waited to run
   once woken, how often a wake-up (of the proxy, or of the backend by the proxy's write)
   crossed to the other CPU, and how often the proxy was switched out while still runnable
   (a process it woke ran first: then that process's run is inside the proxy's write).

The breakdown is what the user-space work of the two proxies costs on the critical path,
side by side; the untraced latencies are what a client sees.

Options for the scheduler experiments of docs/benchmarks.md ("Where the 1,000 rps latency
goes"):

- `--with-batch` adds a third path, the same trellis-proxy under `chrt -b 0` (SCHED_BATCH: a
  woken task does not preempt the running one);
- `--with-slice NS` (repeatable) adds the same trellis-proxy with a requested scheduling slice
  of NS nanoseconds (`sched_setattr`, SCHED_OTHER; the default, `se.slice` in
  `/proc/PID/sched`, is 1.4 ms on this VM);
- `--hogs N` runs N busy-loop processes through the latency phase (a node whose CPUs are busy;
  read p99);
- `--client-cpus LIST` runs the load generator under `taskset -c LIST`;
- `--sample-cpus` adds, per untraced run, the share of 10 ms samples in which the proxy and the
  backend were last on different CPUs;
- `--no-trace` stops after the untraced phase.

Standard library only; needs perf (linux-perf), oha, nginx, haproxy, chrt and taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# x86_64 system call numbers of the reads, writes and waits a proxy makes.
READS = {0, 19, 45, 47}  # read, readv, recvfrom, recvmsg
WRITES = {1, 20, 44, 46}  # write, writev, sendto, sendmsg
WAITS = {7, 232, 281}  # poll, epoll_wait, epoll_pwait
# Reads and writes of fewer bytes than this are the request; more, the 1 KiB response.
RESPONSE_BYTES = 1000
SEGMENTS = ["wake→read request", "read request", "request", "write upstream",
            "wake→read response", "read response", "response", "write downstream"]


def set_slice(pid: int, slice_ns: int) -> None:
    """Requests a fair-scheduling slice of `slice_ns` for `pid` (sched_setattr with
    SCHED_OTHER and sched_runtime; Linux 6.12+ takes it as the task's slice)."""
    import ctypes  # noqa: PLC0415 - only this experiment needs it

    class SchedAttr(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                    ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                    ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                    ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64)]

    attr = SchedAttr(size=ctypes.sizeof(SchedAttr), sched_policy=0, sched_runtime=slice_ns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(314, pid, ctypes.byref(attr), 0) != 0:  # SYS_sched_setattr on x86_64
        raise OSError(ctypes.get_errno(), f"sched_setattr({pid}, slice {slice_ns} ns)")
    got = re.search(r"^se\.slice\s+:\s+(\d+)", Path(f"/proc/{pid}/sched").read_text(), re.M)
    if not got or int(got.group(1)) != slice_ns:
        raise RuntimeError(f"the kernel did not take slice {slice_ns} ns for {pid}: {got}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: str, dest: Path, values: dict[str, str]) -> Path:
    text = (REPO / "bench" / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    dest.write_text(text)
    return dest


def wait_answering(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port} within 15 s")


def last_cpu(pid: int) -> int:
    """The CPU `pid` last ran on (field 39 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[36])


def run_oha(oha: list[str], port: int, rate: int, seconds: float,
            split_of: tuple[int, int] | None = None) -> dict:
    """One open-loop run; with `split_of` (proxy, backend pids), also the share of 10 ms
    samples in which the two were last on different CPUs (the sampler is itself a load)."""
    argv = [*oha, "--no-tui", "--output-format", "json", "--latency-correction",
            "--wait-ongoing-requests-after-deadline", "-z", f"{seconds}s", "-q", str(rate),
            "-c", "1", f"http://127.0.0.1:{port}/"]
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = split = 0
    if split_of:
        deadline = time.monotonic() + seconds + 30
        while load.poll() is None and time.monotonic() < deadline:
            samples += 1
            split += last_cpu(split_of[0]) != last_cpu(split_of[1])
            time.sleep(0.01)
    out, err = load.communicate(timeout=seconds + 60)
    if load.returncode != 0:
        raise RuntimeError(f"oha failed: {err[-500:]}")
    pct = json.loads(out)["latencyPercentiles"]
    run = {"p50_us": pct["p50"] * 1e6, "p90_us": pct["p90"] * 1e6, "p99_us": pct["p99"] * 1e6}
    if samples:
        run["split_share"] = split / samples
    return run


SCHED_COUNTERS = ["se.nr_migrations", "nr_voluntary_switches", "nr_involuntary_switches"]


def sched_counters(pid: int) -> dict[str, int]:
    """The scheduler's per-process counters (/proc/PID/sched, no schedstats needed)."""
    text = Path(f"/proc/{pid}/sched").read_text()
    return {k: int(float(re.search(rf"^{re.escape(k)}\s+:\s+(\S+)", text, re.M).group(1)))
            for k in SCHED_COUNTERS}


def latency_by_rate(oha: list[str], paths: dict[str, int], pids: dict[str, int], backend_pid: int,
                    rates: list[int], rounds: int, seconds: float, sample: bool) -> dict:
    """Per rate and path: latency, and the scheduler's counters per request of the proxy and
    of the backend over the same run (migrations between CPUs, sleeps, preemptions)."""
    result = {}
    names = list(paths)
    for rate in rates:
        runs = {n: [] for n in names}
        for rnd in range(rounds):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                before = sched_counters(pids[name]), sched_counters(backend_pid)
                run = run_oha(oha, paths[name], rate, seconds,
                              (pids[name], backend_pid) if sample else None)
                after = sched_counters(pids[name]), sched_counters(backend_pid)
                requests = rate * seconds
                for who, b, a in [("proxy", before[0], after[0]),
                                  ("backend", before[1], after[1])]:
                    for k in SCHED_COUNTERS:
                        run[f"{who} {k.removeprefix('se.nr_').removeprefix('nr_')}"] = \
                            (a[k] - b[k]) / requests
                runs[name].append(run)
        per_path = {}
        for name in names:
            p50s = [r["p50_us"] for r in runs[name]]
            per_path[name] = {
                "p50_us": round(statistics.median(p50s), 1),
                "p90_us": round(statistics.median(r["p90_us"] for r in runs[name]), 1),
                "p99_us": round(statistics.median(r["p99_us"] for r in runs[name]), 1),
                "p50_minus_haproxy_us": round(statistics.median(
                    a - b["p50_us"] for a, b in zip(p50s, runs["haproxy"])), 1),
                "rounds_p50_us": [round(x, 1) for x in p50s],
            }
            if sample:
                per_path[name]["rounds_split_share"] = [round(r["split_share"], 2)
                                                        for r in runs[name]]
            for key in [k for k in runs[name][0] if k.startswith(("proxy ", "backend "))]:
                per_path[name][f"{key} per request"] = round(
                    statistics.median(r[key] for r in runs[name]), 3)
                per_path[name][f"rounds {key} per request"] = [round(r[key], 2)
                                                               for r in runs[name]]
        result[str(rate)] = per_path
        for n, v in per_path.items():
            print(f"rate {rate:5} {n:14} per round: p50 {v['rounds_p50_us']}; proxy sleeps "
                  f"{v['rounds proxy voluntary_switches per request']}, preempted "
                  f"{v['rounds proxy involuntary_switches per request']}, migrations "
                  f"{v['rounds proxy migrations per request']}; backend preempted "
                  f"{v['rounds backend involuntary_switches per request']}"
                  + (f"; proxy and backend on different CPUs {v['rounds_split_share']}"
                     if sample else ""))
            print(f"rate {rate:5} {n:14} p50 {v['p50_us']:7.1f} ({v['p50_minus_haproxy_us']:+6.1f} "
                  f"vs haproxy)  p99 {v['p99_us']:8.1f}  per request: proxy migrations "
                  f"{v['proxy migrations per request']:.2f}, sleeps "
                  f"{v['proxy voluntary_switches per request']:.2f}, preempted "
                  f"{v['proxy involuntary_switches per request']:.2f}; backend preempted "
                  f"{v['backend involuntary_switches per request']:.2f}", flush=True)
    return result


def parse_syscalls(perf_script: str) -> list[tuple[int, int, int, int]]:
    """(number, entered ns, exited ns, return value) of each completed system call."""
    calls, pending = [], None
    pat = re.compile(r"\s*\d+\s+(\d+)\.(\d+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(.*)")
    for line in perf_script.splitlines():
        m = pat.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0")[:9])
        nr = int(m.group(4))
        if m.group(3) == "enter":
            pending = (nr, t)
        elif pending and pending[0] == nr:
            ret = re.match(r"\s*=\s*(-?\d+)", m.group(5))
            calls.append((nr, pending[1], t, int(ret.group(1)) if ret else 0))
            pending = None
    return calls


def segments(calls: list[tuple[int, int, int, int]]) -> dict[str, list[float]]:
    """Each request's segments in µs, from the proxy's own system calls."""
    seg = {s: [] for s in SEGMENTS}
    woke = None
    step = None  # what the cycle expects next
    read_done = 0
    for nr, enter, exit_, ret in calls:
        if nr in WAITS:
            woke = exit_
            continue
        if ret <= 0:
            continue
        small = ret < RESPONSE_BYTES
        if nr in READS:
            kind = "request" if small else "response"
            if woke is not None:
                seg[f"wake→read {kind}"].append((enter - woke) / 1e3)
            seg[f"read {kind}"].append((exit_ - enter) / 1e3)
            read_done, step, woke = exit_, kind, None
        elif nr in WRITES and step is not None and small == (step == "request"):
            seg[step].append((enter - read_done) / 1e3)
            seg["write upstream" if step == "request" else "write downstream"].append(
                (exit_ - enter) / 1e3)
            step = None
    return seg


def wakeups(perf_script: str, proxy_pid: int, backend_pid: int) -> dict:
    """From system-wide sched events: how long the proxy waited to run once woken, and how
    often a wake-up (of the proxy, or of the backend by the proxy) crossed to the other CPU."""
    pat = re.compile(r"\s*(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+)\.(\d+):\s+sched:(sched_\w+):(.*)")
    woken_at: dict[int, int] = {}
    run_delay, proxy_cross, backend_cross = [], [], []
    preempted = 0
    for line in perf_script.splitlines():
        m = pat.match(line)
        if not m:
            continue
        waker_pid, cpu = int(m.group(1)), int(m.group(3))
        t = int(m.group(4)) * 1_000_000_000 + int(m.group(5).ljust(9, "0")[:9])
        event, rest = m.group(6), m.group(7)
        if event == "sched_wakeup":
            pid = int(re.search(r"pid=(\d+)", rest).group(1))
            target = int(re.search(r"target_cpu=(\d+)", rest).group(1))
            if pid == proxy_pid:
                woken_at[pid] = t
                proxy_cross.append(target != cpu)
            elif pid == backend_pid and waker_pid == proxy_pid:
                backend_cross.append(target != cpu)
        elif event == "sched_switch":
            prev = re.search(r"prev_pid=(\d+) .*prev_state=(\S+)", rest)
            if int(prev.group(1)) == proxy_pid and prev.group(2).startswith("R"):
                preempted += 1
            nxt = int(re.search(r"next_pid=(\d+)", rest).group(1))
            if nxt in woken_at:
                run_delay.append((t - woken_at.pop(nxt)) / 1e3)

    def share(xs):
        return round(sum(xs) / len(xs), 3) if xs else None

    return {
        "woken_to_running_us": {
            "n": len(run_delay),
            "median_us": round(statistics.median(run_delay), 2) if run_delay else None,
            "mean_us": round(statistics.mean(run_delay), 2) if run_delay else None},
        "proxy_woken_on_other_cpu": share(proxy_cross),
        "backend_woken_on_other_cpu": share(backend_cross),
        # Switched out while still runnable (a process it woke ran first), per wake-up.
        "proxy_preempted_per_wakeup": round(preempted / len(proxy_cross), 3)
        if proxy_cross else None,
    }


def trace(oha: list[str], name: str, pid: int, backend_pid: int, port: int, rate: int,
          seconds: float, out: Path) -> dict:
    load = subprocess.Popen([*oha, "--no-tui", "-z", f"{seconds + 2}s", "-q", str(rate), "-c",
                             "1", f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        calls, sched = out / f"perf-{name}-syscalls.data", out / f"perf-{name}-sched.data"
        # The proxy's own system calls, and every CPU's scheduling (a few events a request).
        recs = [subprocess.Popen(["perf", "record", "-q", *events, "-o", str(data), "--",
                                  "sleep", str(seconds)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for events, data in [
                    (["-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit", "-p",
                      str(pid)], calls),
                    (["-a", "-e", "sched:sched_wakeup", "-e", "sched:sched_switch"], sched)]]
        for rec in recs:
            _, err = rec.communicate(timeout=seconds + 60)
            if rec.returncode != 0:
                raise RuntimeError(f"perf record on {name}: {err[-300:]}")
        scripts = [subprocess.run(["perf", "script", "--ns", "-i", str(data), "-F", fields],
                                  capture_output=True, text=True, timeout=120).stdout
                   for data, fields in [(calls, "tid,time,event,trace"),
                                        (sched, "pid,tid,cpu,time,event,trace")]]
    finally:
        load.wait(timeout=seconds + 30)
    seg = segments(parse_syscalls(scripts[0]))
    table = {}
    for s in SEGMENTS:
        xs = seg[s]
        table[s] = {"n": len(xs), "median_us": round(statistics.median(xs), 2) if xs else None,
                    "mean_us": round(statistics.mean(xs), 2) if xs else None}
    table["held (sum of means)"] = {"n": None, "median_us": None, "mean_us": round(
        sum(v["mean_us"] or 0 for v in table.values()), 2)}
    return {"segments": table, "scheduling": wakeups(scripts[1], pid, backend_pid)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trellis-bin", default=str(REPO / "target/release/trellis-proxy"))
    ap.add_argument("--rates", default="500,1000,2000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--trace-rate", type=int, default=1000)
    ap.add_argument("--trace-seconds", type=float, default=3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--with-batch", action="store_true",
                    help="also a trellis-proxy under SCHED_BATCH (chrt -b 0)")
    ap.add_argument("--with-slice", type=int, metavar="NS", action="append", default=[],
                    help="also a trellis-proxy whose requested scheduling slice is NS "
                    "nanoseconds (sched_setattr; repeatable)")
    ap.add_argument("--hogs", type=int, default=0,
                    help="busy-loop processes running through the latency phase")
    ap.add_argument("--no-trace", action="store_true", help="skip the traced breakdown")
    ap.add_argument("--client-cpus", metavar="LIST",
                    help="run the load generator under taskset -c LIST (e.g. 0: its threads "
                    "on one CPU)")
    ap.add_argument("--sample-cpus", action="store_true",
                    help="sample every 10 ms whether the proxy and the backend are on different "
                    "CPUs (per round; the sampling loads the machine a little)")
    args = ap.parse_args()
    tools = {t: shutil.which(t) or p for t, p in [
        ("oha", os.path.expanduser("~/.local/oha/bin/oha")), ("nginx", "/usr/sbin/nginx"),
        ("haproxy", "/usr/sbin/haproxy"), ("perf", "/usr/bin/perf"), ("chrt", "/usr/bin/chrt"),
        ("taskset", "/usr/bin/taskset")]}
    missing = [t for t, p in tools.items() if not os.access(p, os.X_OK)]
    if missing or not os.access(args.trellis_bin, os.X_OK):
        print(f"missing: {missing or args.trellis_bin}", file=sys.stderr)
        return 2
    args.trellis_bin = str(Path(args.trellis_bin).resolve())  # the processes run in out/
    rates = [int(r) for r in args.rates.split(",") if r]
    oha = [tools["oha"]] if not args.client_cpus else \
        [tools["taskset"], "-c", args.client_cpus, tools["oha"]]
    (REPO / "bench" / "out").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="critical-path-", dir=REPO / "bench" / "out"))
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(out / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=out)
        procs.append(proc)
        return proc

    try:
        backend = free_port()
        (out / "nginx-backend-tmp").mkdir()
        conf = render("nginx-backend.conf.in", out / "nginx-backend.conf", {
            "LISTEN": f"127.0.0.1:{backend}", "DIR": str(out), "BODY": "x" * 1024})
        nginx = start("nginx-backend", [tools["nginx"], "-p", str(out), "-e",
                                        str(out / "nginx-backend.error.log"), "-c", str(conf)])
        wait_answering(backend, nginx, "nginx backend")
        ports = {"haproxy": free_port(), "trellis": free_port()}
        if args.with_batch:
            ports["trellis-batch"] = free_port()
        for ns in args.with_slice:
            ports[f"trellis-slice-{ns // 1000}us"] = free_port()
        conf = render("haproxy.cfg.in", out / "haproxy.cfg", {
            "LISTEN": f"127.0.0.1:{ports['haproxy']}", "BACKEND": f"127.0.0.1:{backend}",
            "DIR": str(out)})

        def trellis(port: int) -> list[str]:
            return [args.trellis_bin, "--outbound-port", f"127.0.0.1:{port}=127.0.0.1:{backend}",
                    "--outbound", "none", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                    "--threads", "1"]

        proxies = {
            "haproxy": start("haproxy", [tools["haproxy"], "-db", "-f", str(conf)]),
            "trellis": start("trellis", trellis(ports["trellis"])),
        }
        if args.with_batch:
            proxies["trellis-batch"] = start(
                "trellis-batch", [tools["chrt"], "-b", "0", *trellis(ports["trellis-batch"])])
        for ns in args.with_slice:
            name = f"trellis-slice-{ns // 1000}us"
            proxies[name] = start(name, trellis(ports[name]))
            set_slice(proxies[name].pid, ns)
        for name, proc in proxies.items():
            wait_answering(ports[name], proc, name)
        hogs = [start(f"hog-{i}", [sys.executable, "-c", "while True: pass"])
                for i in range(args.hogs)]
        try:
            by_rate = latency_by_rate(oha, ports,
                                      {n: p.pid for n, p in proxies.items()}, nginx.pid, rates,
                                      args.rounds, args.seconds, args.sample_cpus)
        finally:
            for hog in hogs:
                os.killpg(hog.pid, signal.SIGKILL)
                hog.wait(timeout=5)
        result = {"command": " ".join(["bench/critical_path.py", *sys.argv[1:]]),
                  "kernel": os.uname().release, "trellis_bin": args.trellis_bin,
                  "hogs": args.hogs, "latency_by_rate": by_rate,
                  "trace_rate": args.trace_rate, "critical_path": {}}
        if args.no_trace:
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
            return 0
        for name in ["haproxy", "trellis"]:
            result["critical_path"][name] = trace(
                oha, name, proxies[name].pid, nginx.pid, ports[name], args.trace_rate,
                args.trace_seconds, out)
        print(f"\ncritical path at {args.trace_rate} rps, mean µs per request "
              f"(median in brackets):")
        traced = list(result["critical_path"])
        print(f"{'segment':22}" + "".join(f"{n:>20}" for n in traced))
        for s in [*SEGMENTS, "held (sum of means)"]:
            cells = []
            for name in traced:
                v = result["critical_path"][name]["segments"][s]
                med = f" ({v['median_us']})" if v["median_us"] is not None else ""
                cells.append(f"{v['mean_us']}{med}")
            print(f"{s:22}" + "".join(f"{c:>20}" for c in cells))
        for key, label in [("woken_to_running_us", "woken → running (median)"),
                           ("proxy_woken_on_other_cpu", "proxy woken cross-CPU"),
                           ("backend_woken_on_other_cpu", "backend woken cross-CPU"),
                           ("proxy_preempted_per_wakeup", "preempted per wake-up")]:
            cells = []
            for name in traced:
                v = result["critical_path"][name]["scheduling"][key]
                cells.append(str(v["median_us"] if isinstance(v, dict) else v))
            print(f"{label:22}" + "".join(f"{c:>20}" for c in cells))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
