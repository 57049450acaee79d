#!/usr/bin/env python3
"""Telemetry overhead, interleaved A/B: CPU per request of two trellis-proxy processes, one
with --metrics-labels full and one with minimal, in front of one loopback nginx, measured with
alternating short wrk runs so that noise from the rest of the machine hits both alike.

    python3 bench/telemetry_ab.py [BIN [ROUNDS [SECONDS]]]

BIN defaults to target/release/trellis-proxy (build it with
`cargo build --release --bin trellis-proxy`). Needs nginx and wrk (bench/run.sh installs them).
CPU is read from /proc/<pid>/task/*/schedstat (nanoseconds). Prints each run and the medians.
The issue's bound: full costs at most 10% more CPU per request than minimal. The
deterministic counterpart (callgrind instructions per request, full against minimal, the same
binary) is bench/telemetry_ab_callgrind.py."""
import json, os, re, subprocess, sys, tempfile, time, statistics, socket
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "trellis-proxy")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
SECS = sys.argv[3] if len(sys.argv) > 3 else "2"
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
tmp = tempfile.mkdtemp()
bport = free()
conf = os.path.join(tmp, "nginx.conf")
open(conf, "w").write(f"daemon off; worker_processes 1; error_log {tmp}/err.log; pid {tmp}/nginx.pid;\n"
    f"events {{ worker_connections 1024; }}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{bport}; "
    "location / { return 200 \"hello world\"; } } }\n")
procs = [subprocess.Popen(["/usr/sbin/nginx", "-p", tmp, "-c", conf])]
proxies = {}
for mode in ["full", "minimal"]:
    port = free(); ready = os.path.join(tmp, f"{mode}.json")
    env = dict(os.environ, TRELLIS_METRICS_LABELS=mode)
    p = subprocess.Popen([BIN, "--outbound-port", f"127.0.0.1:{port}=127.0.0.1:{bport}", "--outbound", "none",
                          "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--threads", "1",
                          "--ready-file", ready], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p); proxies[mode] = (p.pid, port)
    for _ in range(100):  # bounded: 5 s for the ready file
        if os.path.exists(ready): break
        time.sleep(0.05)
    else:
        sys.exit(f"{mode} proxy not ready")
def cpu_ns(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
    return total
def run(mode):
    pid, port = proxies[mode]
    c0 = cpu_ns(pid)
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{SECS}s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    c1 = cpu_ns(pid)
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return (c1 - c0) / 1000 / n, n
res = {"full": [], "minimal": []}
try:
    for mode in ["full", "minimal"]:
        run(mode)  # warm up
    for r in range(ROUNDS):
        order = ["full", "minimal"] if r % 2 == 0 else ["minimal", "full"]
        for mode in order:
            us, n = run(mode)
            res[mode].append(us)
            print(f"round {r} {mode:8} {us:6.2f} us/req ({n} req)", flush=True)
finally:
    for p in procs: p.terminate()
f, m = statistics.median(res["full"]), statistics.median(res["minimal"])
print(f"median cpu us/req: full {f:.2f}, minimal {m:.2f}, overhead {100*(f/m-1):+.1f}%")
