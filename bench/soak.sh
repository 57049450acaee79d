#!/usr/bin/env bash
# The chaos suite's soak (issue 12): the Bookinfo demo (`trellis demo`) under a steady load for
# 10 minutes, with every process' RSS and open fd count sampled; fails if any grows beyond the
# bound after warm-up. Runs outside the default test command (it takes 10 minutes).
#
#   bench/soak.sh                      600 s at 100 rps through the demo's entry
#   SOAK_SECS=120 SOAK_RPS=200 bench/soak.sh
#
# Binaries: $TRELLIS_BIN_DIR, else target/release if `trellis` is built there, else
# target/debug (`cargo build --workspace --bins`; the load generator is the testkit's
# `trellis-testkit-load`). Samples go to bench/out/soak-<time>.csv; the last line printed is the
# `chaos figure: soak: ...` line docs/reliability.md quotes.
#
# Growth, per process: after a 60 s warm-up, the median of the last third of the samples minus
# the median of the first third (a trend, not the noise of connection pools that follow
# latency); the peak is printed too. Bounds:
#   SOAK_RSS_BOUND_MIB  (default 16) per process
#   SOAK_FD_BOUND       (default 32) per process
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${SOAK_SECS:-600}"
rps="${SOAK_RPS:-100}"
every="${SOAK_EVERY:-10}"
warm="${SOAK_WARMUP:-60}"
rss_bound_mib="${SOAK_RSS_BOUND_MIB:-16}"
fd_bound="${SOAK_FD_BOUND:-32}"

if [ -n "${TRELLIS_BIN_DIR:-}" ]; then
    bin="$TRELLIS_BIN_DIR"
elif [ -x "$repo/target/release/trellis" ] && [ -x "$repo/target/release/trellis-testkit-load" ]; then
    bin="$repo/target/release"
else
    bin="$repo/target/debug"
fi
for b in trellis trellis-proxy trellis-control trellis-testkit-load; do
    if [ ! -x "$bin/$b" ]; then
        echo "soak: $bin/$b is missing; run cargo build --workspace --bins (or set TRELLIS_BIN_DIR)" >&2
        exit 2
    fi
done

work="$(mktemp -d -t trellis-soak-XXXXXX)"
mkdir -p "$repo/bench/out"
csv="$repo/bench/out/soak-$(date -u +%Y%m%dT%H%M%SZ).csv"
demo_pid=""
load_pid=""
cleanup() {
    # Only what this script started: the load generator, then the demo (which stops its own
    # children on SIGTERM).
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
    if [ -n "$demo_pid" ]; then
        kill -TERM "$demo_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Free ports: the kernel picks them; the status file says which.
"$bin/trellis" demo --entry 127.0.0.1:0 --dashboard 127.0.0.1:0 --no-load \
    --status-file "$work/status.json" >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 600); do
    [ -s "$work/status.json" ] && break
    kill -0 "$demo_pid" 2>/dev/null || { echo "soak: the demo exited:"; cat "$work/demo.log"; exit 1; } >&2
    sleep 0.1
done
[ -s "$work/status.json" ] || { echo "soak: the demo was not ready within 60 s" >&2; exit 1; }

entry="$(jq -r .entry "$work/status.json")"
# name pid, for the control plane, every sidecar and the demo process (which runs the apps).
jq -r '"control \(.control.pid)", (.workloads[] | "\(.workload) \(.pid)")' "$work/status.json" >"$work/pids"
echo "demo $demo_pid" >>"$work/pids"

"$bin/trellis-testkit-load" --url "http://$entry/api/v1/products/0/reviews" \
    --rate "$rps" --duration-ms "$((secs * 1000))" --timeout-ms 5000 >"$work/load.json" &
load_pid=$!

echo "t,name,pid,rss_kib,fds" >"$csv"
start=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
    now=$(( $(date +%s) - start ))
    while read -r name pid; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        [ -n "$rss" ] && echo "$now,$name,$pid,$rss,$fds" >>"$csv"
    done <"$work/pids"
    # Bounded: the load generator ends after $secs (plus its timeout).
    sleep "$every"
    if [ "$now" -gt $((secs + 60)) ]; then
        echo "soak: the load generator ran past its time" >&2
        exit 1
    fi
done
wait "$load_pid"
load_pid=""

summary="$(python3 - "$csv" "$work/load.json" "$warm" "$rss_bound_mib" "$fd_bound" "$secs" "$rps" <<'EOF'
import csv, json, sys
path, load_path, warm, rss_bound, fd_bound, secs, rps = sys.argv[1:]
warm, rss_bound, fd_bound = int(warm), float(rss_bound), int(fd_bound)
rows = list(csv.DictReader(open(path)))
load = json.load(open(load_path))
worst = []
bad = []
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
for name in dict.fromkeys(r["name"] for r in rows):
    mine = [r for r in rows if r["name"] == name]
    after = [r for r in mine if int(r["t"]) >= warm] or mine
    third = max(1, len(after) // 3)
    rss = [int(r["rss_kib"]) / 1024 for r in after]
    fds = [int(r["fds"]) for r in after]
    rss0, rss1 = median(rss[:third]), median(rss[-third:])
    fd0, fd1 = median(fds[:third]), median(fds[-third:])
    grow_rss, grow_fd = rss1 - rss0, fd1 - fd0
    print(f"{name:16} rss median {rss0:7.1f} -> {rss1:7.1f} MiB ({grow_rss:+.1f}, peak {max(rss):.1f})  fds median {fd0} -> {fd1} ({grow_fd:+d}, peak {max(fds)})", file=sys.stderr)
    worst.append((grow_rss, name, grow_fd))
    if grow_rss > rss_bound or grow_fd > fd_bound:
        bad.append(name)
failed = load["sent"] - load["ok"]
g = max(worst)
gf = max(w[2] for w in worst)
print(f"chaos figure: soak: {secs} s at {rps} rps through the Bookinfo demo: sent {load['sent']} ok {load['ok']} failed {failed} p50 {load['p50_us']/1000:.1f} ms p99 {load['p99_us']/1000:.1f} ms; largest growth (median of the last third minus the first, after {warm} s warm-up) RSS {g[0]:+.1f} MiB ({g[1]}), fds {gf:+d}; bounds +{rss_bound:g} MiB, +{fd_bound} fds")
if bad:
    print(f"soak: beyond the bound: {bad}", file=sys.stderr)
    sys.exit(1)
if failed:
    print(f"soak: {failed} requests failed: {load}", file=sys.stderr)
    sys.exit(1)
EOF
)" || { echo "$summary"; echo "samples: $csv" >&2; exit 1; }
echo "samples: $csv" >&2
echo "$summary"
