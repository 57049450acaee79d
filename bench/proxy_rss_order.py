#!/usr/bin/env python3
"""Write the proxy's code-layout file: the functions the mTLS pair runs, hottest first.

The linker script it writes (crates/proxy/hot-code.ld, passed by crates/proxy/build.rs in
release builds) places these functions together ahead of .text. What a proxy makes resident of its
binary is not the code it runs but the page-cache folios that code lies in (the kernel maps a
whole large folio, or a fault-around window, on one fault): with the code a request runs spread
over the whole 10 MB of .text, most of .text became resident. Packed together, it spans a few
MB and the cold rest (Wasm, config parsing, CLI, start-up only paths) stays unmapped.

    python3 bench/proxy_rss_order.py --proxy-bin target/release/trellis-proxy \
        --control-bin target/release/trellis-control [--out crates/proxy/hot-code.ld]

It runs the pair as bench/proxy_rss.py does (nginx backend, local trellis-control, server and
client trellis-proxy, mTLS, telemetry on), both proxies under callgrind, sends HTTP/1.1 and
HTTP/2 (h2c) traffic through the pair, scrapes /metrics and /config_dump, and lists every
function either proxy executed (mangled names, as the linker sees them), by instructions, then
start-up code. Profile the build the bench scripts make (`cargo build --release -p
trellis-proxy`, alone), and rerun it when the symbols drift (bench/proxy_rss.py prints how many
of the layout's exact names the binary has); a missing name only costs memory, never
correctness.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import bench as b
import floor_set as fs


def start_proxy(procs, vg: list[str], binary: str, out: Path, name: str, argv: list[str]) -> dict:
    """A trellis-proxy under `vg` (callgrind is slow to start: 90 s to be ready)."""
    ready = out / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    proc = procs.start(name, [*vg, binary, *argv, "--admin", "127.0.0.1:0", "--threads", "1",
                              "--ready-file", str(ready)])

    def is_ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        return ready.exists() and ready.stat().st_size > 0

    b.wait_until(is_ready, 90, f"{name} ready file")
    info = json.loads(ready.read_text())
    info["pid"] = proc.pid
    return info


def executed(dumps: list[Path]) -> dict[str, int]:
    """Mangled function name -> self instructions, over callgrind dumps (compressed names)."""
    cost: dict[str, int] = defaultdict(int)
    name_re = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")
    for dump in dumps:
        names: dict[str, str] = {}
        current = None
        skip_next = False  # the cost line after `calls=` is a call's inclusive cost
        for line in dump.read_text(errors="replace").splitlines():
            m = name_re.match(line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                    cost.setdefault(m.group(2), 0)  # callees ran too
                if line.startswith("fn="):
                    current = names.get(m.group(1))
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if current and len(parts) >= 2 and parts[1].isdigit():
                    cost[current] += int(parts[1])
    return cost


LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")

# A wildcard for a name that several instances share is kept when at least this share of the
# group's bytes (in the profiled binary) ran: then the instances that did not run cost at most
# as much again as those that did. Below it the instances that ran are named only exactly.
GROUP_RAN_SHARE = 0.5


def section_patterns(names: list[str], sizes: dict[str, int],
                     wildcards: str = "unique") -> list[str]:
    """Input-section patterns for the functions, in order, without duplicates.

    rustc and cc put each function in its own section named after its symbol:
    `.text.<name>`, or `.text.unlikely.<name>` / `.text.startup.<name>` where LLVM judged it
    cold or start-up only. The hash at the end of a Rust symbol (`17h<16 hex>E`) is fixed by
    the crates' `-C metadata`, which cargo derives from the lock file, the features the build
    command unifies and the profile, not from the source: it stays across edits, but differs
    between `cargo build -p trellis-proxy` and a build that unifies features with other
    packages. So every function comes first by its exact name (packs exactly the code that
    ran, in a build like the profiled one), then with the hash as a wildcard, which matches
    in any build. The linker places a section at the first pattern that matches.

    A wildcard also takes every other instance of a generic function: a legacy symbol names
    the path, not the type arguments (`<&T as Debug>::fmt` has hundreds of instances). In a
    build whose hashes differ from the profile those fill the hot section with code that
    does not run. `sizes` (symbol -> bytes, the profiled binary) says which names several
    symbols share; `wildcards` chooses which wildcards are written:
    - "unique": names one symbol has, and shared names whose instances mostly ran
      (GROUP_RAN_SHARE of the group's bytes); the default;
    - "all": every name (the layout before; pulls unused instances into the hot section);
    - "none": exact names only.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for sym in sizes:
        groups[LEGACY_HASH.sub("17h*E", sym)].append(sym)
    ran = set(names)

    def wildcard_ok(wild: str) -> bool:
        if wildcards == "all":
            return True
        if wildcards == "none":
            return False
        members = groups.get(wild, [])
        if len(members) <= 1:
            return True
        total = sum(sizes[m] for m in members) or 1
        return sum(sizes[m] for m in members if m in ran) / total >= GROUP_RAN_SHARE

    seen: set[str] = set()
    exact, wild = [], []
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9_.$]+", n):
            continue  # not a symbol the linker can see (callgrind's own labels)
        w = LEGACY_HASH.sub("17h*E", n)
        for part, name in ((exact, n), (wild, w)):
            # Exact names only of the profiled binary: older dumps' hashes match nothing.
            if part is exact and n not in sizes:
                continue
            if part is wild and name != n and not wildcard_ok(name):
                continue
            if name not in seen:
                seen.add(name)
                part.append(" ".join(f".text{kind}.{name}"
                                     for kind in ("", ".unlikely", ".startup")))
    return exact + wild


def asm_members(executed_names: set[str], archives: list[Path]) -> list[str]:
    """Archive members whose code is one `.text` (assembly: aws-lc's AES-GCM, SHA, P-256 and
    X25519) and define a function that ran, as `*-<member>` (the cc crate's hash prefix of
    each member's name depends on the source path)."""
    out: list[str] = []
    for archive in archives:
        dump = subprocess.run(["objdump", "-t", str(archive)], capture_output=True,
                              text=True).stdout
        member = None
        for line in dump.splitlines():
            m = re.match(r"^(\S+\.o):\s+file format", line)
            if m:
                member = m.group(1)
                continue
            parts = line.split()
            # `addr flags .text size [.hidden] name`
            if member and ".text" in parts[1:5] and parts[-1] in executed_names:
                pat = "*-" + member.split("-", 1)[-1] if "-" in member else member
                if pat not in out:
                    out.append(pat)
    return out


def linker_script(patterns: list[str], members: list[str]) -> str:
    body = "".join(f"    *({p})\n" for p in patterns)
    body += "".join(f"    {m}(.text)\n" for m in members)
    return (
        "/* Written by bench/proxy_rss_order.py; read by crates/proxy/build.rs. The functions\n"
        "   the mTLS pair ran under callgrind, hottest first, then the assembly objects that\n"
        "   ran, in one output section placed before .text, so that the code a proxy runs\n"
        "   lies together (docs/benchmarks.md, \"Proxy memory: what is resident\").\n"
        "   Regenerate rather than edit. */\n"
        "SECTIONS\n{\n  .text.hot : {\n" + body + "  }\n}\nINSERT BEFORE .text;\n")


def run_pairs(tools, proxy_bin: str, control_bin: str, out: Path, wrap, rate: int,
              secs: float) -> list[dict]:
    """The h1 and h2 mTLS pairs, each proxy started under `wrap(name)`, driven with wrk, oha
    at `rate` rps on 16 connections, h2load, and the admin pages; returns the proxies' ready
    files (with their pids)."""
    procs = b.Processes(out)
    try:
        backend_url, _ = b.start_backend(procs, tools, out)
        backend = backend_url.removeprefix("http://").rstrip("/")
        _, h2_backend = fs.start_h2_backend(procs, tools, out)
        control = fs.start_control(procs, control_bin, out)
        ctl = ["--control", f"http://{control['discovery']}", "--namespace", "default"]
        proxies = []
        urls = {}
        for svc, app in (("mtls", backend), ("h2", h2_backend)):
            server = start_proxy(procs, wrap(f"{svc}-server"), proxy_bin, out, f"{svc}-server", [
                *ctl, "--workload", f"{svc}-server", "--service-account", svc,
                "--label", f"app={svc}", "--inbound", "127.0.0.1:0", "--app", app,
                "--app-port", "80", "--outbound", "none"])
            port = b.free_port()
            client = start_proxy(procs, wrap(f"{svc}-client"), proxy_bin, out, f"{svc}-client", [
                *ctl, "--workload", f"{svc}-client", "--service-account", "bench-client",
                "--label", "app=bench-client", "--inbound", "127.0.0.1:0", "--outbound", "none",
                "--outbound-port", f"127.0.0.1:{port}={svc}.default:80"])
            proxies += [server, client]
            urls[svc] = f"127.0.0.1:{port}"
        b.wait_until(lambda: b.http_get(f"http://{urls['mtls']}/")[0] == 200, 60, "h1 pair")
        b.wait_until(lambda: fs.h2_ok(urls["h2"]), 60, "h2 pair")
        b.run_wrk(tools, f"http://{urls['mtls']}/", 16, 1)
        b.run_oha(tools, f"http://{urls['mtls']}/", rate, 16, secs)
        fs.run_h2load(urls["h2"], 4, secs, out)
        for info in proxies:
            for page in ("metrics", "config_dump", "ready", "live"):
                try:
                    b.http_get(f"http://{info['admin']}/{page}")
                except OSError:
                    pass
        for info in proxies:
            if wrap("x") and wrap("x")[0] == "valgrind":
                subprocess.run(["callgrind_control", "-d", str(info["pid"])],
                               capture_output=True, timeout=60)
        time.sleep(1)
        return proxies
    finally:
        procs.stop_all()


FAULT_LINE = re.compile(r"^\s*([0-9a-f]+) (\S+) \(([^)]*)\)\s+([0-9a-f]+) (\S+) \(([^)]*)\)")


def fault_symbols(perf_files: list[Path], proxy_bin: str) -> list[str]:
    """Functions of the binary whose first run faulted a code page in, natively (mangled)."""
    names: list[str] = []
    for f in perf_files:
        text = subprocess.run(["perf", "script", "--no-demangle", "-i", str(f), "-F",
                               "ip,sym,addr,dso"], capture_output=True, text=True).stdout
        for line in text.splitlines():
            # `addr sym (dso)  ip sym (dso)`: an instruction fetch when the address is the ip.
            m = FAULT_LINE.match(line)
            if m and m.group(1) == m.group(4) and proxy_bin in m.group(6):
                if m.group(5) not in names and m.group(5) != "[unknown]":
                    names.append(m.group(5))
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy-bin", default=str(b.REPO / "target/release/trellis-proxy"))
    ap.add_argument("--control-bin", default=str(b.REPO / "target/release/trellis-control"))
    ap.add_argument("--out", default=str(b.REPO / "crates/proxy/hot-code.ld"))
    ap.add_argument("--requests-seconds", type=float, default=3.0)
    ap.add_argument("--from-dumps", metavar="DIR",
                    help="write the script from the callgrind dumps (and perf page-fault "
                         "records) of an earlier run in DIR")
    ap.add_argument("--wildcards", choices=("unique", "all", "none"), default="unique",
                    help="which hash wildcards to write after the exact names (see "
                         "section_patterns): unique (default), all, none")
    args = ap.parse_args()
    proxy_bin = str(Path(args.proxy_bin).resolve())
    if args.from_dumps:
        d = Path(args.from_dumps)
        return write_script(sorted(d.glob("callgrind.out.*")),
                            fault_symbols(sorted(d.glob("perf.*")), proxy_bin), args.out,
                            proxy_bin, args.wildcards)
    tools = {"oha": b.find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
             "wrk": b.find_tool("wrk", []), "nginx": b.find_tool("nginx", ["/usr/sbin/nginx"]),
             "h2load": b.find_tool("h2load", []), "perf": b.find_tool("perf", [])}
    missing = [k for k, v in tools.items() if not v]
    if missing:
        print(f"proxy_rss_order: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    control_bin = str(Path(args.control_bin).resolve())
    out = b.BENCH_DIR / "out" / time.strftime("%Y%m%dT%H%M%SZ-rss-order", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    # Every function the pairs run, under callgrind (which sees all of them, but emulates no
    # AVX-512, so aws-lc picks other assembly there than on the machine)...
    vg = ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
          "--collect-jumps=no", f"--callgrind-out-file={out}/callgrind.out.%p"]
    run_pairs(tools, proxy_bin, control_bin, out, lambda name: vg, 200, args.requests_seconds)
    # ...then natively at the benchmark's rate, recording where code pages fault in: the
    # CPU-dispatched assembly, and anything the slow run did not reach.
    run_pairs(tools, proxy_bin, control_bin, out,
              lambda name: ["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d",
                            "-o", str(out / f"perf.{name}"), "--"],
              5000, args.requests_seconds)
    return write_script(sorted(out.glob("callgrind.out.*")),
                        fault_symbols(sorted(out.glob("perf.*")), proxy_bin), args.out,
                        proxy_bin, args.wildcards)


def symbol_sizes(binary: str) -> dict[str, int]:
    """Code symbol -> size in bytes (0 when nm gives none), of the profiled binary."""
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True,
                         text=True, check=True)
    sizes: dict[str, int] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = int(parts[1], 16)
        elif len(parts) == 3 and parts[1] in "tTwW":
            sizes.setdefault(parts[2], 0)
    return sizes


def write_script(dumps: list[Path], faulted: list[str], dest: str, binary: str,
                 wildcards: str) -> int:
    if not dumps:
        print("proxy_rss_order: no callgrind dumps", file=sys.stderr)
        return 2
    cost = executed(dumps)
    # The natively faulted functions go last: callgrind's are the hot path.
    patterns = section_patterns(sorted(cost, key=lambda n: (-cost[n], n)) + faulted,
                                symbol_sizes(binary), wildcards)
    archives = sorted(b.REPO.glob("target/**/build/aws-lc-sys-*/out/*.a"))
    members = asm_members(set(cost) | set(faulted), archives)
    Path(dest).write_text(linker_script(patterns, members))
    print(f"{len(cost)} functions from {len(dumps)} dumps, {len(faulted)} from page faults "
          f"-> {len(patterns)} patterns and "
          f"{len(members)} assembly objects ({len(archives)} aws-lc archives) in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
