#!/usr/bin/env python3
"""Where a hop's latency goes at a fixed rate: inside the proxy, or outside it.

    bench/critical_path.py [--trellis-bin target/release/trellis-proxy] [--rates 500,1000,2000]
                           [--rounds 6] [--seconds 4] [--trace-rate 1000] [--json FILE]
                           [--with-batch] [--hogs N] [--no-trace]

Starts, with bench.py's own functions, the benchmark's nginx backend and, in front of it, one
trellis-proxy as bench.py's "trellis, 1 hop" path (explicit outbound port, --threads 1) and
one HAProxy (bench/haproxy.cfg.in). Then two measurements:

1. **Latency by rate, untraced.** For each rate, `--rounds` rounds; each round loads every
   path once (order alternating) with bench.py's open-loop oha run (`-q RATE -c 1`). Prints, per path, the median p50 and p99, the median of
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

- `--with-batch` adds a third path, the same trellis-proxy switched to SCHED_BATCH once it is
  up (what `chrt -b 0` does; a woken task does not preempt the running one);
- `--with-slice NS` (repeatable) adds the same trellis-proxy with a requested scheduling slice
  of NS nanoseconds (`sched_setattr`, SCHED_OTHER; the default, `se.slice` in
  `/proc/PID/sched`, is 1.4 ms on this VM);
- `--hogs N` runs N busy-loop processes through the latency phase (a node whose CPUs are busy;
  read p99);
- `--client-cpus LIST` runs the load generator on those CPUs only (comma-separated, as
  `taskset -c LIST`);
- `--sample-cpus` adds, per untraced run, the share of 10 ms samples in which the proxy and the
  backend were last on different CPUs;
- `--no-trace` stops after the untraced phase.

Standard library only; needs perf (linux-perf), oha, nginx and haproxy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import bench as b

# x86_64 system call numbers of the reads, writes and waits a proxy makes.
READS = {0, 19, 45, 47}  # read, readv, recvfrom, recvmsg
WRITES = {1, 20, 44, 46}  # write, writev, sendto, sendmsg
WAITS = {7, 232, 281}  # poll, epoll_wait, epoll_pwait
SYS_SCHED_SETATTR = 314
# Reads and writes of fewer bytes than this are the request; more, the 1 KiB response.
RESPONSE_BYTES = 1000
SEGMENTS = ["wake→read request", "read request", "request", "write upstream",
            "wake→read response", "read response", "response", "write downstream"]
SCHED_COUNTERS = ["se.nr_migrations", "nr_voluntary_switches", "nr_involuntary_switches"]


def stats(xs: list[float]) -> dict:
    return {"n": len(xs), "median_us": round(statistics.median(xs), 2) if xs else None,
            "mean_us": round(statistics.mean(xs), 2) if xs else None}


def ns(seconds: str, fraction: str) -> int:
    """A `perf script --ns` timestamp's two parts as nanoseconds."""
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def set_batch(pid: int) -> None:
    """SCHED_BATCH for every thread of `pid` (scheduling policy is per thread)."""
    for tid in threads(pid):
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))


def set_slice(pid: int, slice_ns: int) -> None:
    """Requests a fair-scheduling slice of `slice_ns` for every thread of `pid`
    (sched_setattr with SCHED_OTHER and sched_runtime; Linux 6.12+ takes it as the slice)."""
    import ctypes  # noqa: PLC0415 - only this experiment needs it

    class SchedAttr(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                    ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                    ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                    ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64)]

    attr = SchedAttr(size=ctypes.sizeof(SchedAttr), sched_policy=os.SCHED_OTHER,
                     sched_runtime=slice_ns)
    libc = ctypes.CDLL(None, use_errno=True)
    for tid in threads(pid):
        if libc.syscall(SYS_SCHED_SETATTR, tid, ctypes.byref(attr), 0) != 0:
            raise OSError(ctypes.get_errno(), f"sched_setattr({tid}, slice {slice_ns} ns)")
        got = re.search(r"^se\.slice\s+:\s+(\d+)", Path(f"/proc/{tid}/sched").read_text(), re.M)
        if not got or int(got.group(1)) != slice_ns:
            raise RuntimeError(f"the kernel did not take slice {slice_ns} ns for {tid}: {got}")


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None):
    """Processes started inside run on `cpus` only: the calling thread's affinity, which a
    child inherits, is narrowed for the while."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def last_cpu(pid: int) -> int:
    """The CPU `pid` last ran on (field 39 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[36])


def split_share_during(run, proxy_pid: int, backend_pid: int):
    """`run()`'s result, and the share of 10 ms samples taken meanwhile (by a thread, itself a
    little load) in which the proxy and the backend were last on different CPUs."""
    stop = threading.Event()
    counts = [0, 0]

    def sample() -> None:
        while not stop.wait(0.01):
            counts[0] += 1
            counts[1] += last_cpu(proxy_pid) != last_cpu(backend_pid)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        stop.set()
        sampler.join()
    return result, counts[1] / counts[0] if counts[0] else None


def sched_counters(pid: int) -> dict[str, int]:
    """The scheduler's per-process counters (/proc/PID/sched, no schedstats needed)."""
    text = Path(f"/proc/{pid}/sched").read_text()
    return {k: int(float(re.search(rf"^{re.escape(k)}\s+:\s+(\S+)", text, re.M).group(1)))
            for k in SCHED_COUNTERS}


def one_run(tools: dict, url: str, rate: int, seconds: float, client_cpus: set[int] | None,
            pid: int, backend_pid: int, sample: bool) -> dict:
    """One open-loop run of bench.py's oha at `rate`: latency in µs, the scheduler's counters
    per request of the proxy and the backend, and with `sample` the CPU split share."""
    def load() -> dict:
        with on_cpus(client_cpus):
            return b.run_oha(tools, url, rate, 1, seconds)

    before = sched_counters(pid), sched_counters(backend_pid)
    res, split = split_share_during(load, pid, backend_pid) if sample else (load(), None)
    after = sched_counters(pid), sched_counters(backend_pid)
    if res["errors"] or res["non_200"] or not res["requests"]:
        raise RuntimeError(f"{url}: {res['requests']} answered, {res['non_200']} not 200, "
                           f"{res['errors']} failed ({res['error_kinds']})")
    run = {f"{q}_us": res[f"{q}_ms"] * 1e3 for q in ("p50", "p90", "p99")}
    for who, was, now in [("proxy", before[0], after[0]), ("backend", before[1], after[1])]:
        for k in SCHED_COUNTERS:
            key = f"{who} {k.removeprefix('se.nr_').removeprefix('nr_')}"
            run[key] = (now[k] - was[k]) / max(res["requests"], 1)
    if split is not None:
        run["split_share"] = split
    return run


def latency_by_rate(tools: dict, urls: dict[str, str], pids: dict[str, int], backend_pid: int,
                    rates: list[int], rounds: int, seconds: float,
                    client_cpus: set[int] | None, sample: bool) -> dict:
    """Per rate and path: latency, and the scheduler's counters per request of the proxy and
    of the backend over the same run (migrations between CPUs, sleeps, preemptions)."""
    result = {}
    names = list(urls)
    for rate in rates:
        runs = {n: [] for n in names}
        for rnd in range(rounds):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                runs[name].append(one_run(tools, urls[name], rate, seconds, client_cpus,
                                          pids[name], backend_pid, sample))
        per_path = {}
        for name in names:
            p50s = [r["p50_us"] for r in runs[name]]
            per_path[name] = {
                "p50_us": round(statistics.median(p50s), 1),
                "p90_us": round(statistics.median(r["p90_us"] for r in runs[name]), 1),
                "p99_us": round(statistics.median(r["p99_us"] for r in runs[name]), 1),
                "p50_minus_haproxy_us": round(statistics.median(
                    a - h["p50_us"] for a, h in zip(p50s, runs["haproxy"])), 1),
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
        t = ns(m.group(1), m.group(2))
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
        t = ns(m.group(4), m.group(5))
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
        "woken_to_running_us": stats(run_delay),
        "proxy_woken_on_other_cpu": share(proxy_cross),
        "backend_woken_on_other_cpu": share(backend_cross),
        # Switched out while still runnable (a process it woke ran first), per wake-up.
        "proxy_preempted_per_wakeup": round(preempted / len(proxy_cross), 3)
        if proxy_cross else None,
    }


def trace(tools: dict, name: str, pid: int, backend_pid: int, url: str, rate: int,
          seconds: float, client_cpus: set[int] | None, out: Path) -> dict:
    with on_cpus(client_cpus):
        load = subprocess.Popen([tools["oha"], "--no-tui", "-z", f"{seconds + 2}s", "-q",
                                 str(rate), "-c", "1", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # the load's first second is its warm-up, not recorded
        calls, sched = out / f"perf-{name}-syscalls.data", out / f"perf-{name}-sched.data"
        # The proxy's own system calls, and every CPU's scheduling (a few events a request).
        recs = [subprocess.Popen([tools["perf"], "record", "-q", *events, "-o", str(data), "--",
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
        scripts = [subprocess.run([tools["perf"], "script", "--ns", "-i", str(data), "-F", fields],
                                  capture_output=True, text=True, timeout=120).stdout
                   for data, fields in [(calls, "tid,time,event,trace"),
                                        (sched, "pid,tid,cpu,time,event,trace")]]
    finally:
        load.wait(timeout=seconds + 30)
    seg = segments(parse_syscalls(scripts[0]))
    table = {s: stats(seg[s]) for s in SEGMENTS}
    table["held (sum of means)"] = {"n": None, "median_us": None, "mean_us": round(
        sum(v["mean_us"] or 0 for v in table.values()), 2)}
    return {"segments": table, "scheduling": wakeups(scripts[1], pid, backend_pid)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trellis-bin", default=str(b.REPO / "target/release/trellis-proxy"))
    ap.add_argument("--rates", default="500,1000,2000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--trace-rate", type=int, default=1000)
    ap.add_argument("--trace-seconds", type=float, default=3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--with-batch", action="store_true",
                    help="also a trellis-proxy switched to SCHED_BATCH")
    ap.add_argument("--with-slice", type=int, metavar="NS", action="append", default=[],
                    help="also a trellis-proxy whose requested scheduling slice is NS "
                    "nanoseconds (sched_setattr; repeatable)")
    ap.add_argument("--hogs", type=int, default=0,
                    help="busy-loop processes running through the latency phase")
    ap.add_argument("--no-trace", action="store_true", help="skip the traced breakdown")
    ap.add_argument("--client-cpus", metavar="LIST",
                    help="run the load generator on these CPUs only, comma-separated (e.g. 0: "
                    "its threads on one CPU)")
    ap.add_argument("--sample-cpus", action="store_true",
                    help="sample every 10 ms whether the proxy and the backend are on different "
                    "CPUs (per round; the sampling loads the machine a little)")
    args = ap.parse_args()
    tools = {
        "oha": b.find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
        "haproxy": b.find_tool("haproxy", ["/usr/sbin/haproxy"]),
        "nginx": b.find_tool("nginx", ["/usr/sbin/nginx"]),
        "perf": b.find_tool("perf", []),
    }
    missing = [k for k, v in tools.items() if not v]
    if missing or not os.access(args.trellis_bin, os.X_OK):
        print(f"missing: {missing or args.trellis_bin}", file=sys.stderr)
        return 2
    args.trellis_bin = str(Path(args.trellis_bin).resolve())  # the processes run in out/
    rates = [int(r) for r in args.rates.split(",") if r]
    client_cpus = {int(c) for c in args.client_cpus.split(",")} if args.client_cpus else None
    (b.BENCH_DIR / "out").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="critical-path-", dir=b.BENCH_DIR / "out"))
    procs = b.Processes(out)
    try:
        backend_url, backend_pid = b.start_backend(procs, tools, out)
        backend_port = urlsplit(backend_url).port
        haproxy = b.start_haproxy(procs, tools, out, backend_port)
        urls = {"haproxy": haproxy.url}
        pids = {"haproxy": haproxy.proxies[0][1]}
        trellises = [("trellis", None), *([("trellis-batch", set_batch)] * args.with_batch),
                     *[(f"trellis-slice-{n // 1000}us", lambda pid, n=n: set_slice(pid, n))
                       for n in args.with_slice]]
        for name, schedule in trellises:
            port = b.free_port()
            pid = int(b.start_trellis(procs, args.trellis_bin, out, name,
                                      b.trellis_one_hop_args(port, backend_port))["pid"])
            if schedule:
                schedule(pid)
            urls[name], pids[name] = f"http://127.0.0.1:{port}/", pid
        for name, url in urls.items():
            b.wait_until(lambda url=url: b.http_get(url)[0] == 200, 10, f"{name} answering")
        hogs = [procs.start(f"hog-{i}", [sys.executable, "-c", "while True: pass"])
                for i in range(args.hogs)]
        try:
            by_rate = latency_by_rate(tools, urls, pids, backend_pid, rates, args.rounds,
                                      args.seconds, client_cpus, args.sample_cpus)
        finally:
            for hog in hogs:
                os.killpg(hog.pid, signal.SIGKILL)
                hog.wait(timeout=5)
        result = {"command": " ".join(["bench/critical_path.py", *sys.argv[1:]]),
                  "kernel": os.uname().release, "trellis_bin": args.trellis_bin,
                  "hogs": args.hogs, "latency_by_rate": by_rate,
                  "trace_rate": args.trace_rate, "critical_path": {}}
        if not args.no_trace:
            for name in ["haproxy", "trellis"]:
                result["critical_path"][name] = trace(
                    tools, name, pids[name], backend_pid, urls[name], args.trace_rate,
                    args.trace_seconds, client_cpus, out)
            print_critical_path(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    finally:
        procs.stop_all()


def print_critical_path(result: dict) -> None:
    traced = list(result["critical_path"])
    print(f"\ncritical path at {result['trace_rate']} rps, mean µs per request "
          f"(median in brackets):")
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


if __name__ == "__main__":
    sys.exit(main())
