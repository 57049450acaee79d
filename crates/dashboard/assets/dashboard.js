// The Trellis dashboard: a live service graph, per-node and per-route charts, the proxies behind
// a workload, a live tap and the config, all from the control plane's JSON API, refreshed every
// 2 s. Everything is built with DOM calls and textContent (never innerHTML), so names from
// config files cannot inject markup. No framework, no build step: this file is served as is.
"use strict";

const REFRESH_MS = 2000;
const TIMEOUT_MS = 1800;
const SVG_NS = "http://www.w3.org/2000/svg";
const TAP_MAX_ROWS = 200;

// ---------------------------------------------------------------------------------------------
// DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind }, text);
}

function list(items) {
  if (!items.length) return el("span", { class: "empty" }, "none");
  return el("ul", {}, ...items.map((item) => el("li", {}, item)));
}

function pairs(map) {
  return list(Object.entries(map || {}).map(([k, v]) => el("code", {}, k + "=" + v)));
}

function fill(id, rows, columns, emptyText) {
  const body = document.getElementById(id + "-body");
  const fresh = rows.length
    ? rows.map((row) => (row instanceof Node ? row : el("tr", {}, ...row.map((cell) => el("td", {}, cell)))))
    : [el("tr", {}, el("td", { colspan: String(columns), class: "empty" }, emptyText))];
  body.replaceChildren(...fresh);
  const count = document.getElementById(id + "-count");
  if (count) count.textContent = "(" + rows.length + ")";
}

function showError(id, message) {
  const node = document.getElementById(id + "-error");
  if (!node) return;
  node.hidden = !message;
  node.textContent = message || "";
}

// ---------------------------------------------------------------------------------------------
// Formatting

function fmtRps(v) {
  if (v === null || v === undefined) return "-";
  return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " rps";
}

function fmtPct(v) {
  if (v === null || v === undefined) return "-";
  const pct = v * 100;
  return (pct === 100 || pct === 0 ? pct.toFixed(0) : pct.toFixed(1)) + "%";
}

function fmtMs(v) {
  if (v === null || v === undefined) return "-";
  if (v < 10) return v.toFixed(1) + " ms";
  if (v < 1000) return v.toFixed(0) + " ms";
  return (v / 1000).toFixed(2) + " s";
}

function seen(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return "just now";
  return Math.round(ms / 1000) + " s ago";
}

async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, { signal: abort.signal, headers: { accept: "application/json" } });
    if (!response.ok) {
      const error = new Error(path + " answered " + response.status);
      error.status = response.status;
      throw error;
    }
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// The service graph

const NODE_W = 124;
const NODE_H = 40;
const COL_W = 236;
const ROW_H = 66;
const PAD = 20;
const LABEL_W = 118;
const LABEL_H = 30;

const state = {
  graph: null,
  proxies: [],
  selected: null, // { kind: "node", id } or { kind: "route", namespace, service, route }
  config: null,
};

function nodeLabel(node) {
  return node.kind === "external" ? "outside the mesh" : node.name;
}

function nodeKindText(node) {
  if (node.kind === "service") return "service";
  if (node.kind === "workload") return "workload";
  return "callers";
}

// Layered layout: each node's column is its longest distance from a node nothing calls, so
// traffic flows left to right; rows are sorted by kind and name so the picture is stable.
function layout(graph) {
  const incoming = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) if (incoming.has(e.target)) incoming.get(e.target).push(e.source);
  const depth = new Map();
  const visiting = new Set();
  function depthOf(id) {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle: break it here
    visiting.add(id);
    let d = 0;
    for (const src of incoming.get(id) || []) d = Math.max(d, depthOf(src) + 1);
    visiting.delete(id);
    depth.set(id, d);
    return d;
  }
  graph.nodes.forEach((n) => depthOf(n.id));
  const columns = [];
  for (const n of graph.nodes) {
    const d = depth.get(n.id) || 0;
    (columns[d] = columns[d] || []).push(n);
  }
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const height = PAD * 2 + rows * ROW_H;
  const pos = new Map();
  columns.forEach((col, d) => {
    if (!col) return;
    col.sort((a, b) => (a.kind + a.name).localeCompare(b.kind + b.name));
    const top = PAD + ((rows - col.length) * ROW_H) / 2;
    col.forEach((n, i) => pos.set(n.id, { x: PAD + d * COL_W, y: top + i * ROW_H + (ROW_H - NODE_H) / 2 }));
  });
  const width = PAD * 2 + Math.max(1, columns.length - 1) * COL_W + NODE_W;
  return { pos, width, height };
}

function padlock(x, y) {
  // A 10 x 12 padlock drawn in place, so it needs no font with the emoji.
  return svg("g", { class: "padlock", transform: "translate(" + x + "," + y + ")", "aria-hidden": "true" },
    svg("path", { d: "M2.5 5 V3.5 a2.5 2.5 0 0 1 5 0 V5", fill: "none" }),
    svg("rect", { x: "1", y: "5", width: "8", height: "6.5", rx: "1" }));
}

function edgeLines(e) {
  const s = e.stats;
  if (!s || !s.requests) return ["no traffic", ""];
  return [fmtRps(s.rps) + " · " + fmtPct(s.success_rate), "p99 " + fmtMs(s.p99_ms)];
}

function edgeText(e) {
  return edgeLines(e).filter((l) => l).join(" · ");
}

function edgeName(e, byId) {
  const name = (id) => (byId.get(id) ? nodeLabel(byId.get(id)) : id);
  return name(e.source) + " to " + name(e.target);
}

function renderGraph(graph) {
  const host = document.getElementById("graph-svg");
  const focused = document.activeElement && document.activeElement.getAttribute("data-id");
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const { pos, width, height } = layout(graph);
  host.setAttribute("viewBox", "0 0 " + width + " " + height);
  host.setAttribute("width", String(width));
  host.setAttribute("height", String(height));

  const edges = svg("g", { class: "edges" });
  const labels = svg("g", { class: "edge-labels" });
  const placed = [];
  for (const e of graph.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    const active = !!(e.stats && e.stats.requests);
    const cls = "edge" + (active ? " active" : " idle") + (e.failing ? " failing" : "") + (e.mtls ? " mtls" : "");
    edges.append(svg("path", {
      class: cls, d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2,
      "marker-end": "url(#arrow" + (e.failing ? "-failing" : "") + ")",
    }));
    // The label sits on the curve's midpoint (for these control points, the mid-x and mid-y of
    // its ends); overlapping ones are spread apart below.
    if (active) placed.push({ e, x: mx - LABEL_W / 2, y: (y1 + y2) / 2 - LABEL_H / 2 });
  }
  placed.sort((p, q) => p.x - q.x || p.y - q.y);
  for (let i = 1; i < placed.length; i++) {
    for (let j = 0; j < i; j++) {
      const p = placed[j], q = placed[i];
      if (Math.abs(p.x - q.x) < LABEL_W && q.y < p.y + LABEL_H + 3 && q.y > p.y - LABEL_H - 3) q.y = p.y + LABEL_H + 3;
    }
  }
  for (const { e, x, y } of placed) {
    const s = e.stats;
    const [line1, line2] = edgeLines(e);
    const label = edgeName(e, byId) + ": " + edgeText(e) + (e.mtls ? ", mutual TLS" : "") + (e.failing ? ", failing" : "");
    labels.append(svg("g", {
      class: "edge-label" + (e.failing ? " failing" : ""), tabindex: "0", role: "img", "aria-label": label,
      "data-id": e.id, "data-source": e.source, "data-target": e.target,
      "data-rps": s.rps, "data-success": s.success_rate, "data-p99": s.p99_ms, "data-requests": s.requests,
      "data-mtls": String(!!e.mtls), "data-failing": String(!!e.failing),
    },
    svg("title", {}, label),
    svg("rect", { x, y, width: LABEL_W, height: LABEL_H, rx: 4 }),
    e.mtls ? padlock(x + 5, y + 9) : null,
    svg("text", { x: x + (e.mtls ? 18 : 6), y: y + 12 }, line1),
    svg("text", { x: x + (e.mtls ? 18 : 6), y: y + 25 }, line2)));
  }
  const height2 = Math.max(height, ...placed.map((p) => p.y + LABEL_H + PAD));
  host.setAttribute("viewBox", "0 0 " + width + " " + height2);
  host.setAttribute("height", String(height2));

  const nodes = svg("g", { class: "nodes" });
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const s = n.stats;
    const selected = state.selected && state.selected.kind === "node" && state.selected.id === n.id;
    // Red for a success rate under the threshold, or for what the workload's own proxy flags
    // as departing from its recent baseline (its anomaly detector).
    const anomalies = n.anomalies || [];
    const anomalyText = anomalies.length ? "anomalous " + anomalies.map((k) => k.replace("_", " ")).join(", ") : "";
    const health = n.failing || anomalies.length ? "failing" : s && s.requests ? "ok" : "idle";
    const summary = s && s.requests ? ": " + fmtRps(s.rps) + ", " + fmtPct(s.success_rate) + " success" : ": no traffic";
    const label = nodeKindText(n) + " " + nodeLabel(n) + (n.namespace ? " in " + n.namespace : "") + summary + (n.failing ? ", failing" : "") + (anomalyText ? ", " + anomalyText : "");
    const select = () => selectNode(n.id);
    nodes.append(svg("g", {
      class: "node " + n.kind + " " + health + (selected ? " selected" : ""),
      transform: "translate(" + p.x + "," + p.y + ")", tabindex: "0", role: "button",
      "aria-label": label, "aria-pressed": String(selected), "data-id": n.id, "data-kind": n.kind,
      "data-name": n.name, "data-failing": String(!!n.failing), "data-anomalies": anomalies.join(","),
      onclick: select,
      onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(); } },
    },
    svg("title", {}, label),
    svg("rect", { width: NODE_W, height: NODE_H, rx: n.kind === "service" ? 20 : 6 }),
    svg("text", { class: "node-name", x: NODE_W / 2, y: 17, "text-anchor": "middle" }, nodeLabel(n)),
    svg("text", { class: "node-kind", x: NODE_W / 2, y: 32, "text-anchor": "middle" },
      nodeKindText(n) + (n.failing ? " · failing" : anomalyText ? " · " + anomalyText : s && s.requests ? " · " + fmtPct(s.success_rate) : ""))));
  }

  const defs = svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" })),
    svg("marker", { id: "arrow-failing", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow failing" })));
  host.replaceChildren(defs, edges, nodes, labels);
  if (focused) {
    const again = host.querySelector('[data-id="' + CSS.escape(focused) + '"]');
    if (again) again.focus();
  }

  const rows = graph.edges
    .filter((e) => e.stats && e.stats.requests)
    .map((e) => {
      const s = e.stats;
      return el("tr", { "data-id": e.id, class: e.failing ? "failing-row" : null },
        el("td", {}, nodeLabel(byId.get(e.source) || { name: e.source })),
        el("td", {}, nodeLabel(byId.get(e.target) || { name: e.target })),
        el("td", {}, fmtRps(s.rps)),
        el("td", {}, e.failing ? badge(fmtPct(s.success_rate), "bad") : fmtPct(s.success_rate)),
        el("td", {}, fmtMs(s.p50_ms)), el("td", {}, fmtMs(s.p95_ms)), el("td", {}, fmtMs(s.p99_ms)),
        el("td", {}, e.mtls ? "yes" : "no"));
    });
  fill("edges", rows, 8, "No traffic in the window yet.");
  document.getElementById("graph-window").textContent = String(Math.round(graph.window_seconds || 20));
  document.getElementById("graph-threshold").textContent = String(Math.round((graph.failing_below || 0.95) * 100));
}

// ---------------------------------------------------------------------------------------------
// Charts (inline SVG line charts)

const CHART_W = 300;
const CHART_H = 110;
const M = { l: 44, r: 8, t: 8, b: 20 };

function chart(title, points, lines, opts) {
  const xs = points.map((p) => p.t);
  const now = Date.now();
  const x0 = Math.min(now - 15 * 60 * 1000, ...xs);
  const x1 = Math.max(now, ...xs);
  let yMax = opts.max;
  if (yMax === undefined) {
    yMax = 0;
    for (const p of points) for (const l of lines) if (p[l.key] !== null && p[l.key] !== undefined) yMax = Math.max(yMax, p[l.key]);
    yMax = yMax > 0 ? yMax * 1.15 : 1;
  }
  const sx = (t) => M.l + ((t - x0) / (x1 - x0 || 1)) * (CHART_W - M.l - M.r);
  const sy = (v) => CHART_H - M.b - (v / yMax) * (CHART_H - M.t - M.b);
  const last = points.length ? points[points.length - 1] : null;
  const summary = title + ": " + (last ? lines.map((l) => l.name + " " + opts.fmt(last[l.key])).join(", ") : "no data yet");
  const paths = lines.map((l) => {
    let d = "";
    let pen = false;
    for (const p of points) {
      const v = p[l.key];
      if (v === null || v === undefined) { pen = false; continue; }
      d += (pen ? " L" : " M") + sx(p.t).toFixed(1) + "," + sy(v).toFixed(1);
      pen = true;
    }
    return svg("path", { class: "line " + l.cls, d: d.trim() || "M0,0" });
  });
  return el("figure", { class: "chart" },
    el("figcaption", {}, title, " ", ...lines.map((l) => el("span", { class: "key " + l.cls }, l.name))),
    svg("svg", { viewBox: "0 0 " + CHART_W + " " + CHART_H, role: "img", "aria-label": summary, "data-chart": opts.id, "data-points": points.length },
      svg("title", {}, summary),
      svg("line", { class: "axis", x1: M.l, y1: CHART_H - M.b, x2: CHART_W - M.r, y2: CHART_H - M.b }),
      svg("line", { class: "grid", x1: M.l, y1: M.t, x2: CHART_W - M.r, y2: M.t }),
      svg("text", { class: "tick", x: M.l - 4, y: M.t + 4, "text-anchor": "end" }, opts.fmt(yMax)),
      svg("text", { class: "tick", x: M.l - 4, y: CHART_H - M.b, "text-anchor": "end" }, opts.fmt(0)),
      svg("text", { class: "tick", x: M.l, y: CHART_H - 4 }, "-15 min"),
      svg("text", { class: "tick", x: CHART_W - M.r, y: CHART_H - 4, "text-anchor": "end" }, "now"),
      ...paths));
}

function renderCharts(series) {
  const points = series.points || [];
  const charts = document.getElementById("charts");
  charts.replaceChildren(
    chart("Success rate", points, [{ key: "success_rate", name: "success", cls: "s1" }], { id: "success", max: 1, fmt: fmtPct }),
    chart("Requests per second", points, [{ key: "rps", name: "rps", cls: "s1" }], { id: "rps", fmt: (v) => (v === null || v === undefined ? "-" : v.toFixed(1)) }),
    chart("Latency", points, [
      { key: "p50_ms", name: "p50", cls: "s1" },
      { key: "p95_ms", name: "p95", cls: "s2" },
      { key: "p99_ms", name: "p99", cls: "s3" },
    ], { id: "latency", fmt: fmtMs }));
}

function selectNode(id) {
  state.selected = { kind: "node", id };
  refreshDetails();
  if (state.graph) renderGraph(state.graph);
}

function selectRoute(namespace, service, route) {
  state.selected = { kind: "route", namespace, service, route };
  refreshDetails();
  document.getElementById("details").scrollIntoView({ block: "start" });
}

function seriesPath(sel) {
  if (sel.kind === "route") {
    const q = new URLSearchParams({ namespace: sel.namespace, service: sel.service, route: sel.route });
    return "/api/v1/routes/timeseries?" + q;
  }
  const [kind, ns, name] = sel.id.split("/");
  if (kind === "workload") return "/api/v1/workloads/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name) + "/timeseries";
  if (kind === "service") return "/api/v1/services/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name) + "/timeseries";
  return null;
}

async function refreshDetails() {
  const sel = state.selected;
  if (!sel) return;
  const title = document.getElementById("details-name");
  let workload = null;
  if (sel.kind === "route") {
    title.textContent = "route " + sel.route + " of " + sel.service + "." + sel.namespace;
  } else {
    const [kind, ns, name] = sel.id.split("/");
    title.textContent = kind === "external" ? "callers outside the mesh" : kind + " " + name + (ns ? "." + ns : "");
    if (kind === "workload") {
      workload = { namespace: ns, name };
      const input = document.querySelector("#tap-form input[name=workload]");
      if (!input.value) input.value = name;
    }
  }
  const path = seriesPath(sel);
  if (path) {
    try {
      renderCharts(await getJson(path));
      showError("details", "");
    } catch (err) {
      showError("details", "Cannot load " + path + ": " + err.message);
    }
  } else {
    document.getElementById("charts").replaceChildren(el("p", { class: "empty" }, "Callers outside the mesh have no proxy of their own; select the workload they call."));
  }
  renderProxies(workload);
  refreshAuthz(workload);
}

const CONFIG_STATE = {
  current: ["current", "ok"],
  stale: ["not yet applied", "warn"],
  pending: ["waiting for discovery", "warn"],
  unknown: ["unknown", "warn"],
};

function configBadge(p) {
  const [text, kind] = CONFIG_STATE[p.config] || [p.config, "warn"];
  const extra = p.stale_targets && p.stale_targets.length ? el("div", { class: "mono empty" }, p.stale_targets.join(", ")) : null;
  return el("span", {}, badge(text, p.nacks && p.config !== "current" ? "bad" : kind), extra);
}

function renderProxies(workload) {
  const box = document.getElementById("details-proxies");
  box.hidden = !workload;
  if (!workload) return;
  const rows = state.proxies
    .filter((p) => p.namespace === workload.namespace && p.workload === workload.name)
    .map((p) => [
      el("strong", {}, p.workload),
      el("code", {}, p.proxy_id),
      el("span", {}, p.connected ? badge("connected", "ok") : badge("disconnected", "bad"),
        ...(p.anomalies || []).map((k) => el("div", {}, badge("anomalous " + k.replace("_", " "), "bad")))),
      configBadge(p),
      p.acked_version === null || p.acked_version === undefined ? el("span", { class: "empty" }, "none yet") : String(p.acked_version),
      p.nacks ? el("span", {}, badge(String(p.nacks), "bad"), p.last_nack ? el("div", {}, p.last_nack) : null) : "0",
      p.admin ? el("code", {}, p.admin) : "",
    ]);
  fill("proxies", rows, 7, "No proxy registered for this workload.");
}

// Authorization policies that cover the selected workload (404 from an older control plane:
// the panel stays hidden).
let authzAvailable = true;
async function refreshAuthz(workload) {
  const box = document.getElementById("details-authz");
  if (!workload || !authzAvailable) { box.hidden = true; return; }
  const path = "/api/v1/workloads/" + encodeURIComponent(workload.namespace) + "/" + encodeURIComponent(workload.name) + "/authorization";
  try {
    const answer = await getJson(path);
    const items = (answer.policies || []).map((p) =>
      el("li", {}, el("strong", {}, p.name), " ", badge(p.action + (p.dry_run ? " (dry run)" : ""), p.action === "DENY" ? "bad" : p.action === "ALLOW" ? "ok" : "warn"),
        " ", el("span", { class: "empty" }, p.rules + " rule" + (p.rules === 1 ? "" : "s"))));
    document.getElementById("authz-body").replaceChildren(items.length
      ? el("ul", { class: "plain" }, ...items)
      : el("p", { class: "empty" }, "No AuthorizationPolicy covers it: the mesh default applies."));
    box.hidden = false;
  } catch (err) {
    if (err.status === 404 && !state.proxies.some((p) => p.namespace === workload.namespace && p.workload === workload.name)) authzAvailable = false;
    box.hidden = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Tables: routes, config, services, workloads

function routeRows(routes) {
  return routes.map((r) => {
    const s = r.stats || {};
    const open = () => selectRoute(r.namespace, r.service, r.route);
    return el("tr", { "data-route": r.route },
      el("td", {}, r.service + "." + r.namespace),
      el("td", {}, el("button", { type: "button", class: "link", onclick: open, "aria-label": "Charts of route " + r.route + " of " + r.service }, r.route)),
      el("td", {}, fmtRps(s.rps)), el("td", {}, fmtPct(s.success_rate)),
      el("td", {}, fmtMs(s.p50_ms)), el("td", {}, fmtMs(s.p95_ms)), el("td", {}, fmtMs(s.p99_ms)));
  });
}

const STATUS_KIND = { Accepted: "ok", Invalid: "bad", Ignored: "warn" };

function programmed(resource, proxies) {
  if (resource.status !== "Accepted") return el("span", { class: "empty" }, "-");
  const connected = proxies.filter((p) => p.connected);
  const behind = connected.filter((p) => p.config !== "current");
  if (!connected.length) return badge("no proxies", "warn");
  if (!behind.length) return badge("Programmed", "ok");
  return badge("pending: " + behind.length + " of " + connected.length + " proxies", "warn");
}

function configRows(config, proxies) {
  return ((config && config.resources) || []).map((r) => [
    badge(r.status, STATUS_KIND[r.status] || "warn"),
    programmed(r, proxies),
    r.kind,
    r.namespace || "",
    el("strong", {}, r.name || ""),
    el("code", {}, r.file || ""),
    r.message || "",
  ]);
}

function serviceRows(services) {
  return services.map((s) => [
    s.namespace,
    el("strong", {}, s.name),
    list((s.ports || []).map((p) => (p.name ? p.name + " " : "") + p.port + (p.protocol ? "/" + p.protocol : ""))),
    pairs(s.selector),
    list((s.endpoints || []).map((e) =>
      el("span", {}, el("code", {}, e.address), " ", e.workload, e.identity ? el("div", { class: "mono empty" }, e.identity) : null))),
  ]);
}

function workloadRows(workloads, proxies) {
  return workloads.map((w) => {
    const p = proxies.find((x) => x.namespace === w.namespace && x.workload === w.name);
    return [
      w.namespace,
      el("strong", {}, w.name),
      el("code", {}, w.identity || w.service_account || ""),
      pairs(w.labels),
      el("code", {}, w.inbound || ""),
      w.connected ? badge("connected", "ok") : badge("disconnected", "bad"),
      seen(w.last_seen_ms_ago),
      list((w.subscriptions || []).map((target) => el("code", {}, target))),
      p ? configBadge(p) : el("span", { class: "empty" }, "unknown"),
    ];
  });
}

// ---------------------------------------------------------------------------------------------
// Live tap: NDJSON from /api/v1/tap, read as it streams.

let tapAbort = null;

function tapField(row, ...names) {
  for (const name of names) {
    const parts = name.split(".");
    let v = row;
    for (const p of parts) v = v === null || v === undefined ? undefined : v[p];
    if (v !== undefined && v !== null && v !== "") return v;
  }
  return "";
}

function tapTime(time) {
  const t = time ? new Date(time) : new Date();
  return isNaN(t.getTime()) ? String(time) : t.toLocaleTimeString();
}

function tapRow(row) {
  const status = Number(tapField(row, "status", "status_code", "response_code"));
  const latency = tapField(row, "latency_ms", "duration_ms");
  const tls = tapField(row, "tls");
  return el("tr", { class: status >= 500 ? "failing-row" : null },
    el("td", {}, tapTime(tapField(row, "time"))),
    el("td", {}, String(tapField(row, "method"))),
    el("td", {}, el("code", {}, String(tapField(row, "authority")))),
    el("td", {}, el("code", {}, String(tapField(row, "path")))),
    el("td", {}, status >= 500 ? badge(String(status), "bad") : String(status || "-")),
    el("td", {}, latency === "" ? "-" : fmtMs(Number(latency))),
    el("td", {}, String(tapField(row, "source_workload", "source.workload", "source"))),
    el("td", {}, String(tapField(row, "destination_workload", "destination.workload", "destination"))),
    el("td", {}, tls === true || tls === "true" ? "mTLS" : "no"));
}

function setTapStatus(text) {
  document.getElementById("tap-status").textContent = text;
}

async function startTap(form) {
  stopTap();
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
  q.set("max_rows", "1000");
  q.set("max_seconds", "300");
  const abort = new AbortController();
  tapAbort = abort;
  document.getElementById("tap-start").disabled = true;
  document.getElementById("tap-stop").disabled = false;
  const body = document.getElementById("tap-body");
  let count = 0;
  setTapStatus("Starting…");
  try {
    const response = await fetch("/api/v1/tap?" + q, { signal: abort.signal, headers: { accept: "application/x-ndjson" } });
    if (response.status === 404) throw new Error("this control plane has no tap API");
    if (!response.ok) throw new Error("/api/v1/tap answered " + response.status + ": " + (await response.text()).trim());
    setTapStatus("Running: waiting for requests…");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (!line) continue;
        let row;
        try { row = JSON.parse(line); } catch (_) { continue; }
        if (count === 0) body.replaceChildren();
        count += 1;
        body.prepend(tapRow(row));
        while (body.children.length > TAP_MAX_ROWS) body.lastChild.remove();
        setTapStatus("Running: " + count + " request" + (count === 1 ? "" : "s") + " seen.");
      }
    }
    setTapStatus("Ended after " + count + " request" + (count === 1 ? "" : "s") + ".");
  } catch (err) {
    if (err.name === "AbortError") setTapStatus("Stopped after " + count + " request" + (count === 1 ? "" : "s") + ".");
    else setTapStatus("Tap failed: " + err.message);
  } finally {
    if (tapAbort === abort) {
      tapAbort = null;
      document.getElementById("tap-start").disabled = false;
      document.getElementById("tap-stop").disabled = true;
    }
  }
}

function stopTap() {
  if (tapAbort) tapAbort.abort();
}

// ---------------------------------------------------------------------------------------------
// The refresh loop

// The window of the graph's and routes' numbers: the select, first set from `?window=` in the
// page's address (so a link can carry it).
const windowSelect = document.getElementById("graph-window-select");
const fromAddress = new URLSearchParams(location.search).get("window");
if (fromAddress && /^[0-9]+$/.test(fromAddress)) {
  if (![...windowSelect.options].some((o) => o.value === fromAddress)) windowSelect.append(el("option", { value: fromAddress }, fromAddress + " s"));
  windowSelect.value = fromAddress;
}
windowSelect.addEventListener("change", () => refresh());

const SOURCES = {
  graph: () => "/api/v1/graph?window=" + encodeURIComponent(windowSelect.value),
  proxies: "/api/v1/proxies",
  routes: () => "/api/v1/routes?window=" + encodeURIComponent(windowSelect.value),
  config: "/api/v1/config",
  services: "/api/v1/services",
  workloads: "/api/v1/workloads",
};

async function refresh() {
  const names = Object.keys(SOURCES);
  const path = (n) => (typeof SOURCES[n] === "function" ? SOURCES[n]() : SOURCES[n]);
  const results = await Promise.allSettled(names.map((n) => getJson(path(n))));
  const got = {};
  let failures = 0;
  results.forEach((result, i) => {
    const name = names[i];
    if (result.status === "fulfilled") {
      got[name] = result.value;
      showError(name, "");
    } else {
      failures += 1;
      // Keep the last picture on screen: a blip should not blank the page.
      showError(name, "Cannot load " + path(name) + ": " + result.reason.message);
    }
  });
  if (got.proxies) state.proxies = got.proxies;
  if (got.graph) {
    state.graph = got.graph;
    renderGraph(got.graph);
  }
  if (got.routes) fill("routes", routeRows(got.routes), 7, "No named routes carried traffic in the window.");
  if (got.config) fill("config", configRows(got.config, state.proxies), 7, "No config resources.");
  if (got.services) fill("services", serviceRows(got.services), 5, "No services.");
  if (got.workloads) fill("workloads", workloadRows(got.workloads, state.proxies), 9, "No workloads registered.");
  if (state.selected) refreshDetails();
  const time = new Date().toLocaleTimeString();
  document.getElementById("refresh").textContent = failures
    ? "Control plane unreachable at " + time + "; retrying"
    : "Updated " + time;
  document.body.setAttribute("data-refreshed", String(Date.now()));
}

async function loop() {
  // A hidden tab does not poll; it catches up as soon as it is shown again.
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
document.getElementById("tap-form").addEventListener("submit", (ev) => { ev.preventDefault(); startTap(ev.target); });
document.getElementById("tap-stop").addEventListener("click", stopTap);
loop();
