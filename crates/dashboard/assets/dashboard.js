// The dashboard's first page: services, workloads and config resources from the control plane's
// JSON API, refreshed every 2 s. Everything is built with DOM calls and textContent (never
// innerHTML), so names from config files cannot inject markup.
"use strict";

const REFRESH_MS = 2000;
const TIMEOUT_MS = 1800;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
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
    ? rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", {}, cell))))
    : [el("tr", {}, el("td", { colspan: String(columns), class: "empty" }, emptyText))];
  body.replaceChildren(...fresh);
  document.getElementById(id + "-count").textContent = "(" + rows.length + ")";
}

function showError(id, message) {
  const node = document.getElementById(id + "-error");
  node.hidden = !message;
  node.textContent = message || "";
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

function seen(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return "just now";
  return Math.round(ms / 1000) + " s ago";
}

function workloadRows(workloads) {
  return workloads.map((w) => [
    w.namespace,
    el("strong", {}, w.name),
    el("code", {}, w.identity || w.service_account || ""),
    pairs(w.labels),
    el("code", {}, w.inbound || ""),
    w.admin ? el("code", {}, w.admin) : "",
    w.connected ? badge("connected", "ok") : badge("disconnected", "bad"),
    seen(w.last_seen_ms_ago),
    list((w.subscriptions || []).map((target) => el("code", {}, target))),
    // No version yet is normal: a proxy subscribes to a destination only when traffic needs it.
    w.acked_version === null || w.acked_version === undefined ? el("span", { class: "empty" }, "none yet") : String(w.acked_version),
    w.nacks ? el("span", {}, badge(w.nacks + " NACK" + (w.nacks === 1 ? "" : "s"), "bad"), w.last_nack ? el("div", {}, w.last_nack) : null) : "0",
  ]);
}

const STATUS_KIND = { Accepted: "ok", Invalid: "bad", Ignored: "warn" };

function configRows(config) {
  return ((config && config.resources) || []).map((r) => [
    badge(r.status, STATUS_KIND[r.status] || "warn"),
    r.kind,
    r.namespace || "",
    el("strong", {}, r.name || ""),
    el("code", {}, r.file || ""),
    r.message || "",
  ]);
}

async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, { signal: abort.signal, headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

const SECTIONS = [
  { id: "services", path: "/api/v1/services", rows: serviceRows, columns: 5, empty: "No services." },
  { id: "workloads", path: "/api/v1/workloads", rows: workloadRows, columns: 11, empty: "No workloads registered." },
  { id: "config", path: "/api/v1/config", rows: configRows, columns: 6, empty: "No config resources." },
];

async function refresh() {
  const results = await Promise.allSettled(SECTIONS.map((s) => getJson(s.path)));
  let failures = 0;
  results.forEach((result, i) => {
    const section = SECTIONS[i];
    if (result.status === "fulfilled") {
      showError(section.id, "");
      fill(section.id, section.rows(result.value), section.columns, section.empty);
    } else {
      failures += 1;
      // Keep the last rows on screen: a blip should not blank the page.
      showError(section.id, "Cannot load " + section.path + ": " + result.reason.message);
    }
  });
  const time = new Date().toLocaleTimeString();
  document.getElementById("refresh").textContent = failures
    ? "Control plane unreachable at " + time + "; retrying"
    : "Updated " + time;
}

async function loop() {
  // A hidden tab does not poll; it catches up as soon as it is shown again.
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
loop();
