#!/usr/bin/env bash
# CI smoke run (issue 14): fails when one trellis-proxy hop's cost per request, relative to the
# floor forwarder (bench/floor) measured in the same run, regresses more than 25 % against the
# ratio recorded in bench/smoke-baseline.json. About 1 minute after the build; see
# docs/benchmarks.md ("CI smoke run").
#
#   bench/smoke.sh                 build, measure, compare with the baseline
#   bench/smoke.sh --record        build, measure, write the baseline (commit it with the change
#                                  that moved it, and say why)
#   bench/smoke.sh --no-build ...  use the binaries already in $SMOKE_TARGET_DIR/release
#
# Other flags go to bench/smoke.py. The build is release (opt-level 3) without LTO and with
# codegen-units 16, into its own target dir (SMOKE_TARGET_DIR, default target/smoke): the
# benchmark's fat-LTO build takes three times as long, and what is compared is a ratio, recorded
# with this same build. Needs valgrind (installed with apt-get as root when missing); perf is
# optional (system calls per request).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        *) args+=("$a") ;;
    esac
done

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "smoke: valgrind is missing (apt-get install valgrind)" >&2
        exit 2
    fi
    echo "==> smoke: installing valgrind"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

target_dir="${SMOKE_TARGET_DIR:-$repo/target/smoke}"
if [ "$build" = 1 ]; then
    echo "==> smoke: cargo build --release (no LTO) --bin trellis-proxy --bin bench-floor"
    start=$(date +%s)
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_DEBUG=false \
        timeout -k 30 "${SMOKE_BUILD_TIMEOUT:-900}" \
        cargo build --release --bin trellis-proxy --bin bench-floor --target-dir "$target_dir"
    echo "==> smoke: built in $(( $(date +%s) - start )) s"
fi

echo "==> smoke: trellis-proxy vs the floor forwarder"
timeout -k 10 "${SMOKE_RUN_TIMEOUT:-300}" \
    python3 bench/smoke.py --bin-dir "$target_dir/release" ${args[@]+"${args[@]}"}
