#!/usr/bin/env bash
# Instructions per request through one proxy hop, counted by callgrind: repeatable on a busy
# machine, where wall-clock CPU time is not.
#
#   bench/profile.sh [--proxy trellis|haproxy] [--bin PATH] [--requests N] [--conns C]
#                    [--syscalls] [--out DIR] [-- EXTRA PROXY FLAGS]
#
# Starts the benchmark's nginx backend and one proxy hop in front of it (trellis-proxy as in
# the benchmark's "trellis, 1 hop" path: an explicit outbound port, --threads 1; or HAProxy
# with bench/haproxy.cfg.in), the proxy under `valgrind --tool=callgrind`. It warms up with
# 2,000 requests, zeroes the counters (callgrind_control -z), sends N requests with oha on C
# keep-alive connections (plaintext HTTP/1.1, GET /, 1 KiB answer), dumps (callgrind_control
# -d) and prints user-space instructions per request, then the top functions
# (callgrind_annotate, inclusive). --syscalls instead runs the proxy under `strace -c -f`
# and prints system calls per request (the kernel's share of the CPU cost).
#
# Needs valgrind (or strace), oha, nginx, haproxy; defaults: trellis, target/release/
# trellis-proxy, 20,000 requests, 1 connection, output in bench/out/profile-<time>/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="${OHA_ROOT:-$HOME/.local/oha}/bin:$PATH"
proxy=trellis
bin="$repo/target/release/trellis-proxy"
requests=20000
conns=1
mode=callgrind
out=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy) proxy="$2"; shift ;;
        --bin) bin="$2"; shift ;;
        --requests) requests="$2"; shift ;;
        --conns) conns="$2"; shift ;;
        --syscalls) mode=strace ;;
        --out) out="$2"; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "profile.sh: unknown flag $1" >&2; exit 64 ;;
    esac
    shift
done
# What this run needs, named before anything starts (a missing nginx otherwise shows up as a
# 502 from the proxy). bench/run.sh installs oha, nginx and haproxy when they are missing.
needed=(nginx oha)
[ "$mode" = strace ] && needed+=(strace) || needed+=(valgrind callgrind_control)
[ "$proxy" = haproxy ] && needed+=(haproxy)
[ "$proxy" = trellis ] && [ ! -x "$bin" ] && { echo "profile.sh: no proxy binary at $bin (--bin PATH)" >&2; exit 69; }
for tool in "${needed[@]}"; do
    if ! command -v "$tool" >/dev/null && [ ! -x "/usr/sbin/$tool" ]; then
        echo "profile.sh: $tool is missing (bench/run.sh installs oha, nginx and haproxy)" >&2
        exit 69
    fi
done
export PATH="$PATH:/usr/sbin"

out="${out:-$repo/bench/out/profile-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/nginx-backend-tmp"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# The same backend as bench.py: nginx answering 1 KiB from memory.
backend_port="$(free_port)"
body="$(python3 -c 'print("x" * 1023)')"
sed -e "s|@LISTEN@|127.0.0.1:$backend_port|" -e "s|@DIR@|$out|g" -e "s|@BODY@|$body|" \
    "$repo/bench/nginx-backend.conf.in" >"$out/nginx-backend.conf"
nginx -p "$out" -e "$out/nginx-backend.error.log" -c "$out/nginx-backend.conf" &
pids+=($!)

port="$(free_port)"
case "$mode" in
    callgrind) wrap=(valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p"
                     --dump-instr=no --collect-jumps=no) ;;
    strace) wrap=(strace -c -f -o "$out/strace.txt") ;;
esac
case "$proxy" in
    trellis)
        "${wrap[@]}" "$bin" --outbound-port "127.0.0.1:$port=127.0.0.1:$backend_port" \
            --outbound none --inbound 127.0.0.1:0 --admin 127.0.0.1:0 --threads 1 \
            "${extra[@]}" >"$out/proxy.log" 2>&1 &
        ;;
    haproxy)
        sed -e "s|@LISTEN@|127.0.0.1:$port|" -e "s|@BACKEND@|127.0.0.1:$backend_port|" \
            -e "s|@DIR@|$out|g" "$repo/bench/haproxy.cfg.in" >"$out/haproxy.cfg"
        "${wrap[@]}" haproxy -db -f "$out/haproxy.cfg" >"$out/proxy.log" 2>&1 &
        ;;
    *) echo "profile.sh: --proxy trellis|haproxy" >&2; exit 64 ;;
esac
wrapper=$!
pids+=("$wrapper")

# Up when a request goes through (valgrind starts slowly).
for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.5
done
curl -fsS -o /dev/null "http://127.0.0.1:$port/"

oha -n 2000 -c "$conns" --no-tui "http://127.0.0.1:$port/" >"$out/warmup.txt"
if [ "$mode" = callgrind ]; then
    callgrind_control -z "$wrapper" >/dev/null 2>&1
fi
oha -n "$requests" -c "$conns" --no-tui "http://127.0.0.1:$port/" >"$out/oha.txt"
grep -E 'Success rate|Requests/sec' "$out/oha.txt" | sed 's/^ */oha: /'
case "$mode" in
    callgrind)
        callgrind_control -d "$wrapper" >/dev/null 2>&1
        sleep 1
        dump="$(ls -t "$out"/callgrind.out.*.* 2>/dev/null | head -1)"
        total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
        echo "$proxy: $total instructions for $requests requests on $conns connection(s):" \
            "$((total / requests)) per request (user space)"
        callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '1,60p' >"$out/top-inclusive.txt"
        callgrind_annotate "$dump" 2>/dev/null | sed -n '1,80p' >"$out/top-self.txt"
        echo "dump: $dump (top functions: $out/top-self.txt, $out/top-inclusive.txt)"
        ;;
    strace)
        # strace detaches on SIGTERM; stopping the traced proxy makes it print its summary.
        kill $(pgrep -P "$wrapper") 2>/dev/null || true
        wait "$wrapper" 2>/dev/null || true
        calls="$(awk '$NF == "total" {print $4}' "$out/strace.txt")"
        echo "$proxy: $calls system calls for $((requests + 2002)) requests (warm-up included):" \
            "$(python3 -c "print(round($calls / ($requests + 2002), 2))") per request"
        sed -n '1,20p' "$out/strace.txt"
        ;;
esac
