#!/usr/bin/env python3
"""Where a proxy's startup goes (issue 14, docs/benchmarks.md "Proxy startup").

Starts trellis-control (local mode, an empty config directory, loopback, free ports), then
starts trellis-proxy N times against it. For each start: the time from spawn to each logged
step (proxy and control logs at debug; RFC 3339 microsecond timestamps) and to the first
`/ready` 200 (polled every 2 ms). Prints the median, min and max of each step in ms.

usage: python3 bench/startup_steps.py BIN_DIR [N]   # BIN_DIR: target/release
Every wait is bounded; the logs stay in the printed temporary directory.
"""
import atexit, datetime, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

bin_dir = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 7
work = tempfile.mkdtemp(prefix="px_steps.")
os.mkdir(os.path.join(work, "config"))
ready = os.path.join(work, "control-ready.json")
clog = open(os.path.join(work, "control.log"), "w")
env = dict(os.environ, RUST_LOG="trellis_control=debug,info", NO_COLOR="1")
control = subprocess.Popen(
    [os.path.join(bin_dir, "trellis-control"), "--config-dir", os.path.join(work, "config"),
     "--discovery", "127.0.0.1:0", "--http", "127.0.0.1:0", "--ready-file", ready,
     "--registration-grace", "0s", "--log-level", "trellis_control=debug,info"],
    stdout=subprocess.DEVNULL, stderr=clog, env=env)
# Whatever happens below, no process of this script outlives it.
atexit.register(lambda: control.poll() is None and control.kill())
deadline = time.time() + 60
while not os.path.exists(ready):
    if time.time() > deadline or control.poll() is not None:
        sys.exit("control did not start")
    time.sleep(0.01)
time.sleep(0.05)
disc = json.load(open(ready))["discovery"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        s.sendall(b"GET /ready HTTP/1.0\r\nHost: x\r\n\r\n")
        line = s.recv(64).split(b"\r\n")[0].split()
        s.close()
        return int(line[1])
    except Exception:
        return None


TS = re.compile(r"^(\S+Z)\s+(\w+)\s+(.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def events(path):
    out = []
    for line in open(path, errors="replace"):
        line = ANSI.sub("", line)
        m = TS.match(line)
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        out.append((t, m.group(3)))
    return out


STEPS = [
    ("first log line", None),
    ("proxy listening", "proxy listening"),
    ("discovery stream open", "discovery stream open"),
    ("ctl: proxy registered", "CTL |proxy registered"),
    ("registered (Welcome)", "registered with the control plane"),
    ("key made", "workload key made"),
    ("Certify sent", "Certify sent"),
    ("ctl: certificate issued", "CTL |certificate issued"),
    ("WatchBundle: renew now", "renewing now"),
    ("certificate installed", "workload certificate installed"),
]
rows = {k: [] for k, _ in STEPS}
rows["/ready 200"] = []
for i in range(n):
    admin, inbound = free_port(), free_port()
    plog = os.path.join(work, f"proxy-{i}.log")
    cstart = os.path.getsize(os.path.join(work, "control.log"))
    penv = dict(os.environ, RUST_LOG="trellis_proxy=debug,info", NO_COLOR="1")
    t0 = time.time()
    p = subprocess.Popen(
        [os.path.join(bin_dir, "trellis-proxy"), "--control", f"http://{disc}", "--workload",
         f"start-{i}", "--labels", "app=steps", "--inbound", f"127.0.0.1:{inbound}", "--admin",
         f"127.0.0.1:{admin}", "--outbound", "none"],
        stdout=subprocess.DEVNULL, stderr=open(plog, "w"), env=penv)
    end = time.time() + 30
    while status(admin) != 200:
        if time.time() > end or p.poll() is not None:
            p.kill()
            sys.exit(f"proxy {i} not ready; see {plog}")
        time.sleep(0.002)
    t_ready = time.time()
    time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    ev = events(plog)
    clog.flush()
    with open(os.path.join(work, "control.log"), errors="replace") as f:
        f.seek(cstart)
        tail = f.read()
    tmp = os.path.join(work, f"ctl-{i}.log")
    open(tmp, "w").write(tail)
    ev += [(t, "CTL " + m) for t, m in events(tmp)]
    for name, needle in STEPS:
        if needle is None:
            ts = [t for t, m in ev if not m.startswith("CTL ")]
        else:
            ts = [t for t, m in ev if all(part in m for part in needle.split("|"))]
        rows[name].append((min(ts) - t0) * 1000 if ts else None)
    rows["/ready 200"].append((t_ready - t0) * 1000)
control.send_signal(signal.SIGTERM)
control.wait(10)
print(f"{n} starts; ms after spawn (median, min, max); logs in {work}")
for name, vals in rows.items():
    v = [x for x in vals if x is not None]
    if v:
        print(f"  {name:26} {statistics.median(v):7.1f} {min(v):7.1f} {max(v):7.1f}")
    else:
        print(f"  {name:26}       -")
