#!/usr/bin/env bash
# Per-request cost of one Proxy-Wasm plugin (docs/wasm.md): one trellis-proxy (release) in
# front of the testkit HTTP echo, registered with a trellis-control, loaded at a fixed rate by
# trellis-testkit-load; once without plugins, once with the add-header plugin (a request header
# and a response header per request). Reports the proxy's CPU per request (user+sys from
# /proc/PID/stat over the run) and the load generator's p50/p99.
#
#   bench/wasm.sh                 1000 rps for 10 s per case, 3 rounds
#   RATE=2000 SECS=5 ROUNDS=1 bench/wasm.sh
#   bench/wasm.sh --no-build      use the existing target/release/trellis-proxy
#   PROXY=target/debug/trellis-proxy bench/wasm.sh --no-build   smoke-test the script
#
# Everything listens on 127.0.0.1 with ports the kernel picks.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
RATE=${RATE:-1000}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
PROXY=${PROXY:-target/release/trellis-proxy}
if [ "${1:-}" != "--no-build" ]; then
    cargo build --release -p trellis-proxy
    cargo build -p trellis-control -p trellis-testkit --bins
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo build -q --release --target wasm32-unknown-unknown \
    --manifest-path tests/wasm-plugins/Cargo.toml --target-dir target/wasm-plugins
exec python3 - "$repo" "$RATE" "$SECS" "$ROUNDS" "$PROXY" <<'PY'
import json, os, signal, subprocess, sys, tempfile, time

repo, rate, secs, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
proxy_bin = os.path.join(repo, sys.argv[5])
tmp = tempfile.mkdtemp(prefix="trellis-wasm-bench-")
procs = []
hz = os.sysconf("SC_CLK_TCK")

def start(name, args, ready):
    log = open(os.path.join(tmp, name + ".log"), "w")
    p = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    procs.append(p)
    for _ in range(300):
        if os.path.exists(ready):
            return p, json.load(open(ready))
        if p.poll() is not None:
            sys.exit(f"{name} exited; see {log.name}")
        time.sleep(0.05)
    sys.exit(f"{name} not ready; see {log.name}")

def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def stop():
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()

try:
    _, echo = start("echo", [f"{repo}/target/debug/trellis-testkit-echo", "--http", "127.0.0.1:0",
                             "--ready-file", f"{tmp}/echo.json"], f"{tmp}/echo.json")
    echo_port = echo["http"].rsplit(":", 1)[1]
    conf = os.path.join(tmp, "config")
    os.mkdir(conf)
    open(f"{conf}/echo.yaml", "w").write(
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\n"
        f"spec: {{selector: {{app: echo}}, ports: [{{port: 8080, targetPort: {echo_port}}}]}}\n")
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); disc = s.getsockname(); s.close()
    _, control = start("control", [f"{repo}/target/debug/trellis-control", "--config-dir", conf,
                                   "--discovery", f"{disc[0]}:{disc[1]}", "--http", "127.0.0.1:0",
                                   "--ready-file", f"{tmp}/control.json"], f"{tmp}/control.json")
    proxy, ready = start("proxy", [proxy_bin, "--workload", "echo-0",
                                   "--namespace", "default", "--label", "app=echo",
                                   "--service-account", "echo", "--control", f"http://{control['discovery']}",
                                   "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--outbound", "none",
                                   "--app", echo["http"], "--ready-file", f"{tmp}/proxy.json"],
                         f"{tmp}/proxy.json")
    url = f"http://{ready['inbound']}/bench"
    admin = ready["admin"]

    def plugin_in_force(want):
        import urllib.request
        for _ in range(200):
            dump = json.load(urllib.request.urlopen(f"http://{admin}/config_dump"))
            if bool(dump.get("wasm_plugins")) == want:
                return
            time.sleep(0.1)
        sys.exit(f"plugin state never became {want}")

    def run(label):
        subprocess.run([f"{repo}/target/debug/trellis-testkit-load", "--url", url, "--rate", str(rate),
                        "--duration-ms", "1000"], capture_output=True)  # warm-up
        c0 = cpu(proxy.pid)
        out = subprocess.run([f"{repo}/target/debug/trellis-testkit-load", "--url", url, "--rate", str(rate),
                              "--duration-ms", str(secs * 1000)], capture_output=True, text=True, check=True)
        c1 = cpu(proxy.pid)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        us = (c1 - c0) * 1e6 / max(r["ok"], 1)
        print(f"{label:<12} ok {r['ok']:>6}/{r['sent']:<6} proxy CPU {us:6.1f} us/req  "
              f"p50 {r['p50_us']:>5} us  p99 {r['p99_us']:>6} us", flush=True)
        return us, r["p50_us"]

    wasm = f"{repo}/target/wasm-plugins/wasm32-unknown-unknown/release/add_header.wasm"
    doc = ("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
           "metadata: {name: add, namespace: default}\n"
           f"spec: {{selector: {{matchLabels: {{app: echo}}}}, url: 'file://{wasm}'}}\n")
    results = {"none": [], "add-header": []}
    print(f"{rate} rps for {secs} s per case, {rounds} rounds")
    for i in range(rounds):
        if os.path.exists(f"{conf}/wasm.yaml"):
            os.remove(f"{conf}/wasm.yaml")
        plugin_in_force(False)
        results["none"].append(run("none"))
        open(f"{conf}/.wasm.tmp", "w").write(doc)
        os.rename(f"{conf}/.wasm.tmp", f"{conf}/wasm.yaml")
        plugin_in_force(True)
        results["add-header"].append(run("add-header"))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    n_cpu, n_p50 = med([u for u, _ in results["none"]]), med([p for _, p in results["none"]])
    w_cpu, w_p50 = med([u for u, _ in results["add-header"]]), med([p for _, p in results["add-header"]])
    print(f"median: none {n_cpu:.1f} us/req p50 {n_p50} us; add-header {w_cpu:.1f} us/req p50 {w_p50} us; "
          f"plugin adds {w_cpu - n_cpu:.1f} us CPU/req and {w_p50 - n_p50} us p50")
finally:
    stop()
PY
