#!/usr/bin/env bash
# The control-plane and proxy-memory benchmarks of issue 14, one command:
#   bench/control.sh [--no-build] [--proxies "1000 5000"] [--out FILE]
# Runs bench-cp (bench/control-load) against release trellis-control and trellis-proxy:
#   - routes at each proxy count: simulated proxies ACKing route and endpoint changes, with
#     10,000 registered endpoints; control-plane RSS and CPU;
#   - proxy-mem: one trellis-proxy talking to 5 services, its RSS with 100 and with 10,000
#     services (100,000 endpoints) known to the control plane, and its startup time.
# Writes one JSON file (default bench/results/control-<UTC date>.json) and prints it. Each
# step is bounded by `timeout`; the whole run by --max-seconds (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
proxies="1000 5000"
out="bench/results/control-$(date -u +%Y-%m-%d).json"
max_seconds=600
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --proxies) proxies="$2"; shift ;;
    --out) out="$2"; shift ;;
    --max-seconds) max_seconds="$2"; shift ;;
    *) echo "bench/control.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done

if [ "$build" = 1 ]; then
  cargo build --release -p trellis-proxy; cargo build --release -p trellis-control -p trellis-bench-control  # the proxy alone: bench/proxy_rss.py PROXY_BUILD
fi
bin=target/release
for b in bench-cp trellis-control trellis-proxy; do
  [ -x "$bin/$b" ] || { echo "bench/control.sh: $bin/$b missing (build it or drop --no-build)" >&2; exit 1; }
done

# 5,000 proxies hold 10,000 sockets on this machine (both ends), plus the registrations'.
ulimit -n "$(ulimit -Hn)" || true
export RUST_BACKTRACE=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deadline=$(( $(date +%s) + max_seconds ))
left() { echo $(( deadline - $(date +%s) )); }

runs=()
for n in $proxies; do
  t=$(left); [ "$t" -gt 30 ] || { echo "bench/control.sh: out of time before $n proxies" >&2; break; }
  echo "== routes: $n proxies, 10,000 endpoints" >&2
  # Two load-tool threads: with one, 5,000 connections' HTTP/2 pings can go unanswered for the
  # control plane's 5 s keepalive timeout while the tool is busy, and streams are cut.
  if timeout "$t" "$bin/bench-cp" --threads 2 --control-bin "$bin/trellis-control" --out "$work/routes-$n.json" \
    routes --proxies "$n" --endpoints 10000 --services 200 --subscriptions 4 --changes 5 >/dev/null; then
    runs+=("$work/routes-$n.json")
  else
    echo "bench/control.sh: routes with $n proxies failed (see above)" >&2
    echo "$n" >> "$work/failed"
  fi
done
t=$(left)
if [ "$t" -gt 30 ]; then
  echo "== proxy-mem: 100 vs 10,000 services" >&2
  timeout "$t" "$bin/bench-cp" --control-bin "$bin/trellis-control" --out "$work/proxy-mem.json" \
    proxy-mem --proxy-bin "$bin/trellis-proxy" >/dev/null || echo "bench/control.sh: proxy-mem failed" >&2
fi

mkdir -p "$(dirname "$out")"
python3 - "$out" "$work" "${runs[@]}" <<'PY'
import json, os, subprocess, sys, time
out, work, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(p):
    with open(p) as f:
        return json.load(f)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
load_avg = os.getloadavg()
result = {
    # The Service Mesh Performance (SMP) shape's header fields, then the measurements.
    "smp_version": "v1",
    "id": f"trellis-control-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
    "name": "trellis control plane and proxy memory (bench/control.sh)",
    "mesh_config": {"mesh": "trellis", "version": commit, "mode": "local"},
    "env": {"platform": "loopback, one machine", "cpus": os.cpu_count(), "load_average_1m_at_end": load_avg[0]},
    "routes": [load(p) for p in runs],
}
failed = os.path.join(work, "failed")
if os.path.exists(failed):
    result["routes_failed_proxies"] = [int(x) for x in open(failed).read().split()]
pm = os.path.join(work, "proxy-mem.json")
if os.path.exists(pm):
    result["proxy_mem"] = load(pm)
targets = []
for r in result["routes"]:
    n = r["proxies"]
    pooled = r["route_change_pooled"]
    targets.append({"target": f"route change, {n} proxies: 90% ACKed within 50 ms", "measured_ms": pooled["p90_ms"], "met": pooled["p90_ms"] <= 50 and pooled["count"] == pooled["expected"]})
    targets.append({"target": f"route change, {n} proxies: all ACKed within 200 ms", "measured_ms": pooled["max_ms"], "met": pooled["max_ms"] <= 200 and pooled["count"] == pooled["expected"]})
    if n >= 5000:
        targets.append({"target": f"control-plane peak RSS at {n} proxies <= 300 MiB", "measured_mib": r["control_peak_rss_mib"], "met": r["control_peak_rss_mib"] <= 300})
    add = next((e for e in r["endpoint_changes"] if e["kind"] == "add"), None)
    if add:
        # A delta is met when the Update is smaller than the whole destination a route change sends.
        full = r["route_changes"][0]["bytes_per_update"] if r["route_changes"] else None
        b = add["bytes_per_stream_median"]
        targets.append({"target": f"endpoint change sent as a delta ({n} proxies)", "measured_bytes_per_stream": b, "met": b is not None and full is not None and b < full / 4, "note": f"whole destination: {full} bytes"})
if "proxy_mem" in result:
    p = result["proxy_mem"]
    targets.append({"target": "proxy RSS, 100 vs 10,000 services, within 10%", "measured_growth": p["proxy_rss_growth"], "met": abs(p["proxy_rss_growth"]) <= 0.10})
    for k in ("small", "large"):
        targets.append({"target": f"proxy ready within 100 ms of start ({p[k]['services']} services), median", "measured_ms": p[k]["startup"]["p50_ms"], "met": p[k]["startup"]["p50_ms"] <= 100})
for n in result.get("routes_failed_proxies", []):
    targets.append({"target": f"route change, {n} proxies: the run completes", "measured_ms": None, "met": False})
result["targets"] = targets
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(targets, indent=2))
print(f"wrote {out}", file=sys.stderr)
PY
python3 bench/control_report.py "$out" docs/benchmarks.md
