#!/usr/bin/env bash
# Trellis benchmarks, in one go: direct, 1 and 2 trellis-proxy hops, HAProxy and nginx.
#
#   bench/run.sh            full run (~12 min), rewrites docs/benchmarks.md and .png
#   bench/run.sh --quick    smoke run (~1 min), writes to bench/out/ only
#   bench/run.sh --set mesh only the meshed set (local trellis-control, proxies registered
#                           with it: mesh-plaintext, mesh-mtls, mesh-traffic; ~8 min with
#                           --rounds 5), rewrites only its section of docs/benchmarks.md
#   bench/run.sh --set floor  the mTLS pair with telemetry against the floor forwarder
#                           (bench/floor_set.py; ~10 min with the default 3 rounds): its section
#                           of docs/benchmarks.md, docs/benchmarks-floor.png, and the results
#                           plus their SMP form in bench/results/
#
# Other flags go to bench/bench.py (see `python3 bench/bench.py --help`), e.g.
# --wait-quiet 1200 to wait (at most 20 min) for 60 s without rustc/cargo first,
# --no-build to use the existing target/release/trellis-proxy,
# --rev REV to build and measure commit REV instead of the work tree.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

orig_args="$*"
build=1
rev=""
bins=(--bin trellis-proxy)
prev=""
for a in "$@"; do
    # The meshed set also needs the control plane.
    if [ "$a" = "--set=mesh" ] || { [ "$prev" = "--set" ] && [ "$a" = "mesh" ]; }; then
        bins=(--bin trellis-proxy --bin trellis-control)
    fi
    # The floor set also needs the floor forwarder, gRPC backend and load (bench/floor).
    if [ "$a" = "--set=floor" ] || { [ "$prev" = "--set" ] && [ "$a" = "floor" ]; }; then
        bins=(--bin trellis-proxy --bin trellis-control --bin bench-floor)
    fi
    prev="$a"
done
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --rev) rev="$2"; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done

# Tools. oha comes from crates.io; the rest are Debian packages.
oha_root="${OHA_ROOT:-$HOME/.local/oha}"
export PATH="$oha_root/bin:$PATH"
if ! command -v oha >/dev/null; then
    echo "bench: installing oha into $oha_root (cargo install oha --locked)" >&2
    cargo install oha --locked --root "$oha_root"
fi
need_apt=()
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)  # --set floor's HTTP/2 runs
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing Debian packages: ${need_apt[*]} (apt-get install them)" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The Debian nginx package starts a system nginx on port 80; the benchmark does not use it.
# The plot (docs/benchmarks.png and the floor set's) needs matplotlib; without it the report
# says so and has no plot.
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    echo "bench: installing matplotlib (pip) for the plots" >&2
    python3 -m pip install --quiet matplotlib || echo "bench: no matplotlib: no plots" >&2
fi

if [ -n "$rev" ]; then
    # Measure a commit, not whatever the work tree holds: build it from `git archive` in
    # bench/out/ with its own target dir (BENCH_TARGET_DIR, default target/bench).
    commit="$(git rev-parse --short "$rev^{commit}")"
    src="$repo/bench/out/src-$commit"
    target_dir="${BENCH_TARGET_DIR:-$repo/target/bench}"
    if [ ! -d "$src" ]; then
        mkdir -p "$src.tmp"
        git archive "$commit" | tar -x -C "$src.tmp"
        mv "$src.tmp" "$src"
    fi
    (cd "$src" && cargo build --release -p trellis-proxy --target-dir "$target_dir" && { [ ${#bins[@]} -le 2 ] || cargo build --release "${bins[@]:2}" --target-dir "$target_dir"; })
    args+=(--trellis-bin "$target_dir/release/trellis-proxy" --trellis-commit "$commit")
    args+=(--control-bin "$target_dir/release/trellis-control")
    args+=(--floor-bin "$target_dir/release/bench-floor")
elif [ "$build" = 1 ]; then
    cargo build --release -p trellis-proxy; [ ${#bins[@]} -le 2 ] || cargo build --release "${bins[@]:2}"  # the proxy alone: bench/proxy_rss.py PROXY_BUILD
fi

py_pid=""
cleanup() {
    # bench.py stops everything it started; this only makes sure bench.py itself ends.
    if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        wait "$py_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cmd="bench/run.sh${orig_args:+ $orig_args}"
python3 bench/bench.py --command "$cmd" "${args[@]}" &
py_pid=$!
wait "$py_pid"
