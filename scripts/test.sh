#!/usr/bin/env bash
# The whole Trellis test suite, in one command, on a fresh Debian machine (as root):
#   1. installs the outside programs the tests drive, if any is missing (curl, iptables,
#      iproute2, h2load from nghttp2-client, Python's grpcio);
#   2. builds every binary (the cross-process tests run the real ones);
#   3. runs every test of the workspace (cargo nextest if installed, else cargo test).
# Network-namespace tests need root; as another user, set TRELLIS_SKIP_NETNS=1 to skip them.
# The Kubernetes tests need a kube-apiserver testbed, built here when missing (as root; ~8 min
# once per machine); TRELLIS_SKIP_K8S=1 skips them.
# Extra arguments go to the test runner (e.g. `scripts/test.sh -p trellis-testkit`).
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# Each stage is bounded, so a hang fails the run instead of eating CI's budget.
BUILD_TIMEOUT=${TRELLIS_BUILD_TIMEOUT:-1500}
TEST_TIMEOUT=${TRELLIS_TEST_TIMEOUT:-1500}

# A non-login shell may lack rustup's PATH entry.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
fi
log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# --- 1. outside programs ---------------------------------------------------------------
# command -> Debian package that provides it
declare -A NEED=(
  [curl]=curl
  [iptables]=iptables
  [iptables-save]=iptables
  [iptables-restore]=iptables
  [ip]=iproute2
  [h2load]=nghttp2-client
  [setpriv]=util-linux
  [python3]=python3
  [prometheus]=prometheus
  [openssl]=openssl
  [kubectl]=kubernetes-client
  # The dashboard's browser tests (crates/cli/tests/dashboard_browser.rs).
  [chromium]=chromium
  [chromedriver]=chromium-driver
  # trellis top's terminal test (crates/cli/tests/top.rs).
  [tmux]=tmux
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done

# Python with grpcio: Debian's python3 is where python3-grpcio lands; a python3 earlier on
# PATH (pyenv, a venv) may not have it, so the tests look at /usr/bin/python3 first too.
python_has_grpc() {
  local py
  for py in "${TRELLIS_PYTHON:-}" /usr/bin/python3 python3; do
    [ -n "$py" ] && "$py" -c 'import grpc' >/dev/null 2>&1 && return 0
  done
  return 1
}
python_has_grpc || missing+=(python3-grpcio)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  is_root || die "missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  log "installing: ${missing[*]}"
  # One update, and only because something is missing.
  apt-get update -qq
  apt_pkgs=()
  for pkg in "${missing[@]}"; do
    if [ "$pkg" = python3-grpcio ]; then
      # Not every Debian release has it; fall back to pip below.
      if apt-cache policy python3-grpcio 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt_pkgs+=(python3-grpcio)
      fi
    else
      apt_pkgs+=("$pkg")
    fi
  done
  if [ ${#apt_pkgs[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
  fi
  if ! python_has_grpc; then
    log "python3-grpcio not available from apt; installing grpcio with pip"
    command -v pip3 >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    # Debian marks its Python as externally managed (PEP 668); this machine is a test box.
    /usr/bin/python3 -m pip install -q --break-system-packages grpcio \
      || /usr/bin/python3 -m pip install -q grpcio
  fi
  python_has_grpc || die "grpcio is still not importable"
fi

if ! is_root && [ "${TRELLIS_SKIP_NETNS:-}" != 1 ]; then
  die "the network-namespace tests need root: run as root, or set TRELLIS_SKIP_NETNS=1 to skip them"
fi

# Namespaces left behind by a test process that was killed (its pid is in the name).
if is_root; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^trellis-[0-9]+-' || true); do
    pid=${ns#trellis-}; pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
fi

# A real kube-apiserver, kube-controller-manager and etcd (v1.20.2) for the Kubernetes tests
# (crates/control/tests/k8s*.rs, crates/cli/tests/k8s_install.rs), built from Debian's own
# source package and cached outside the clone, so only a new machine pays the ~8 minutes.
# TRELLIS_SKIP_K8S=1 skips the build, and the tests then skip too.
export TRELLIS_K8S_BIN="${TRELLIS_K8S_BIN:-/var/cache/mesh-testbin/k8s-v1.20.2}"
if [ "${TRELLIS_SKIP_K8S:-}" != 1 ]; then
  for bin in kube-apiserver kube-controller-manager etcd; do
    if [ ! -x "$TRELLIS_K8S_BIN/$bin" ]; then
      is_root || die "the Kubernetes testbed is missing ($TRELLIS_K8S_BIN); build it as root (scripts/k8s-testbed/build-kube-apiserver.sh) or set TRELLIS_SKIP_K8S=1"
      log "building the Kubernetes testbed into $TRELLIS_K8S_BIN (once per machine)"
      # The build apt-installs Go 1.19; a machine that never ran apt-get update lists nothing.
      apt-cache policy golang-1.19-go 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
      OUT="$TRELLIS_K8S_BIN" timeout -k 30 2400 bash scripts/k8s-testbed/build-kube-apiserver.sh
      break
    fi
  done
fi

# --- 2. build ----------------------------------------------------------------------------
# The Proxy-Wasm test plugins (tests/wasm-plugins, docs/wasm.md) build for wasm32.
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# With the test targets: their dev-dependencies turn on more features of shared crates (tokio's
# test-util), and a build without them would compile tokio and everything above it a second
# time, with the other features, for the doctests and nextest.
log "cargo build --workspace --bins --tests"
timeout -k 30 "$BUILD_TIMEOUT" cargo build --workspace --bins --tests

# --- 2b. fuzz (docs/testing.md), bounded; skipped for a subset run or TRELLIS_SKIP_FUZZ=1 ------
# Every parser of untrusted input (fuzz/): its check functions run over seeded random inputs
# on the stable toolchain with the suite (the crate is a workspace member); here each target
# runs under libFuzzer for TRELLIS_FUZZ_SECONDS (12 s) from its committed seeds
# (fuzz/corpus/<target>, read-only: what a run finds goes to a scratch directory). libFuzzer
# needs a nightly toolchain and cargo-fuzz; a machine without them gets them here, once (about
# 2 minutes for cargo-fuzz). It runs before the tests so that their summary closes the run. A
# crash fails the run and leaves its input in fuzz/artifacts/<target>/.
FUZZ_TARGETS=(authz_matching detect http1_head config_adapters route_matching csr jwt)
# Installs the nightly toolchain and cargo-fuzz when missing; false when either cannot be had
# (no network to rustup's or crates.io's servers), which the caller reports.
ensure_cargo_fuzz() {
  if ! cargo +nightly --version >/dev/null 2>&1; then
    log "installing the nightly toolchain for libFuzzer (rustup, profile minimal)"
    timeout -k 30 900 rustup toolchain install nightly --profile minimal || return 1
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install --locked, once per machine)"
    timeout -k 30 900 cargo install cargo-fuzz --locked || return 1
  fi
}
if [ "$#" -eq 0 ] && [ -z "${TRELLIS_SKIP_FUZZ:-}" ]; then
  if ensure_cargo_fuzz; then
    # The workspace's release profile is the proxy's (fat LTO, one codegen unit, abort on
    # panic): the fuzz build takes cargo's defaults instead, as it had when fuzz/ was a
    # workspace of its own, so that each of the seven targets is not a whole-program link.
    # Its intermediate files stay in its own target dir (below), whatever build-dir CI chose.
    # The profile's 16 codegen units repeat what --codegen-units below passes to rustc, but the
    # profile is part of what cargo compares: without them every cached dependency would be
    # built again once (12 minutes) for the same output. (Debug info is cargo-fuzz's to set:
    # a setting of ours here changes nothing, so there is none.)
    FUZZ_PROFILE=(-u CARGO_BUILD_BUILD_DIR CARGO_PROFILE_RELEASE_LTO=false
      CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_PANIC=unwind)
    # The fuzz build (the proxy, rustls and aws-lc with sanitizer coverage, on nightly) is the
    # slowest build of the run, so as root it lives outside the clone, like the testbed: a fresh
    # clone then rebuilds only the workspace's own crates. 16 codegen units build in parallel; a
    # 12 s run does not miss the speed of one. Build and run must pass the same flags, or the run
    # rebuilds.
    FUZZ_TARGET_DIR=${TRELLIS_FUZZ_TARGET_DIR:-}
    if [ -z "$FUZZ_TARGET_DIR" ] && is_root; then
      FUZZ_TARGET_DIR=/var/cache/trellis-fuzz/target
      # Each clone's path adds its own copy of the workspace crates; start over past 20 GiB.
      if [ -d "$FUZZ_TARGET_DIR" ] && [ "$(du -s --block-size=1G "$FUZZ_TARGET_DIR" | cut -f1)" -gt 20 ]; then
        rm -rf "$FUZZ_TARGET_DIR"
      fi
    fi
    FUZZ_BUILD_FLAGS=(--features fuzz --codegen-units 16)
    [ -n "$FUZZ_TARGET_DIR" ] && FUZZ_BUILD_FLAGS+=(--target-dir "$FUZZ_TARGET_DIR")
    fuzz_seconds=${TRELLIS_FUZZ_SECONDS:-12}
    log "cargo +nightly fuzz build (${#FUZZ_TARGETS[@]} targets, into ${FUZZ_TARGET_DIR:-fuzz/target})"
    (cd fuzz && timeout -k 30 1800 env "${FUZZ_PROFILE[@]}" cargo +nightly fuzz build "${FUZZ_BUILD_FLAGS[@]}")
    fuzz_scratch=$(mktemp -d)
    for t in "${FUZZ_TARGETS[@]}"; do
      log "cargo +nightly fuzz run $t (${fuzz_seconds} s)"
      mkdir -p "$fuzz_scratch/$t"
      fuzz_log="$fuzz_scratch/$t.log"
      # The run's log is long (one line per new coverage); its totals are shown, and on a
      # crash its end (the panic, the input's path).
      if (cd fuzz && timeout -k 30 $((fuzz_seconds + 120)) env "${FUZZ_PROFILE[@]}" cargo +nightly fuzz run "${FUZZ_BUILD_FLAGS[@]}" \
        "$t" "$fuzz_scratch/$t" "corpus/$t" -- -max_total_time="$fuzz_seconds" \
        -rss_limit_mb=2048 -print_final_stats=1) >"$fuzz_log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$fuzz_log" || true
      else
        tail -n 60 "$fuzz_log"
        die "fuzz target $t failed (input saved under fuzz/artifacts/$t/)"
      fi
    done
    rm -rf "$fuzz_scratch"
  else
    die "fuzz: could not install the nightly toolchain or cargo-fuzz (see above); TRELLIS_SKIP_FUZZ=1 runs without libFuzzer"
  fi
fi

# --- 3. test -----------------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; they go first so that nextest's summary closes the run.
  log "cargo test --workspace --doc"
  timeout -k 30 "$TEST_TIMEOUT" cargo test --workspace --doc
  log "cargo nextest run --workspace"
  timeout -k 30 "$TEST_TIMEOUT" cargo nextest run --workspace --no-fail-fast "$@"
else
  log "cargo test --workspace"
  timeout -k 30 "$TEST_TIMEOUT" cargo test --workspace --no-fail-fast "$@"
fi
