#!/usr/bin/env python3
"""What is resident in a trellis-proxy of the mTLS pair after 5,000 rps, and why (issue 14).

A quick, repeatable stand-in for the peak-RSS row of `bench/run.sh --set floor` (which takes
about 10 minutes): it starts the same pieces as bench/floor_set.py (nginx backend, a local
trellis-control, a server and a client trellis-proxy registered with it, every default on:
mTLS between them, metrics, retry budget, peak-EWMA, `--threads 1`), warms the pair up with
wrk as the floor set does, resets each proxy's peak RSS (`clear_refs` 5), runs oha at 5,000 rps
on 16 connections, and prints per proxy:

- VmHWM (what the floor set reports as peak RSS), RssAnon and RssFile;
- /proc/<pid>/smaps per mapping (the binary's segments, libc, heap, stacks, anonymous mmaps);
- the binary's resident pages (present bits of /proc/<pid>/pagemap, so the pages this process
  has mapped, which is what RSS counts) by ELF section and, for code, by crate (symbols from
  `nm`, each resident page's bytes shared out over the symbols in it).

    python3 bench/proxy_rss.py --proxy-bin target/release/trellis-proxy \
        --control-bin target/release/trellis-control [--seconds 5] [--json out.json]

Needs root for pagemap (otherwise the per-section split is skipped), nginx, wrk and oha (as
bench/run.sh installs them). The control plane's build does not matter (a debug one is fine).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import bench as b
import floor_set as fs

PAGE = os.sysconf("SC_PAGE_SIZE")
# The one build command for a release trellis-proxy in every bench script (bench/run.sh,
# bench/control.sh): the Rust symbol hashes crates/proxy/hot-code.ld names exactly depend on
# the features a build unifies, so the proxy is built alone, never in one command with other
# packages (which would unify, e.g., serde's and tracing's features with theirs).
PROXY_BUILD = ["cargo", "build", "--release", "-p", "trellis-proxy"]
KIB = 1024


# ---------------------------------------------------------------------------------------------
# /proc readers


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def smaps(pid: int) -> list[dict]:
    """Mappings of /proc/<pid>/smaps: start, end, perms, offset, path, Rss and Anonymous KiB."""
    maps: list[dict] = []
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$")
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = head.match(line)
        if m:
            maps.append({"start": int(m.group(1), 16), "end": int(m.group(2), 16),
                         "perms": m.group(3), "offset": int(m.group(4), 16),
                         "path": m.group(5).strip(), "Rss": 0, "Anonymous": 0})
        elif maps and line.startswith(("Rss:", "Anonymous:")):
            key, _, rest = line.partition(":")
            maps[-1][key] = int(rest.split()[0])
    return maps


def present_pages(pid: int, start: int, end: int) -> list[int]:
    """Addresses of the pages in [start, end) that are mapped in the process (pagemap bit 63)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read((end - start) // PAGE * 8)
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    return [start + i * PAGE for i, w in enumerate(words) if w >> 63]


def mapping_label(m: dict, binary: str) -> str:
    path = m["path"]
    if path == binary:
        if m["perms"] == "r--p":
            return ("binary read-only (headers, .rela.dyn, .rodata, .eh_frame)" if not m["offset"]
                    else "binary RELRO (.data.rel.ro, .got: relocated, private)")
        return {"r-xp": "binary code (.text)", "rw-p": "binary .data"}.get(
            m["perms"], f"binary {m['perms']}")
    if path.startswith("/"):
        return Path(path).name.split(".so")[0] + ".so " + m["perms"]
    if path in ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]"):
        return path
    return f"anonymous {m['perms']}"


# ---------------------------------------------------------------------------------------------
# The binary: segments, sections, symbols


def load_segments(binary: str) -> list[tuple[int, int, int]]:
    """(file offset, vaddr, file size) of each PT_LOAD."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True,
                         check=True).stdout
    segs = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            segs.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))
    return segs


def sections(binary: str) -> list[tuple[int, int, str]]:
    """(vaddr, size, name) of each allocated section."""
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True,
                         check=True).stdout
    secs = []
    pat = re.compile(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*A\S*)")
    for line in out.splitlines():
        m = pat.search(line)
        if m and int(m.group(2), 16):
            secs.append((int(m.group(2), 16), int(m.group(3), 16), m.group(1)))
    return sorted(secs)


def crate_of(name: str) -> str:
    """The crate a (demangled) symbol's code belongs to, as far as its name says."""
    if name.startswith("aws_lc_") or name.startswith("_aws_lc") or name.startswith("aws_lc"):
        return "aws-lc (C)"
    n = name
    # Monomorphised helpers are charged to the type they were made for.
    for wrap in ("core::ptr::drop_in_place<", "<core::pin::Pin<", "core::ptr::drop_in_place::<"):
        if n.startswith(wrap):
            n = n[len(wrap):]
    n = n.lstrip("<&*[( ").removeprefix("mut ").removeprefix("dyn ")
    if "::" not in n:
        return "C / runtime"
    head = n.split("::", 1)[0]
    return head if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head) else "other"


def symbols(binary: str) -> list[tuple[int, int, str]]:
    """(vaddr, size, crate) of each sized symbol in text/rodata, sorted by address."""
    out = subprocess.run(["nm", "-S", "-C", "--defined-only", binary], capture_output=True,
                         text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTrRdDbB":
            try:
                syms.append((int(parts[0], 16), int(parts[1], 16), crate_of(parts[3])))
            except ValueError:
                continue
    return sorted(syms)


def binary_breakdown(pid: int, binary: str, maps: list[dict]) -> dict:
    """The binary's resident bytes by section and, for text, by crate."""
    segs = load_segments(binary)
    secs = sections(binary)
    syms = symbols(binary)
    sym_starts = [s[0] for s in syms]
    by_section: dict[str, int] = defaultdict(int)
    by_crate: dict[str, float] = defaultdict(float)
    size_by_crate: dict[str, int] = defaultdict(int)
    # Code: .text, and .text.hot where crates/proxy/hot-code.ld gathered the code that runs.
    code = [(a, a + n) for a, n, name in secs if name.startswith(".text")]
    hot = next(((a, a + n) for a, n, name in secs if name == ".text.hot"), None)
    resident_code: list[int] = []

    def in_code(lo: int, hi: int) -> list[tuple[int, int]]:
        return [(max(lo, a), min(hi, e)) for a, e in code if a < hi and lo < e]

    for addr, size, crate in syms:
        if in_code(addr, addr + 1):
            size_by_crate[crate] += size
    for m in maps:
        if m["path"] != binary:
            continue
        seg = next((s for s in segs if s[0] // PAGE * PAGE <= m["offset"] < s[0] + s[2]), None)
        if seg is None:
            continue
        for page in present_pages(pid, m["start"], m["end"]):
            vaddr = seg[1] + (m["offset"] + page - m["start"] - seg[0])
            lo, hi = vaddr, vaddr + PAGE
            # Sections in this page, by overlap.
            for sa, ss, name in secs:
                ov = min(hi, sa + ss) - max(lo, sa)
                if ov > 0:
                    by_section[name] += ov
            spans = in_code(lo, hi)
            if not spans:
                continue
            resident_code.append(lo)
            # With a hot section, code resident outside it is what the layout missed.
            where = "" if not hot or hot[0] <= lo < hot[1] else " (outside .text.hot)"
            # Text bytes of this page, shared out over the symbols that overlap it.
            i = max(bisect.bisect_right(sym_starts, lo) - 1, 0)
            covered = 0
            while i < len(syms) and syms[i][0] < hi:
                sa, ss, crate = syms[i]
                ov = min(hi, sa + ss) - max(lo, sa)
                if ov > 0:
                    by_crate[crate + where] += ov
                    covered += ov
                i += 1
            by_crate["(no symbol, padding)"] += max(0, sum(e - a for a, e in spans) - covered)
    return {"by_section_kib": {k: round(v / KIB) for k, v in sorted(
                by_section.items(), key=lambda kv: -kv[1])},
            "text_by_crate_kib": {k: round(v / KIB) for k, v in sorted(
                by_crate.items(), key=lambda kv: -kv[1])},
            "text_size_by_crate_kib": {k: round(v / KIB) for k, v in sorted(
                size_by_crate.items(), key=lambda kv: -kv[1])},
            "section_size_kib": {name: round(size / KIB) for _, size, name in secs},
            "resident_code_pages": resident_code}


def layout_match(binary: str, script: Path) -> tuple[int, int] | None:
    """(exact Rust names of the layout script present in the binary, exact Rust names in it):
    how far the binary's symbol hashes match the build the layout was profiled from."""
    if not script.is_file():
        return None
    exact = set(re.findall(r"\(\.text\.(_ZN[A-Za-z0-9_.$]*17h[0-9a-f]{16}E) ",
                           script.read_text()))
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True)
    present = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    return len(exact & present), len(exact)


# ---------------------------------------------------------------------------------------------


def report(label: str, pid: int, binary: str, top: int) -> dict:
    st = status(pid)
    maps = smaps(pid)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for m in maps:
        g = groups[mapping_label(m, binary)]
        g[0] += m["Rss"]
        g[1] += m["Anonymous"]
        g[2] += (m["end"] - m["start"]) // KIB
    res = {"status_kib": st, "mappings_kib": {k: {"rss": v[0], "anon": v[1], "size": v[2]}
                                               for k, v in groups.items()}}
    print(f"\n== {label} (pid {pid}): VmHWM {st['VmHWM'] / KIB:.2f} MiB, RssAnon "
          f"{st['RssAnon'] / KIB:.2f} MiB, RssFile {st['RssFile'] / KIB:.2f} MiB, "
          f"threads {st['Threads']}")
    print(f"  {'mapping':44} {'rss KiB':>8} {'anon KiB':>9} {'size KiB':>9}")
    for k, v in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        if v[0]:
            print(f"  {k:44} {v[0]:8} {v[1]:9} {v[2]:9}")
    if os.geteuid() == 0:
        bd = binary_breakdown(pid, binary, maps)
        res["binary"] = bd
        print("  binary's resident bytes by section (KiB; section size):")
        for k, v in bd["by_section_kib"].items():
            print(f"    {k:28} {v:6} / {bd['section_size_kib'].get(k, 0)}")
        print(f"  resident .text by crate (KiB; the crate's .text size), top {top}:")
        for k, v in list(bd["text_by_crate_kib"].items())[:top]:
            print(f"    {k:28} {v:6} / {bd['text_size_by_crate_kib'].get(k, 0)}")
    else:
        print("  (not root: no pagemap, no per-section split)")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy-bin", default=str(b.REPO / "target/release/trellis-proxy"))
    ap.add_argument("--control-bin", default=str(b.REPO / "target/release/trellis-control"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--top", type=int, default=25, help="crates listed per proxy")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--max-mib", type=float,
                    help="exit 1 when a proxy's VmHWM is above this (issue 14's target: 10)")
    ap.add_argument("--build", action="store_true",
                    help=f"first run `{' '.join(PROXY_BUILD)}` (the bench scripts' proxy build)")
    ap.add_argument("--proxy-env", action="append", default=[], metavar="K=V",
                    help="environment for the proxies (e.g. GLIBC_TUNABLES=...), repeatable")
    args = ap.parse_args()
    if args.build:
        subprocess.run(PROXY_BUILD, cwd=b.REPO, check=True)
    tools = {"oha": b.find_tool("oha", [os.path.expanduser("~/.local/oha/bin/oha")]),
             "wrk": b.find_tool("wrk", []), "nginx": b.find_tool("nginx", ["/usr/sbin/nginx"])}
    missing = [k for k, v in tools.items() if not v]
    missing += [x for x in (args.proxy_bin, args.control_bin) if not os.access(x, os.X_OK)]
    if missing:
        print(f"proxy_rss: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    proxy_bin = str(Path(args.proxy_bin).resolve())
    match = layout_match(proxy_bin, b.REPO / "crates/proxy/hot-code.ld")
    if match:
        # Exact names match only when the build's crate metadata (lock file, unified features,
        # profile) equals the profiled build's; otherwise only the wildcards place the code.
        print(f"layout: {match[0]} of the {match[1]} exact names in crates/proxy/hot-code.ld "
              f"are in this binary ({100 * match[0] / max(match[1], 1):.0f} %; build with "
              f"`{' '.join(PROXY_BUILD)}` to match)")
    out = b.BENCH_DIR / "out" / time.strftime("%Y%m%dT%H%M%SZ-rss", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    procs = b.Processes(out)
    if args.proxy_env:
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.proxy_env))
        start = procs.start
        procs.start = lambda name, argv, env_=None: start(
            name, argv, env if argv[0] == proxy_bin else env_)
    results: dict = {"proxy_bin": proxy_bin, "rate": args.rate, "conns": args.conns,
                     "seconds": args.seconds, "proxies": {}}
    try:
        backend_url, _ = b.start_backend(procs, tools, out)
        backend = backend_url.removeprefix("http://").rstrip("/")
        control = fs.start_control(procs, str(Path(args.control_bin).resolve()), out)
        client, server, addr = fs.mesh_pair(procs, proxy_bin, control, out, "mtls", backend)
        url = f"http://{addr}/"
        b.wait_until(lambda: b.http_get(url) == (200, b"x" * b.BODY_BYTES), 15, "the pair")
        hs = b.metric_sum(server["admin"], "trellis_tls_handshakes_total", direction="inbound")
        if hs <= 0:
            raise RuntimeError("the server proxy made no inbound TLS handshake: not mTLS")
        pids = {"client": int(client["pid"]), "server": int(server["pid"])}
        b.run_wrk(tools, url, 16, 1)  # warm-up, as the floor set does
        for pid in pids.values():
            b.reset_peak_rss(pid)
        load = b.run_oha(tools, url, args.rate, args.conns, args.seconds)
        procs.check_alive()
        print(f"oha: {load['rps']:.0f} rps, {load['requests']} answered, "
              f"{load['non_200'] + load['errors']} failed, p50 {b.fmt(load['p50_ms'], 3)} ms")
        results["load"] = load
        for label, pid in pids.items():
            results["proxies"][label] = report(label, pid, proxy_bin, args.top)
    finally:
        procs.stop_all()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    over = {k: v["status_kib"]["VmHWM"] / KIB for k, v in results["proxies"].items()
            if args.max_mib and v["status_kib"]["VmHWM"] / KIB > args.max_mib}
    if over:
        print(f"proxy_rss: peak RSS above {args.max_mib} MiB: " +
              ", ".join(f"{k} {v:.2f} MiB" for k, v in over.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
