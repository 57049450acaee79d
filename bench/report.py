"""Summaries and rendering for the Trellis benchmarks: results JSON in, docs/benchmarks.md and
docs/benchmarks.png out.

Pure over the results dict that bench.py writes (no processes, no sockets), so that
``bench.py --render-only FILE`` can redo the docs without measuring again. matplotlib is
optional: without it the plot is skipped and the doc says so.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

EMPTY_LABEL = re.compile(r',?[a-z_]+=""')
OUTCOME = re.compile(r'outcome="([^"]*)"')


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------
# Summaries


def summarize(results: dict) -> dict:
    """Medians over rounds, per scenario and path; added latency from paired per-round deltas."""
    runs = results["runs"]
    paths = results["paths"]
    summary = {}
    for sc in results["scenarios"]:
        name = sc["name"]
        by_path = {p["name"]: [r for r in runs if r["scenario"] == name and r["path"] == p["name"]]
                   for p in paths}
        direct = {r["round"]: r for r in by_path.get("direct", [])}
        haproxy = {r["round"]: r for r in by_path.get("haproxy", [])}
        direct_rps = median(r["rps"] for r in by_path.get("direct", []))
        out = {}
        for p in paths:
            rs = by_path[p["name"]]
            if not rs:
                continue
            row = {
                "hops": p["hops"],
                "rounds": len(rs),
                "requests": sum(r["requests"] for r in rs),
                "non_200": sum(r["non_200"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "rps": median(r["rps"] for r in rs),
                "loadgen_cpu_s": median(r["loadgen_cpu_s"] for r in rs),
                "compilers_running_runs": sum(1 for r in rs if r["compilers_running"]),
            }
            for q in ("p50", "p90", "p99"):
                row[f"{q}_ms"] = median(r[f"{q}_ms"] for r in rs)
                if p["hops"]:
                    deltas = [
                        (r[f"{q}_ms"] - direct[r["round"]][f"{q}_ms"]) * 1e3 / p["hops"]
                        for r in rs
                        if r["round"] in direct and r[f"{q}_ms"] is not None
                        and direct[r["round"]][f"{q}_ms"] is not None
                    ]
                    row[f"added_{q}_us_per_hop"] = median(deltas)
            # A one-hop path against HAProxy within each round (both ran in the same minute,
            # so the machine's drift between rounds cancels): the median of the differences.
            if p["hops"] == 1 and p["name"] != "haproxy" and haproxy:
                vs = [(r["p50_ms"] - haproxy[r["round"]]["p50_ms"]) * 1e3 for r in rs
                      if r["round"] in haproxy and r["p50_ms"] is not None
                      and haproxy[r["round"]]["p50_ms"] is not None]
                if vs:
                    row["p50_minus_haproxy_paired_us"] = median(vs)
            labels = [label for label, _ in p["proxies"]]
            row["cpu_us_per_req"] = {l: median(r["cpu_us_per_req"][l] for r in rs) for l in labels}
            row["sched_cpu_us_per_req"] = {
                l: median(r["sched_cpu_us_per_req"][l] for r in rs) for l in labels}
            row["peak_rss_mib"] = {l: max(r["peak_rss_kib"][l] for r in rs) / 1024 for l in labels}
            row["backend_cpu_us_per_req"] = median(r["cpu_us_per_req"]["backend"] for r in rs)
            if direct_rps:
                row["rps_vs_direct"] = row["rps"] / direct_rps
            out[p["name"]] = row
        summary[name] = out
    return summary


# ---------------------------------------------------------------------------------------------
# Rendering: docs/benchmarks.md and the plot

PATH_LABEL = {
    "direct": "direct (no proxy)",
    "trellis-1": "trellis, 1 hop",
    "trellis-2": "trellis, 2 hops (client + server sidecar)",
    "haproxy": "HAProxy, 1 hop",
    "nginx": "nginx, 1 hop",
}


def fmt(v, nd=0, suffix=""):
    if v is None:
        return "n/a"
    return f"{v:,.{nd}f}{suffix}"


def per_proxy(d: dict, nd: int) -> str:
    if not d:
        return "–"
    if len(d) == 1:
        return fmt(next(iter(d.values())), nd)
    return " + ".join(f"{fmt(v, nd)} ({k.split('-')[-1]})" for k, v in d.items())


def path_row(label: str, r: dict, rate: float | None,
             added: tuple[str, ...] = ("p50", "p90", "p99")) -> str:
    """One path's row of a scenario table: achieved rps (flagged when under 95 % of the offered
    `rate`; None for a closed loop, which offers none), latency, the `added` per-hop quantiles
    (– for a path without hops), CPU and RSS per proxy, and failed requests. Shared by this
    report's tables and floor_report.py's."""
    per_hop = "–" if not r["hops"] else " / ".join(
        fmt(r.get(f"added_{q}_us_per_hop")) for q in added)
    short = " (below offered rate)" if rate and r["rps"] < 0.95 * rate else ""
    return (f"| {label} | {fmt(r['rps'])}{short} | "
            f"{fmt(r['p50_ms'], 3)} / {fmt(r['p90_ms'], 3)} / {fmt(r['p99_ms'], 3)} | "
            f"{per_hop} | {per_proxy(r['cpu_us_per_req'], 1)} | "
            f"{per_proxy(r['peak_rss_mib'], 1)} | {r['non_200'] + r['errors']} |")


def targets(summary: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; verdicts say 'not measured' when a path is missing."""
    rows = []
    for sc in ("open-1k", "open-5k"):
        s = summary.get(sc, {})
        t, h = s.get("trellis-1"), s.get("haproxy")
        if t and h:
            tv, hv = t.get("added_p50_us_per_hop"), h.get("added_p50_us_per_hop")
            paired = t.get("p50_minus_haproxy_paired_us")
            rows.append((f"p50 added per hop ≤ HAProxy's ({sc})",
                         f"trellis {fmt(tv)} µs vs HAProxy {fmt(hv)} µs"
                         + ("" if paired is None else
                            f" (trellis − HAProxy within each round, median: {paired:+.1f} µs)"),
                         "met" if tv is not None and hv is not None and tv <= hv else "NOT met"))
            tc, hc = t["cpu_us_per_req"].get("trellis"), h["cpu_us_per_req"].get("haproxy")
            rows.append((f"CPU per request ≤ HAProxy's ({sc})",
                         f"trellis {fmt(tc, 1)} µs vs HAProxy {fmt(hc, 1)} µs",
                         "met" if tc is not None and hc is not None and tc <= hc else "NOT met"))
        else:
            rows.append((f"trellis vs HAProxy ({sc})", "trellis path not measured", "not measured"))
    s = summary.get("open-5k", {})
    peaks = {}
    for pname in ("trellis-1", "trellis-2"):
        if pname in s:
            for label, v in s[pname]["peak_rss_mib"].items():
                peaks[f"{label} ({pname})"] = v
    if peaks:
        worst = max(peaks.values())
        rows.append(("trellis-proxy peak RSS < 15 MiB at 5,000 rps",
                     ", ".join(f"{k}: {v:.1f} MiB" for k, v in peaks.items()),
                     "met" if worst < 15 else "NOT met"))
    else:
        rows.append(("trellis-proxy peak RSS < 15 MiB at 5,000 rps", "trellis not measured",
                     "not measured"))
    return rows


# Fixed text: how to find where a hop's instructions go (bench/profile.sh).
PROFILING_MD = """## How to profile

Wall-clock CPU time is noisy on a shared machine; instruction counts are not. `bench/profile.sh`
runs the benchmark's one-hop path (the same nginx backend, `trellis-proxy --threads 1` with an
explicit outbound port, plaintext HTTP/1.1 keep-alive) with the proxy under callgrind, warms up
with 2,000 requests, zeroes the counters, sends N requests with oha and prints user-space
instructions per request; `--proxy haproxy` measures HAProxy (`bench/haproxy.cfg.in`) the same
way, and `--syscalls` counts system calls per request with `strace -c -f` instead.

```sh
cargo build --release -p trellis-proxy        # release keeps line tables (debug = "line-tables-only")
bench/profile.sh --requests 10000 --conns 1   # or --conns 16; --bin PATH for another build
bench/profile.sh --proxy haproxy --requests 10000
bench/profile.sh --syscalls --requests 5000
# where the instructions go (the dump path is printed):
callgrind_annotate --auto=no --inclusive=yes --threshold=100 bench/out/profile-*/callgrind.out.*.1 | less
```

By hand, the same thing is `valgrind --tool=callgrind --dump-instr=no trellis-proxy ...`, then
`callgrind_control -z <pid>` after the warm-up and `callgrind_control -d <pid>` after the
measured requests. `perf stat -e instructions` is not available on this VM (no PMU).

Instructions are not cycles: to see user and system CPU per request of several builds side by
side, `bench/cpu_ab.py` runs each (and HAProxy) behind the same backend, loads them in turn
with closed-loop oha for a few rounds and reads utime and stime from `/proc/<pid>/stat`:

```sh
bench/cpu_ab.py --bin old=/tmp/trellis-proxy.old --bin new=target/release/trellis-proxy \\
    --haproxy --rounds 4 --seconds 5 --conns 16
```"""


def render_markdown(results: dict, summary: dict, png_name: str | None) -> str:
    m = results["machine"]
    cfg = results["config"]
    order = [p["name"] for p in results["paths"]]
    lines = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add("_Generated by `bench/bench.py` (`bench/report.py`) from "
        f"`{results['results_file']}`; do not edit by hand: rerun the benchmark._")
    add("")
    add("What one Trellis proxy hop costs a request, next to HAProxy and nginx doing the same job "
        "(one plain HTTP/1.1 L7 hop with keep-alive to the upstream), on one machine, on loopback.")
    add("")
    add(f"Run: {results['started_utc']} to {results['finished_utc']} UTC, "
        f"{cfg['rounds']} interleaved rounds, {cfg['open_seconds']} s per open-loop run, "
        f"{cfg['closed_seconds']} s per closed-loop run.")
    if cfg.get("quick"):
        add("")
        add("**This is a `--quick` smoke run: too few and too short runs to quote.**")
    add("")
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")
    for t, meas, verdict in targets(summary):
        add(f"| {t} | {meas} | **{verdict}** |")
    add("")
    for note in results.get("notes", []):
        add(f"- {note}")
    if results.get("notes"):
        add("")

    for sc in results["scenarios"]:
        s = summary.get(sc["name"], {})
        add(f"## {sc['title']}")
        add("")
        if sc["kind"] == "open":
            add("| path | achieved rps | p50 / p90 / p99 (ms) | added per hop p50 / p90 / p99 (µs) "
                "| CPU µs per request, per proxy | peak RSS MiB, per proxy | failed |")
            add("|---|---:|---:|---:|---:|---:|---:|")
            for name in order:
                if r := s.get(name):
                    add(path_row(PATH_LABEL.get(name, name), r, sc["rate"]))
        else:
            add("| path | max rps (median) | vs direct | p50 / p99 at max (ms) "
                "| CPU µs per request, per proxy | peak RSS MiB, per proxy | failed |")
            add("|---|---:|---:|---:|---:|---:|---:|")
            for name in order:
                r = s.get(name)
                if not r:
                    continue
                add(f"| {PATH_LABEL.get(name, name)} | {fmt(r['rps'])} | "
                    f"{fmt(r.get('rps_vs_direct'), 2)}× | "
                    f"{fmt(r['p50_ms'], 3)} / {fmt(r['p99_ms'], 3)} | "
                    f"{per_proxy(r['cpu_us_per_req'], 1)} | {per_proxy(r['peak_rss_mib'], 1)} | "
                    f"{r['non_200'] + r['errors']} |")
        add("")

    if png_name:
        add(f"![latency added per hop, CPU per request, max throughput relative to direct]({png_name})")
        add("")

    add("## Reading these numbers")
    add("")
    add("- Everything (load generator, backend, proxies) shares this machine's cores over "
        "loopback, so absolute numbers are higher and noisier than on dedicated hardware; "
        "what carries over is the comparison between proxies measured in the same rounds.")
    add("- At 1,000 rps on one connection every request wakes every process in the path, so "
        "CPU per request is mostly the fixed cost of a wake-up and its syscalls; at 5,000 rps "
        "on 16 connections events batch and the cost per request falls. Both are what a "
        "sidecar pays in practice at those rates.")
    add("- p99 on a small shared machine is mostly scheduling delay (a process waiting for a "
        "core), which is why it varies more between rounds than p50; read p50 and CPU first.")
    add("- Peak RSS depends on how a proxy allocates up front as much as on the load: HAProxy "
        "sizes its buffer pools at start, nginx and trellis grow with connections.")
    add("")
    if results.get("observations"):
        add("## Observations from this run")
        add("")
        add(results["observations"].strip())
        add("")
    add("## How it was measured")
    add("")
    add("Command (from the repository root):")
    add("")
    add("```sh")
    add(results["command"])
    add("```")
    add("")
    add("`bench/run.sh` builds `target/release/trellis-proxy` (`cargo build --release --bin "
        "trellis-proxy`), installs oha with `cargo install oha --locked --root ~/.local/oha` "
        "when it is not on the PATH, and installs the Debian packages `haproxy`, `nginx-light` "
        "and `wrk` with apt-get when they are missing; then it runs `bench/bench.py`. "
        "`--quick` is a one-minute smoke run that writes to `bench/out/` instead of `docs/`.")
    add("")
    add("- **Backend**, the same for every path: nginx, one process, answering `GET /` with a "
        "1 KiB body from memory (`bench/nginx-backend.conf.in`).")
    add("- **Paths**: *direct* goes to the backend; *trellis, 1 hop* is one `trellis-proxy` "
        "whose explicit outbound port targets the backend; *trellis, 2 hops* is a client "
        "proxy whose explicit outbound port targets a server proxy's inbound listener, which "
        "forwards to the backend as its app (no control plane, so no mTLS between them); "
        "*HAProxy* is `mode http`, `nbthread 1`, `http-reuse always` "
        "(`bench/haproxy.cfg.in`); *nginx* is one process, `proxy_http_version 1.1`, upstream "
        "keepalive (`bench/nginx-proxy.conf.in`). Every proxy runs one thread "
        "(`trellis-proxy --threads 1`). No access logs anywhere.")
    add("- **Load**: open loop with oha at a fixed rate (`-q`), with `--latency-correction` so "
        "that a stalled response is charged for the requests queued behind it (no coordinated "
        "omission); closed loop with `wrk -t1 -c16 --latency` for maximum throughput.")
    add(f"- **Interleaving**: {cfg['rounds']} rounds; in each round every scenario runs every path "
        "once, and the path order rotates from round to round, so slow drift on the machine "
        "spreads over all paths.")
    add("- **Latency added per hop** = (path percentile − direct percentile) / hops, computed "
        "within each round against that round's direct run, then the median over rounds. "
        "Absolute percentiles are medians over rounds. Percentiles are oha's (open loop) or "
        "wrk's (closed loop) over all requests of a run.")
    add("- **CPU µs per request** = (utime + stime of the proxy process, from `/proc/<pid>/stat`, "
        f"after − before the run) / requests answered; the clock tick is 1/{m['clk_tck']} s, so "
        "one run's resolution is one tick divided by its requests. Median over rounds. For two "
        "hops each proxy is listed (client, server).")
    s5 = summary.get("open-5k", {})
    cross = [f"{label} {fmt(r['cpu_us_per_req'][label], 1)} (stat) vs "
             f"{fmt(r['sched_cpu_us_per_req'].get(label), 1)} (schedstat)"
             for name, r in s5.items() for label in r["cpu_us_per_req"]
             if "sched_cpu_us_per_req" in r]
    if cross:
        add("  Cross-check at 5,000 rps with the nanosecond on-CPU time of all threads from "
            "`/proc/<pid>/task/*/schedstat`, µs per request: " + "; ".join(cross) + ".")
    add("- **Peak RSS** = `VmHWM` from `/proc/<pid>/status`, reset before each run by writing 5 "
        "to `/proc/<pid>/clear_refs`, so it is the peak under that scenario's load; the table "
        "shows the maximum over rounds.")
    add("- **Max rps vs direct** = median closed-loop rps of the path / median of direct. All "
        "processes (load generator, proxies, backend) share the same cores, so this measures "
        "how much CPU the hop takes away as much as how fast it is.")
    tm = results.get("trellis_metrics") or {}
    if tm:
        add("- **What the trellis proxies counted** over the whole run (warm-up included), from "
            "their admin `/metrics`:")
        for label, counters in tm.items():
            # Empty labels (no control plane, so no workload names) only make the line long.
            shown = ", ".join(f"`{EMPTY_LABEL.sub('', k).replace('{,', '{')}` {v:,.0f}"
                              for k, v in counters.items()) or "nothing"
            add(f"  - {label}: {shown}")
    add("")
    add(PROFILING_MD)
    add("")
    add("## Machine")
    add("")
    add(f"- nproc: {m['nproc']}; CPU: {m['cpu_model']}; memory: {m['mem_total_mib']:,} MiB")
    add(f"- kernel: {m['kernel']}")
    add(f"- trellis commit: {m['trellis_commit']}; {m['rustc']}")
    add(f"- {m['haproxy']}")
    add(f"- {m['nginx']}")
    add(f"- {m['oha']}; {m['wrk']}")
    add(f"- Python {m['python']}")
    q = results.get("quiet", {})
    if q:
        add(f"- Quiet check before the run: {q.get('verdict')}")
    busy = sum(r["compilers_running"] > 0 for r in results["runs"])
    add(f"- Runs during which a `rustc` or `cargo` process was running: {busy} of "
        f"{len(results['runs'])}; 1-minute load average over the runs: median "
        f"{fmt(median(r['loadavg_1m'] for r in results['runs']), 2)}, max "
        f"{fmt(max((r['loadavg_1m'] for r in results['runs']), default=None), 2)}.")
    busy_share = [r["host_busy"] for r in results["runs"] if "host_busy" in r]
    if busy_share:
        add(f"- All cores busy during a run (from `/proc/stat`), median over runs: "
            f"{fmt(median(busy_share) * 100)} %; hypervisor steal: "
            f"{fmt(median(r['host_steal'] for r in results['runs']) * 100, 1)} % "
            f"(max {fmt(max(r['host_steal'] for r in results['runs']) * 100, 1)} %).")
    add("")
    add("Raw per-run numbers: `" + results["results_file"] + "`.")
    add("")
    return "\n".join(lines)


def render_plot(results: dict, summary: dict, png: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    order = [p["name"] for p in results["paths"] if p["hops"]]
    colors = {"trellis-1": "#2a7ab9", "trellis-2": "#8fbde3", "haproxy": "#d9822b",
              "nginx": "#3a9c4b"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))

    def bars(ax, sc, keys, title, ylabel):
        s = summary.get(sc, {})
        width = 0.8 / max(len(order), 1)
        for i, name in enumerate(order):
            r = s.get(name)
            if not r:
                continue
            vals = [r.get(k) for k in keys]
            xs = [j + i * width for j in range(len(keys))]
            # Log scale: p99 is tens of times p50. A median below 1 µs (noise, or a hop
            # faster than direct) is drawn at 1 µs and labelled with its real value.
            ax.bar(xs, [max(v or 0, 1) for v in vals], width, label=PATH_LABEL.get(name, name),
                   color=colors.get(name))
            for x, v in zip(xs, vals):
                if v is not None:
                    ax.text(x, max(v, 1), f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks([j + width * (len(order) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels([k.split("_")[1] for k in keys])
        ax.set_title(title)
        ax.set_ylabel(ylabel)

    lat = ["added_p50_us_per_hop", "added_p90_us_per_hop", "added_p99_us_per_hop"]
    bars(axes[0][0], "open-1k", lat, "Latency added per hop, 1,000 rps / 1 conn",
         "µs per hop (log)")
    bars(axes[0][1], "open-5k", lat, "Latency added per hop, 5,000 rps / 16 conns",
         "µs per hop (log)")

    # CPU per request (summed over the proxies of a path, divided by hops) and peak RSS.
    ax = axes[1][0]
    names, cpu1k, cpu5k, cpumax = [], [], [], []
    for name in order:
        row = [summary.get(sc, {}).get(name) for sc in ("open-1k", "open-5k", "max")]
        if not any(row):
            continue
        names.append(name)
        for lst, r in zip((cpu1k, cpu5k, cpumax), row):
            lst.append(sum(r["cpu_us_per_req"].values()) / r["hops"] if r else 0)
    xs = range(len(names))
    ax.bar([x - 0.27 for x in xs], cpu1k, 0.27, label="1k rps", color="#bbbbbb")
    ax.bar(list(xs), cpu5k, 0.27, label="5k rps", color="#777777")
    ax.bar([x + 0.27 for x in xs], cpumax, 0.27, label="max", color="#333333")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_title("Proxy CPU per request per hop")
    ax.set_ylabel("µs CPU / request / hop")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    s = summary.get("max", {})
    allnames = [p["name"] for p in results["paths"] if p["name"] in s]
    vals = [s[n].get("rps_vs_direct") or 0 for n in allnames]
    ax.bar(allnames, vals, color=[colors.get(n, "#999999") for n in allnames])
    ax.set_title("Closed-loop max rps relative to direct")
    ax.set_ylabel("× direct")
    ax.set_ylim(0, max(vals + [1]) * 1.15)
    for x, v in enumerate(vals):
        ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)

    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle("Trellis proxy hop vs HAProxy and nginx (loopback, 1 KiB responses)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------
# The meshed set (bench.py --set mesh): a section of benchmarks.md between these markers, which
# a run of the default set keeps and a run of the mesh set replaces.

MESH_BEGIN = "<!-- bench --set mesh: begin (generated by bench/report.py) -->"
MESH_END = "<!-- bench --set mesh: end -->"

MESH_LABEL = {
    "direct": "direct (no proxy)",
    "mesh-plaintext": "mesh-plaintext (client + server proxy, `tls.mode: DISABLE`)",
    "mesh-mtls": "mesh-mtls (client + server proxy, mesh mTLS)",
    "mesh-traffic": "mesh-traffic (mTLS, 90/10 subsets, retries, outlier detection)",
}

# (what, path, baseline): the per-request cost of one thing, from runs in the same rounds.
MESH_COMPARISONS = [
    ("mTLS vs plaintext (the cost of encryption)", "mesh-mtls", "mesh-plaintext"),
    ("traffic features vs the plain mTLS hop", "mesh-traffic", "mesh-mtls"),
    ("traffic features + mTLS vs plaintext", "mesh-traffic", "mesh-plaintext"),
]


def side_cpu(run: dict) -> tuple[float | None, float | None]:
    """(client, server) CPU µs per request of a meshed run; the server side sums its proxies."""
    cpu = {k: v for k, v in run["cpu_us_per_req"].items() if k != "backend"}
    client = sum(v for k, v in cpu.items() if k.endswith("-client"))
    server = sum(v for k, v in cpu.items() if not k.endswith("-client"))
    return client, server


def mesh_deltas(results: dict, scenario: str, path: str, base: str) -> dict | None:
    by_round = {}
    for r in results["runs"]:
        if r["scenario"] == scenario and r["path"] in (path, base):
            by_round.setdefault(r["round"], {})[r["path"]] = r
    pairs = [(d[path], d[base]) for d in by_round.values() if path in d and base in d]
    if not pairs:
        return None
    out = {"rounds": len(pairs)}
    for q in ("p50", "p90", "p99"):
        out[f"{q}_us"] = median((a[f"{q}_ms"] - b[f"{q}_ms"]) * 1e3 for a, b in pairs
                                if a[f"{q}_ms"] is not None and b[f"{q}_ms"] is not None)
    out["client_cpu_us"] = median(side_cpu(a)[0] - side_cpu(b)[0] for a, b in pairs)
    out["server_cpu_us"] = median(side_cpu(a)[1] - side_cpu(b)[1] for a, b in pairs)
    return out


def render_mesh_section(results: dict, summary: dict) -> str:
    cfg = results["config"]
    m = results["machine"]
    mesh = results.get("mesh", {})
    order = [p["name"] for p in results["paths"]]
    lines = [MESH_BEGIN, ""]
    add = lines.append
    add("## Meshed paths: mTLS and traffic features")
    add("")
    add("_Generated from `" + results["results_file"] + "` by `bench/bench.py --set mesh`; "
        "rerun it rather than editing this section (a run of the default set keeps it)._")
    add("")
    if cfg.get("quick"):
        add("**This is a `--quick` smoke run: too few and too short runs to quote.**")
        add("")
    add("The real meshed path: a local `trellis-control` (config dir written by the bench: "
        "`MESH_CONFIG` in `bench/bench.py`) and `trellis-proxy` processes registered with it. "
        "The load generator calls a client proxy's explicit outbound port "
        "(`--outbound-port 127.0.0.1:P=SERVICE.default:80`), which sends to the Service's "
        "endpoints, the inbound listeners of server proxies (`--inbound 127.0.0.1:0 --app "
        "<backend> --app-port 80`), which forward to the same nginx backend as the rest of this "
        "page. One Service per path, so each client reaches only its own server proxies; every "
        "proxy `--threads 1`.")
    add("")
    add("- **mesh-plaintext**: one client, one server proxy; a DestinationRule "
        "`trafficPolicy.tls.mode: DISABLE` for the host, so the hop between the proxies is "
        "plaintext (HTTP/2 between proxies, no TLS).")
    add("- **mesh-mtls**: the same pair without that DestinationRule: the mesh's automatic mTLS "
        "(TLS 1.3, certificates from the control plane's CA).")
    add("- **mesh-traffic**: mTLS as above, plus a VirtualService splitting 90/10 over subsets "
        "v1/v2 (two server proxies, labels `version=v1` / `version=v2`, both in front of the "
        "backend) with `retries: {attempts: 2, retryOn: 5xx}`, and a DestinationRule with "
        "`outlierDetection` (consecutive5xxErrors 5, interval 10s). The backend never fails, so "
        "this is the cost of evaluating the features on every request, not of retrying. Its "
        "server-side CPU is v1 + v2 (each divided by all requests of the run).")
    add("")
    add(f"Run: {results['started_utc']} to {results['finished_utc']} UTC, {cfg['rounds']} "
        f"interleaved rounds (path order rotating each round), {cfg['open_seconds']} s per "
        "open-loop run, oha with latency correction; latency medians over rounds.")
    q = results.get("quiet", {})
    busy = sum(r["compilers_running"] > 0 for r in results["runs"])
    loads = [r["loadavg_1m"] for r in results["runs"]]
    quiet_word = "quiet" if busy == 0 else "NOT quiet"
    add(f"Machine: **{quiet_word}**: a `rustc`/`cargo` process was running during {busy} of "
        f"{len(results['runs'])} runs"
        + (f"; quiet check before the run: {q.get('verdict')}" if q else "")
        + f"; 1-minute load average median {fmt(median(loads), 2)}, max "
        f"{fmt(max(loads, default=None), 2)}; {m['nproc']} cores ({m['cpu_model']}); "
        f"trellis {m['trellis_commit']}.")
    bins = mesh.get("binaries")
    if bins:
        add("Binaries: " + "; ".join(f"`{k}` built {v}" for k, v in bins.items()) + ".")
    add("")
    for note in results.get("notes", []):
        add(f"- {note}")
    if results.get("notes"):
        add("")

    add("### What each thing costs (paired within rounds)")
    add("")
    add("Median over rounds of (path − baseline) in the same round. Latency is per request, "
        "i.e. per meshed hop (one client-to-server link); CPU is µs per request on each side.")
    add("")
    add("| comparison | load | added p50 / p90 / p99 (µs) | client proxy CPU µs/req | "
        "server proxy CPU µs/req |")
    add("|---|---|---:|---:|---:|")
    for what, path, base in MESH_COMPARISONS:
        for sc in results["scenarios"]:
            d = mesh_deltas(results, sc["name"], path, base)
            if not d:
                continue
            add(f"| {what} | {sc['rate']:,} rps / {sc['conns']} conn | "
                f"{fmt(d['p50_us'])} / {fmt(d['p90_us'])} / {fmt(d['p99_us'])} | "
                f"{fmt(d['client_cpu_us'], 1, '')} | {fmt(d['server_cpu_us'], 1)} |")
    add("")

    for sc in results["scenarios"]:
        s = summary.get(sc["name"], {})
        add(f"### {sc['title']} (meshed)")
        add("")
        add("| path | achieved rps | p50 / p90 / p99 (ms) | added per proxy vs direct p50 / p90 / "
            "p99 (µs) | CPU µs per request, per proxy | peak RSS MiB, per proxy | failed |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for name in order:
            if r := s.get(name):
                add(path_row(MESH_LABEL.get(name, name), r, sc["rate"]))
        add("")

    if results.get("observations"):
        add("### Observations from this run")
        add("")
        add(results["observations"].strip())
        add("")
    add("### Checks: what was measured is what is claimed")
    add("")
    checks = mesh.get("checks", {})
    if checks:
        add("- Before the runs (the bench stops unless mesh-plaintext's server proxy made no TLS "
            "handshake and every other server proxy made at least one), inbound "
            "`trellis_tls_handshakes_total` per server proxy: " + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v:,.0f}"
                                       for k, v in c["inbound_tls_handshakes"].items())
                for name, c in checks.items()) + ".")
    tm = results.get("trellis_metrics") or {}

    def inbound(label):
        return sum(v for k, v in (tm.get(label) or {}).items()
                   if k.startswith("trellis_requests_total") and 'direction="inbound"' in k)

    def hs_total(label):
        return sum(v for k, v in (tm.get(label) or {}).items()
                   if k.startswith("trellis_tls_handshakes_total") and 'direction="inbound"' in k)

    if tm:
        def detections(label):
            found = []
            for k, v in (tm.get(label) or {}).items():
                outcome = OUTCOME.search(k)
                if k.startswith("trellis_protocol_detections_total") and outcome \
                        and 'direction="inbound"' in k:
                    found.append(f"{outcome.group(1)} {v:,.0f}")
            return ", ".join(found)

        for label in [l for l in tm if not l.endswith("-client")]:
            add(f"- After the runs, {label}: {inbound(label):,.0f} inbound requests, "
                f"{hs_total(label):,.0f} inbound TLS handshakes, inbound connections detected "
                f"as: {detections(label) or 'none'} (connections are pooled and long-lived).")
        v1, v2 = inbound("traffic-v1"), inbound("traffic-v2")
        if v1 + v2:
            add(f"- mesh-traffic split: v1 {v1:,.0f} / v2 {v2:,.0f} requests = "
                f"{100 * v1 / (v1 + v2):.1f} % / {100 * v2 / (v1 + v2):.1f} % (configured 90/10).")
    cs = (mesh.get("control") or {}).get("config_status")
    if cs is not None:
        add(f"- Control plane config status (`/api/v1/config`): {summarize_config_status(cs)}.")
    add("")
    add("Command (from the repository root):")
    add("")
    add("```sh")
    add(results["command"])
    add("```")
    add("")
    add("`--set mesh` runs only this set (direct and the three meshed paths, the two open-loop "
        "loads); `bench/run.sh --set mesh` builds `trellis-proxy` and `trellis-control` first "
        "unless `--no-build`. Raw per-run numbers: `" + results["results_file"] + "`.")
    add("")
    add(MESH_END)
    return "\n".join(lines)


def summarize_config_status(cs) -> str:
    """A short line from the control plane's /api/v1/config answer, whatever its exact shape."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            kind = x.get("kind")
            name = x.get("name")
            status = x.get("status") or x.get("state")
            if kind and status and isinstance(status, str):
                found.append(f"{kind} {name or ''}: {status}".replace("  ", " "))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(cs)
    return "; ".join(found) if found else "not reported"


def splice_mesh_section(md: str, section: str | None) -> str:
    """md with its mesh section replaced by `section` (appended if md has none)."""
    start, end = md.find(MESH_BEGIN), md.find(MESH_END)
    if start >= 0 and end > start:
        md = md[:start].rstrip("\n") + "\n" + md[end + len(MESH_END):].lstrip("\n")
    if section:
        md = md.rstrip("\n") + "\n\n" + section + "\n"
    return md


def existing_mesh_section(path: Path) -> str | None:
    if not path.exists():
        return None
    md = path.read_text()
    start, end = md.find(MESH_BEGIN), md.find(MESH_END)
    return md[start:end + len(MESH_END)] if start >= 0 and end > start else None


def write_docs(results: dict, docs_dir: Path) -> None:
    if results.get("set") == "floor":
        # The floor set (bench/floor_set.py) renders its own section, SMP JSON and plot.
        from floor_report import write_floor_docs  # noqa: PLC0415 - it imports this module
        write_floor_docs(results, docs_dir)
        return
    summary = summarize(results)
    results["summary"] = summary
    docs_dir.mkdir(parents=True, exist_ok=True)
    doc = docs_dir / "benchmarks.md"
    if results.get("set") == "mesh":
        md = doc.read_text() if doc.exists() else "# Benchmarks\n"
        doc.write_text(splice_mesh_section(md, render_mesh_section(results, summary)))
        print(f"wrote the meshed section of {doc}")
        return
    png = docs_dir / "benchmarks.png"
    problem = render_plot(results, summary, png)
    if problem:
        results.setdefault("notes", []).append(problem)
    md = render_markdown(results, summary, None if problem else png.name)
    # Keep the meshed section (bench.py --set mesh) that a previous run wrote.
    md = splice_mesh_section(md, existing_mesh_section(doc))
    # And the floor section (bench.py --set floor), in place after it.
    from floor_report import keep_floor_section  # noqa: PLC0415 - it imports this module
    md = keep_floor_section(md, doc)
    # And bench/control.sh's section with the hand-written notes after it: the rest of the page
    # from its start marker, which this run does not render.
    md = keep_control_tail(md, doc)
    # And the hand-written system-call census (bench/syscalls.py), in place before "How it was
    # measured".
    md = keep_syscalls_section(md, doc)
    doc.write_text(md)
    print(f"wrote {docs_dir / 'benchmarks.md'}" + ("" if problem else f" and {png}"))


CONTROL_START = "<!-- bench/control.sh: start -->"
SYSCALLS_BEGIN = "<!-- bench/syscalls.py: begin (hand-written, kept by bench/report.py) -->"
SYSCALLS_END = "<!-- bench/syscalls.py: end -->"


def keep_syscalls_section(md: str, doc: Path) -> str:
    """md with the doc's marked system-call section put back before "## How it was measured"."""
    if not doc.exists() or SYSCALLS_BEGIN in md:
        return md
    old = doc.read_text()
    start, end = old.find(SYSCALLS_BEGIN), old.find(SYSCALLS_END)
    at = md.find("\n## How it was measured")
    if start < 0 or end < start or at < 0:
        return md
    block = old[start:end + len(SYSCALLS_END)]
    return md[:at] + "\n" + block + "\n" + md[at:]


def keep_control_tail(md: str, doc: Path) -> str:
    """md with the doc's text from bench/control.sh's start marker to its end appended."""
    if not doc.exists() or CONTROL_START in md:
        return md
    old = doc.read_text()
    start = old.find(CONTROL_START)
    if start < 0:
        return md
    return md.rstrip("\n") + "\n\n" + old[start:]
