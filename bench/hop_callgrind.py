#!/usr/bin/env python3
"""User-space instructions per request of one plain HTTP/1.1 hop: trellis-proxy (as smoke.py
runs it), HAProxy (bench/haproxy.cfg.in, one thread) and the floor forwarder, each under
callgrind behind the same backend, with the same keep-alive load; plus, from the same dumps,
how many times per request each proxy's event loop waited (epoll_wait) and how many tokio task
polls and wake-ups one request costs (call counts of tokio's task harness functions).

    bench/hop_callgrind.py --bin-dir DIR [--requests 2000] [--conns 1] [--only trellis,haproxy]

DIR holds trellis-proxy and bench-floor (bench/smoke.sh builds them into target/smoke/release);
haproxy is the Debian package's. Counts, not time: the same on a busy machine. Writes the dumps
and a `calls-<name>.txt` per proxy (the most called functions per request) to
bench/out/hop-callgrind-<time>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import callgrind
import smoke

BENCH_DIR = Path(__file__).resolve().parent

# Function-name patterns of interest, counted by calls per request.
COUNTED = {
    "epoll_wait": re.compile(r"^(epoll_wait|__GI_epoll_wait|epoll_pwait)$"),
    "task polls": re.compile(r"^tokio::runtime::task::raw::poll(<|$)"),
    "task wake-ups": re.compile(r"^tokio::runtime::task::waker::(wake_by_val|wake_by_ref)(<|$)"),
    "malloc": re.compile(r"^(malloc|__GI___libc_malloc|__libc_malloc)$"),
    "memcpy": re.compile(r"^(__memcpy_avx_unaligned_erms|__memmove_avx_unaligned_erms|"
                         r"memcpy|__memcpy_sse2_unaligned_erms|__memmove_sse2_unaligned_erms)$"),
}


def call_counts(dump: Path) -> dict[str, int]:
    """Calls into each function recorded in a callgrind dump (summed over callers), by name.
    The format names a function once as `cfn=(id) name` and by `(id)` after."""
    names: dict[str, str] = {}
    calls: dict[str, int] = defaultdict(int)
    target = None
    ref = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    for line in dump.read_text(errors="replace").splitlines():
        m = ref.match(line)
        if m:
            ident, name = m.groups()
            if name is not None:
                names[ident] = name
            target = names.get(ident) if line.startswith("cfn=") else None
            continue
        if line.startswith("calls=") and target is not None:
            calls[target] += int(line[6:].split()[0])
            target = None
    return calls


def haproxy_argv(out: Path, port: int, backend: int) -> list[str]:
    cfg = (BENCH_DIR / "haproxy.cfg.in").read_text()
    cfg = (cfg.replace("@LISTEN@", f"127.0.0.1:{port}")
           .replace("@BACKEND@", f"127.0.0.1:{backend}").replace("@DIR@", str(out)))
    path = out / "haproxy.cfg"
    path.write_text(cfg)
    # -db: foreground, no daemon (valgrind follows one process).
    return [shutil.which("haproxy") or "haproxy", "-db", "-f", str(path)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--only", default="trellis,haproxy,floor")
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    out = BENCH_DIR / "out" / f"hop-callgrind-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    procs = smoke.Procs(out)
    vg = callgrind.valgrind(out)
    try:
        backend = smoke.start_backend(procs, bins)
        started = {}
        for kind in args.only.split(","):
            port = smoke.free_port()
            argv = (haproxy_argv(out, port, backend) if kind == "haproxy"
                    else smoke.proxy_argv(kind, bins, port, backend, []))
            started[kind] = (port, procs.start(kind, [*vg, *argv]))
        for kind, (port, proc) in started.items():
            smoke.wait_answering(bins, port, lambda: procs.check(kind, proc), 90)
            smoke.http_load(bins, port, 500, args.conns)
        for kind, (port, proc) in started.items():
            counted = callgrind.measure(out, [proc.pid], lambda: smoke.http_load(
                bins, port, args.requests, args.conns))
            dump, total = counted[proc.pid]
            calls = call_counts(dump)
            n = args.requests
            line = [f"{kind:8} {total / n:10,.0f} instructions/request"]
            for what, pat in COUNTED.items():
                c = sum(v for k, v in calls.items() if pat.search(k))
                line.append(f"{what} {c / n:.2f}")
            print(", ".join(line), flush=True)
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:80]
            (out / f"calls-{kind}.txt").write_text(
                "".join(f"{c / n:9.2f}  {name}\n" for name, c in top))
    except smoke.SetupError as exc:
        print(f"hop_callgrind: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    print(f"hop_callgrind: dumps and per-request call counts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
