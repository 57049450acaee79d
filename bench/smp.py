"""The floor set's results in the Service Mesh Performance (SMP) shape.

SMP (CNCF, service-mesh-performance/service-mesh-performance, `protos/
service_mesh_performance.proto`, package `smp`) describes a test as PerformanceTestConfig (load
generator, protocol, connections, rps, duration), ServiceMeshConfig (mTLS and telemetry on,
proxy concurrency, sidecar count, CPU in mCores and memory in MB), EnvironmentConfig (nodes:
type, cores, memory) and PerformanceTestResult (start and end time, latencies in ms: p50, p90,
p99; actual QPS; the ids of the test, mesh config and environment). This writes those messages
in the proto3 JSON mapping (lowerCamelCase names), one PerformanceTestResult per scenario and
path (medians over rounds), with what SMP has no field for (per-hop added latency, CPU per
request, ratios to the floor) in each message's `labels` map, as strings, as SMP's maps are.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = "service-mesh-performance protos/service_mesh_performance.proto (package smp)"

# Which proxies of a path are the "sidecars" of its ServiceMeshConfig.
MESH_CONFIGS = {
    "direct": {"mtlsEnabled": False, "meshTelemetryEnabled": False, "proxies": 0},
    "floor-1": {"mtlsEnabled": False, "meshTelemetryEnabled": False, "proxies": 1},
    "floor-2": {"mtlsEnabled": False, "meshTelemetryEnabled": False, "proxies": 2},
    "trellis-1": {"mtlsEnabled": False, "meshTelemetryEnabled": True, "proxies": 1},
    "mesh-mtls": {"mtlsEnabled": True, "meshTelemetryEnabled": True, "proxies": 2},
}
PROTOCOL = {"h1": "http", "h2": "http", "grpc": "grpc"}
LOADGEN = {"open": "oha", "closed": "wrk", "newconn": "oha --disable-keepalive",
           "h2load": "h2load", "grpc": "bench-floor grpc-load"}


def s(v) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def rfc3339(iso: str | None) -> str | None:
    """google.protobuf.Timestamp's JSON form: RFC 3339 with a Z."""
    return iso.replace("+00:00", "Z") if iso else None


def smp_path(results: dict) -> Path:
    rf = Path(results["results_file"])
    rf = rf if rf.is_absolute() else REPO / rf
    return rf.with_name(rf.stem + "-smp.json")


def build(results: dict, summary: dict) -> dict:
    m = results["machine"]
    env_id = f"loopback-{m['nproc']}cpu"
    cfg = results["config"]
    test_configs, mesh_configs, test_results = [], {}, []
    runs = results["runs"]
    for sc in results["scenarios"]:
        secs = cfg["open_seconds"] if sc["kind"] in ("open", "newconn") else cfg["closed_seconds"]
        test_configs.append({
            "smpVersion": SPEC, "id": sc["name"], "name": sc["title"],
            "labels": {"rounds": s(cfg["rounds"]), "proto": sc["proto"], "kind": sc["kind"],
                       "bodyBytes": s(cfg["body_bytes"])},
            "clients": [{"internal": True, "loadGenerator": LOADGEN[sc["kind"]],
                         "protocol": PROTOCOL[sc["proto"]], "connections": sc["conns"],
                         "rps": sc["rate"] or 0}],
            "duration": f"{secs:g}s",
        })
        for name, row in summary.get(sc["name"], {}).items():
            mc = MESH_CONFIGS.get(name, {"mtlsEnabled": False, "meshTelemetryEnabled": False,
                                         "proxies": row["hops"]})
            proxies = {k: v for k, v in row["cpu_us_per_req"].items()}
            # mCores = CPU µs per request x requests per second / 1000.
            cpu_m = sum(proxies.values()) * row["rps"] / 1000 if proxies else 0
            rss = sum(row["peak_rss_mib"].values()) * 1.048576 if proxies else 0
            mc_id = f"{name}/{sc['name']}"
            mesh_configs[mc_id] = {
                "smpVersion": SPEC, "id": mc_id,
                "labels": {"path": name, "proxyBinary": "trellis-proxy" if name.startswith(
                    ("trellis", "mesh")) else ("bench-floor forward" if name.startswith("floor")
                                               else "none")},
                "sidecar": {"count": mc["proxies"], "cpuMCores": round(cpu_m),
                            "memMb": round(rss), "rps": round(row["rps"])},
                "meshTelemetryEnabled": mc["meshTelemetryEnabled"],
                "mtlsEnabled": mc["mtlsEnabled"],
                "proxyConcurrency": 1,
                "proxyBuild": m["trellis_commit"] if name.startswith(("trellis", "mesh")) else "",
            }
            these = [r for r in runs if r["scenario"] == sc["name"] and r["path"] == name]
            labels = {"rounds": s(row["rounds"]), "requests": s(row["requests"]),
                      "failed": s(row["non_200"] + row["errors"])}
            for q in ("p50", "p90", "p99"):
                if row.get(f"added_{q}_us_per_hop") is not None:
                    labels[f"added_{q}_us_per_hop"] = s(row[f"added_{q}_us_per_hop"])
            for label, v in row["cpu_us_per_req"].items():
                labels[f"cpu_us_per_request.{label}"] = s(v)
            for label, v in row["peak_rss_mib"].items():
                labels[f"peak_rss_mib.{label}"] = s(v)
            # Ratios to the floor of the same shape (pair to pair, hop to hop), same run.
            floor = summary.get(sc["name"], {}).get({"mesh-mtls": "floor-2",
                                                      "trellis-1": "floor-1"}.get(name, ""))
            if floor:
                for q in ("p50", "p90"):
                    a, f = row.get(f"added_{q}_us_per_hop"), floor.get(f"added_{q}_us_per_hop")
                    if a is not None and f:
                        labels[f"added_{q}_vs_floor"] = s(a / f)
                if floor["rps"]:
                    labels["rps_vs_floor"] = s(row["rps"] / floor["rps"])
                for mine, theirs in zip(sorted(row["cpu_us_per_req"]),
                                        sorted(floor["cpu_us_per_req"])):
                    if floor["cpu_us_per_req"][theirs]:
                        labels[f"cpu_vs_floor.{mine}"] = s(row["cpu_us_per_req"][mine]
                                                           / floor["cpu_us_per_req"][theirs])
            test_results.append({
                "smpVersion": SPEC, "id": f"{sc['name']}/{name}", "labels": labels,
                "startTime": rfc3339(min((r["start_utc"] for r in these if "start_utc" in r),
                                         default=None)),
                "endTime": rfc3339(max((r["end_utc"] for r in these if "end_utc" in r),
                                       default=None)),
                "latenciesMs": {"p50": row["p50_ms"], "p90": row["p90_ms"],
                                "p99": row["p99_ms"]},
                "actualQPS": row["rps"],
                "detailsUri": results["results_file"],
                "testId": sc["name"], "meshConfigId": mc_id, "envId": env_id,
            })
    return {
        "spec": SPEC,
        "note": "Medians over rounds; raw runs in detailsUri. Generated by bench/smp.py.",
        "environmentConfig": {
            "smpVersion": SPEC, "id": env_id,
            "labels": {"kernel": m["kernel"], "network": "loopback, one machine"},
            "kubernetesVersion": "",
            "node": [{"type": m["cpu_model"], "cores": int(m["nproc"]) if str(m["nproc"])
                      .isdigit() else 0, "memMb": m["mem_total_mib"]}],
        },
        "performanceTestConfigs": test_configs,
        "serviceMeshConfigs": list(mesh_configs.values()),
        "performanceTestResults": test_results,
    }


def write(results: dict, summary: dict) -> str:
    path = smp_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build(results, summary), indent=1) + "\n")
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
