// sandpit dashboard: one script, no build step, no dependencies. Every number comes
// from the service's API with the viewer's token (kept in this tab's session storage).
"use strict";

// ---- helpers ---------------------------------------------------------------------

const main = document.getElementById("main");
const TOKEN_KEY = "sandpit.token";

/** An element: h("a", {href: "/x", class: "y"}, "text", child...). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const fmt = {
  bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    const digits = i === 0 ? 0 : v < 10 ? 2 : v < 100 ? 1 : 0;
    return (n < 0 ? "-" : "") + v.toFixed(digits) + " " + units[i];
  },
  secs(x) {
    if (x === null || x === undefined) return "—";
    const a = Math.abs(x);
    if (a === 0) return "0 s";
    if (a < 0.001) return (x * 1e6).toFixed(0) + " µs";
    if (a < 1) return (x * 1e3).toFixed(a < 0.01 ? 2 : a < 0.1 ? 1 : 0) + " ms";
    if (a < 60) return x.toFixed(a < 10 ? 2 : 1) + " s";
    return Math.floor(x / 60) + " min " + Math.round(x % 60) + " s";
  },
  pct(x) { return x === null || x === undefined ? "—" : (x < 10 ? x.toFixed(1) : x.toFixed(0)) + " %"; },
  count(x) { return x === null || x === undefined ? "—" : Number(x).toLocaleString(); },
  number(x) {
    if (x === null || x === undefined) return "—";
    const a = Math.abs(x);
    return a >= 1000 ? Math.round(x).toLocaleString() : a >= 10 ? x.toFixed(1) : a >= 0.01 || a === 0 ? x.toFixed(2) : x.toExponential(1);
  },
  time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, {year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  },
};

/** The unit of a result field, for choosing its human form. */
function unitOf(field) {
  if (/(^|_)(memory_(usage|peak|limit|shared)|block_io_(read|write)|network_io_(rx|tx|loopback))$/.test(field)) return "bytes";
  if (/^(execution_time|cpu_user_time|cpu_system_time|elapsed)$/.test(field)) return "seconds";
  if (/_percent$/.test(field)) return "percent";
  return "number";
}

/** A number in human units, its exact value on hover (and to screen readers via title). */
function num(value, unit) {
  if (value === null || value === undefined) return h("span", {class: "muted", title: "null: not measured"}, "—");
  const human = unit === "bytes" ? fmt.bytes(value) : unit === "seconds" ? fmt.secs(value)
    : unit === "percent" ? fmt.pct(value) : unit === "count" ? fmt.count(value) : fmt.number(value);
  const exact = unit === "bytes" ? Number(value).toLocaleString() + " bytes" : unit === "seconds" ? value + " s"
    : unit === "percent" ? value + " %" : String(value);
  return h("span", {title: exact}, human);
}

function when(iso) {
  if (!iso) return h("span", {class: "muted"}, "—");
  return h("time", {datetime: iso, title: iso}, fmt.time(iso));
}

const BAD = new Set(["runtime_error", "signaled", "timeout", "memory_limit", "output_limit", "internal_error"]);
function badge(status) {
  const cls = status === "ok" ? "ok" : status === "running" ? "running" : BAD.has(status) ? "bad" : "warn";
  return h("span", {class: "badge " + cls, "data-status": status}, status || "?");
}

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h("span", {class: "chip"}, k + "=" + v));
}

/** "a=1, b=2" or one pair per line → {a: "1", b: "2"}; throws on a malformed pair. */
function parseLabels(text) {
  const out = {};
  for (const part of text.split(/[\n,]/).map((x) => x.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq < 1) throw new Error(`label "${part}" is not KEY=VALUE`);
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

// ---- the API ---------------------------------------------------------------------

class APIError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

function authHeaders(extra) {
  const t = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({}, extra || {});
  if (t) headers.Authorization = "Bearer " + t;
  return headers;
}

/** A JSON request; a 401 sends the viewer to the sign-in form. */
async function api(path, opts = {}) {
  const r = await fetch(path, Object.assign({}, opts, {headers: authHeaders(opts.headers)}));
  if (r.status === 401) { signIn("The token was refused: sign in again."); throw new APIError(401, null); }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!r.ok) throw new APIError(r.status, body);
  return {body, response: r};
}

/** Reads a text/event-stream response, calling onEvent(name, data) per event, until it ends. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? "" : line.slice(c + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") name = v;
        else if (field === "data") data.push(v);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

/** An event stream of the API (fetch, so that the token goes in a header). Resolves at its end. */
async function stream(path, opts, onEvent, onOpen) {
  const r = await fetch(path, Object.assign({}, opts, {headers: authHeaders(Object.assign({Accept: "text/event-stream"}, opts.headers || {}))}));
  if (r.status === 401) { signIn("The token was refused: sign in again."); throw new APIError(401, null); }
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    throw new APIError(r.status, body);
  }
  if (onOpen) onOpen(r);
  await readEvents(r, onEvent);
}

const isAbort = (e) => e && (e.name === "AbortError" || e.code === 20);

// ---- page life -------------------------------------------------------------------

/** What the current page must stop when the viewer leaves it (streams, timers). */
let pageScope = null;
class Scope {
  constructor() { this.controller = new AbortController(); this.timers = []; }
  get signal() { return this.controller.signal; }
  every(ms, f) { this.timers.push(setInterval(f, ms)); }
  close() { this.controller.abort(); this.timers.forEach(clearInterval); }
  get closed() { return this.controller.signal.aborted; }
}

function navigate(url, replace) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a[data-nav]");
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

function setPage(title, page, ...content) {
  document.title = title + " · sandpit";
  for (const a of document.querySelectorAll(".top nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  main.replaceChildren(...content);
  rendered(page);
}

/** Marks the moment a page shows its data (the last mark counts: scripts/bench-ui). */
function rendered(page) { performance.mark("sandpit:page", {detail: page}); }

function failure(e) {
  return h("p", {class: "error", role: "alert"}, e instanceof APIError ? `${e.message} (${e.status}${e.code ? " " + e.code : ""})` : String(e.message || e));
}

async function route() {
  if (pageScope) pageScope.close();
  const scope = pageScope = new Scope();
  const path = location.pathname;
  if (!sessionStorage.getItem(TOKEN_KEY) && (await serviceInfo()).token_required) { signIn(); return; }
  document.getElementById("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  startHealth();
  startServiceEvents();
  let m;
  try {
    if (path === "/ui/" || path === "/ui") await runsPage(scope);
    else if ((m = path.match(/^\/ui\/runs\/(\d+)$/))) await runPage(scope, Number(m[1]));
    else if (path === "/ui/trends") await trendsPage(scope);
    else if (path === "/ui/new") await newRunPage(scope);
    else setPage("Not found", "", h("h1", {}, "No such page"), h("p", {}, h("a", {href: "/ui/", "data-nav": true}, "Back to the runs")));
  } catch (e) {
    if (!isAbort(e) && !(e instanceof APIError && e.status === 401)) main.append(failure(e));
  }
}

// ---- sign-in ---------------------------------------------------------------------

let info = null;
async function serviceInfo() {
  if (!info) {
    const r = await fetch("/health");
    info = await r.json();
  }
  return info;
}

function signIn(message) {
  if (pageScope) pageScope.close();
  stopBackground();
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("signout").hidden = true;
  const input = h("input", {type: "password", id: "token", name: "token", autocomplete: "current-password", required: true});
  const note = h("p", {class: "error", role: "alert"}, message || "");
  const form = h("form", {onsubmit: async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    const r = await fetch("/executions?limit=1", {headers: {Authorization: "Bearer " + token}});
    if (r.status === 401) { note.textContent = "That token was refused."; input.select(); return; }
    sessionStorage.setItem(TOKEN_KEY, token);
    route();
  }},
  // (a username field, hidden, lets password managers and screen readers name the form)
  h("input", {type: "text", name: "username", autocomplete: "username", value: "sandpit", hidden: true, "aria-hidden": "true", tabindex: "-1"}),
  h("label", {for: "token"}, "API token (serve's --token-file or SANDPIT_TOKEN)", input),
  h("button", {type: "submit"}, "Sign in"), note);
  setPage("Sign in", "", h("div", {class: "login card"}, h("h1", {}, "Sign in"),
    h("p", {class: "muted"}, "The token stays in this browser tab (session storage) and is sent only to this service."), form));
  input.focus();
}

document.getElementById("signout").addEventListener("click", () => { signIn("Signed out."); });

// ---- health (every page) -----------------------------------------------------------

let healthTimer = null;
let lastHealth = null;
function stopBackground() {
  if (healthTimer) { clearInterval(healthTimer); healthTimer = null; }
  if (serviceEvents) { serviceEvents.abort(); serviceEvents = null; }
}

function startHealth() {
  if (healthTimer) return;
  const tick = async () => {
    try {
      const [hr, m] = await Promise.all([fetch("/health"), fetch("/metrics", {headers: authHeaders()})]);
      const hb = await hr.json();
      const text = m.ok ? await m.text() : "";
      const metric = (re) => text.split("\n").filter((l) => re.test(l)).reduce((a, l) => a + Number(l.split(" ").pop()), 0);
      lastHealth = {hb, rejections: metric(/^sandpit_rejections_total /), alerts: metric(/^sandpit_alerts_total\{/)};
      renderHealth();
    } catch (e) { /* the next tick retries */ }
  };
  tick();
  healthTimer = setInterval(tick, 3000);
}

/** The strip at the top: capacity now, refusals and alerts since the service started. */
function renderHealth() {
      if (!lastHealth) return;
      const {hb, rejections, alerts} = lastHealth;
      const el = document.getElementById("health");
      const item = (label, value, title, cls) => h("span", {title, class: cls}, label + " ", h("b", {}, value));
      el.replaceChildren(
        h("span", {title: serviceEventsLive ? "live: runs appear as they start" : "not connected to the event stream"},
          h("span", {class: "dot" + (serviceEventsLive ? " on" : "")}), serviceEventsLive ? "live" : "offline"),
        item("slots", `${hb.in_flight}/${hb.max_concurrency}`, "runs executing / serve --max-concurrency"),
        item("queue", `${hb.queued}/${hb.queue_size}`, "requests waiting for a slot / serve --queue-size"),
        item("rejected", String(rejections), "requests refused with 429 since the service started"),
        item("alerts", String(alerts), "runs that matched an alert rule (serve --alert) since the service started", alerts > 0 ? "alerting" : null),
        item("sessions", `${hb.sessions.live}/${hb.sessions.max}`, "live sessions / serve --max-sessions"),
        item("cgroup", hb.cgroup_version || "none", "the cgroup hierarchy runs are measured with"),
        item("node", hb.node || "?", "this service's node name (serve --node-name); GET /nodes lists every node on this log"));
}

// ---- GET /events: runs starting and ending, service-wide ---------------------------

let serviceEvents = null;
let serviceEventsLive = false;
let serviceEventsLost = false;  // the stream dropped since it last opened
const runListeners = new Set();

function startServiceEvents() {
  if (serviceEvents) return;
  const controller = serviceEvents = new AbortController();
  const connect = async (delay) => {
    if (controller.signal.aborted) return;
    try {
      await stream("/events", {signal: controller.signal}, (name, data) => {
        for (const f of runListeners) f(name, data);
      }, () => {
        serviceEventsLive = true;
        renderHealth();
        // Back after a drop: what ended meanwhile is only in the log, so pages reload.
        if (serviceEventsLost) { serviceEventsLost = false; for (const f of runListeners) f("reconnected", null); }
      });
      delay = 500;  // it ended cleanly (the service is stopping): reconnect soon
    } catch (e) {
      if (isAbort(e) || controller.signal.aborted) return;
    }
    serviceEventsLive = false;
    serviceEventsLost = true;
    renderHealth();
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
  connect(500);
}

// ---- the runs -----------------------------------------------------------------------

const STATUSES = ["running", "ok", "runtime_error", "signaled", "timeout", "memory_limit", "output_limit", "internal_error", "cancelled", "interrupted"];

function filterQuery(params) {
  const q = new URLSearchParams();
  for (const k of ["status", "container_name", "code_sha256"]) if (params.get(k)) q.set(k, params.get(k));
  for (const k of ["since", "until"]) if (params.get(k)) q.set(k, new Date(params.get(k)).toISOString());
  if (params.get("labels")) for (const [k, v] of Object.entries(parseLabels(params.get("labels")))) q.append("label." + k, v);
  return q;
}

function filterForm(params, extra, onSubmit) {
  const field = (name, label, input) => h("label", {}, label, input);
  const local = (iso) => iso ? iso.slice(0, 16) : "";
  const status = h("select", {name: "status"}, h("option", {value: ""}, "any"),
    STATUSES.map((st) => h("option", {value: st, selected: params.get("status") === st}, st)));
  return h("form", {class: "filters", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(e.target)) if (String(v).trim()) q.set(k, String(v).trim());
    onSubmit(q);
  }},
  field("status", "Status", status),
  field("container_name", "Name", h("input", {name: "container_name", value: params.get("container_name") || "", size: 14})),
  field("labels", "Labels (key=value, …)", h("input", {name: "labels", value: params.get("labels") || "", size: 18, placeholder: "suite=hw1"})),
  field("since", "Since", h("input", {type: "datetime-local", name: "since", value: local(params.get("since"))})),
  field("until", "Until", h("input", {type: "datetime-local", name: "until", value: local(params.get("until"))})),
  extra || [],
  h("button", {type: "submit"}, "Apply"),
  h("a", {href: location.pathname, "data-nav": true}, "Clear"));
}

function cancelButton(id, after) {
  const b = h("button", {type: "button", class: "danger", "data-cancel": id, onclick: async () => {
    b.disabled = true;
    b.textContent = "Cancelling…";
    try { await api(`/executions/${id}`, {method: "DELETE"}); } catch (e) { if (!(e instanceof APIError && e.status === 409)) alert(e.message); }
    if (after) after();
  }}, "Cancel");
  return b;
}

function runRow(r, scope) {
  const running = r.status === "running";
  const wall = running ? h("span", {"data-since": r.started_at || r.created_at}, "…") : num(r.execution_time, "seconds");
  const cpu = r.cpu_user_time === null || r.cpu_user_time === undefined ? null : r.cpu_user_time + (r.cpu_system_time || 0);
  return h("tr", {"data-id": r.id},
    h("td", {class: "num"}, h("a", {href: `/ui/runs/${r.id}`, "data-nav": true}, "#" + r.id)),
    h("td", {}, badge(r.status)),
    h("td", {}, r.container_name || ""),
    h("td", {}, labelChips(r.labels)),
    h("td", {}, when(r.started_at || r.created_at)),
    h("td", {class: "num"}, wall),
    h("td", {class: "num"}, num(cpu, "seconds")),
    h("td", {class: "num"}, num(r.memory_peak, "bytes")),
    h("td", {class: "num hide-sm"}, num(r.block_io_read, "bytes"), " / ", num(r.block_io_write, "bytes")),
    h("td", {}, running ? cancelButton(r.id) : ""));
}

function tickRunning(table) {
  for (const el of table.querySelectorAll("[data-since]")) {
    el.textContent = fmt.secs(Math.max(0, (Date.now() - new Date(el.dataset.since)) / 1000));
  }
}

async function runsPage(scope) {
  const params = new URLSearchParams(location.search);
  let query;
  try { query = filterQuery(params); } catch (e) { setPage("Runs", "runs", h("h1", {}, "Runs"), failure(e)); return; }
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  query.set("limit", "50");
  const {body} = await api("/executions?" + query, {signal: scope.signal});
  const tbody = h("tbody", {}, body.executions.map((r) => runRow(r, scope)));
  const table = h("table", {id: "runs"},
    h("caption", {class: "muted", hidden: true}, "Runs, newest first"),
    h("thead", {}, h("tr", {}, ["ID", "Status", "Name", "Labels", "Started", "Wall", "CPU", "Memory peak", "I/O read / write", ""]
      .map((t, i) => h("th", {scope: "col", class: [0, 5, 6, 7].includes(i) ? "num" : i === 8 ? "num hide-sm" : null}, t)))),
    tbody);
  const pager = h("div", {class: "pager"},
    params.get("cursor") ? h("a", {href: "?" + withoutCursor(params), "data-nav": true}, "← Newest") : null,
    body.next_cursor !== null ? h("a", {href: "?" + withCursor(params, body.next_cursor), "data-nav": true, rel: "next"}, "Older →") : null,
    h("span", {class: "muted", id: "shown"}, `${body.executions.length} shown`));
  setPage("Runs", "runs", h("h1", {}, "Runs"),
    filterForm(params, null, (q) => navigate("/ui/?" + q)),
    body.executions.length ? h("div", {class: "scroll"}, table) : h("p", {class: "muted", id: "empty"}, "No runs match."),
    pager);
  tickRunning(table);
  scope.every(500, () => tickRunning(table));

  // Live: new runs on the first page, finished ones updated in place.
  const firstPage = !params.get("cursor");
  const wanted = (ev) => {
    if (params.get("status") && params.get("status") !== "running") return false;
    if (params.get("container_name") && params.get("container_name") !== ev.container_name) return false;
    if (params.get("code_sha256") || params.get("until")) return false;
    const labels = params.get("labels") ? parseLabels(params.get("labels")) : {};
    return Object.entries(labels).every(([k, v]) => (ev.labels || {})[k] === v);
  };
  const listener = async (name, data) => {
    if (scope.closed) return;
    if (name === "reconnected") { route(); return; }
    if (name === "run_started" && firstPage && wanted(data) && !tbody.querySelector(`tr[data-id="${data.execution_id}"]`)) {
      const row = runRow({id: data.execution_id, status: "running", container_name: data.container_name, labels: data.labels, started_at: data.started_at}, scope);
      const rows = [...tbody.children];
      const before = rows.find((tr) => Number(tr.dataset.id) < data.execution_id);
      tbody.insertBefore(row, before || null);
      if (!table.isConnected) { const empty = document.getElementById("empty"); if (empty) empty.replaceWith(h("div", {class: "scroll"}, table)); }
      tickRunning(table);
      document.getElementById("shown").textContent = `${tbody.children.length} shown`;
    } else if (name === "run_finished") {
      const tr = tbody.querySelector(`tr[data-id="${data.execution_id}"]`);
      if (!tr) return;
      try {
        const {body: rec} = await api(`/executions/${data.execution_id}`, {signal: scope.signal});
        if (params.get("status") === "running") tr.remove(); else tr.replaceWith(runRow(rec, scope));
      } catch (e) { /* shown on the next load */ }
    }
  };
  runListeners.add(listener);
  scope.signal.addEventListener("abort", () => runListeners.delete(listener));
}

function withCursor(params, cursor) { const q = new URLSearchParams(params); q.set("cursor", cursor); return q; }
function withoutCursor(params) { const q = new URLSearchParams(params); q.delete("cursor"); return q; }

// ---- charts (plain SVG) -------------------------------------------------------------

/**
 * A line chart. series: [{name, points: [[x, y], ...]}]; opts: {title, unit (of y), xUnit
 * ("seconds" elapsed, or "time" for epoch ms), limit: {value, name}}. Hovering (or
 * focusing and using the arrow keys) shows the exact values at the nearest x.
 */
function lineChart(series, opts) {
  const W = 400, H = 180, L = 56, R = 8, T = 8, B = 22;
  const all = series.flatMap((s) => s.points);
  const key = series.map((sr, i) => h("span", {class: "key"}, h("i", {class: "c" + (i + 1)}), sr.name));
  if (opts.limit && opts.limit.value !== null && opts.limit.value !== undefined) key.push(h("span", {class: "key"}, h("i", {class: "climit"}), opts.limit.name));
  const fig = h("figure", {class: "chart", "data-chart": opts.id || opts.title});
  const caption = h("figcaption", {}, opts.title, key);
  if (!all.length) {
    fig.append(caption, h("p", {class: "muted"}, opts.empty || "No samples."));
    return fig;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) { const pad = opts.xUnit === "time" ? 1800e3 : 0.5; x0 -= pad; x1 += pad; }
  const top = Math.max(...all.map((p) => p[1]), opts.minTop || 0);
  // A limit far above the data would flatten it: then the key gives it, not the axis.
  const limit = opts.limit && opts.limit.value && opts.limit.value <= top * 4 ? opts.limit.value : null;
  if (opts.limit && opts.limit.value && !limit) key[key.length - 1].append(" " + (opts.unit === "bytes" ? fmt.bytes(opts.limit.value) : opts.limit.value) + " (off scale)");
  let y1 = Math.max(top, limit || 0);
  if (y1 <= 0) y1 = 1;
  y1 *= 1.05;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = (y) => T + (1 - y / y1) * (H - T - B);
  const yFmt = (v) => opts.unit === "bytes" ? fmt.bytes(v) : opts.unit === "percent" ? fmt.pct(v) : opts.unit === "seconds" ? fmt.secs(v)
    : opts.unit === "count" ? fmt.count(Math.round(v * 10) / 10) : fmt.number(v);
  const xFmt = (v) => opts.xUnit === "time" ? new Date(v).toLocaleString(undefined, {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"}) : fmt.secs(v);
  const svg = s("svg", {class: "plot", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${opts.title}: ${series.map((sr) => `${sr.name} ${sr.points.length} points, last ${sr.points.length ? yFmt(sr.points[sr.points.length - 1][1]) : "none"}, max ${sr.points.length ? yFmt(Math.max(...sr.points.map((p) => p[1]))) : "none"}`).join("; ")}`});
  for (let i = 0; i <= 3; i++) {
    const v = y1 / 1.05 * i / 3;
    svg.append(s("line", {class: "grid", x1: L, x2: W - R, y1: Y(v), y2: Y(v)}), s("text", {x: L - 4, y: Y(v) + 3, "text-anchor": "end"}, yFmt(v)));
  }
  svg.append(s("text", {x: L, y: H - 6}, xFmt(x0)), s("text", {x: W - R, y: H - 6, "text-anchor": "end"}, xFmt(x1)));
  if (limit) svg.append(s("line", {class: "limit", x1: L, x2: W - R, y1: Y(limit), y2: Y(limit)}));
  series.forEach((sr, i) => {
    if (!sr.points.length) return;
    const d = sr.points.map((p, j) => (j ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    svg.append(s("path", {class: "line c" + (i + 1), d}));
    // Few points: each one shown (a lone point draws no line).
    if (sr.points.length <= 40) for (const p of sr.points) svg.append(s("circle", {class: "pt c" + (i + 1), cx: X(p[0]), cy: Y(p[1]), r: 2.2}));
  });
  const guide = s("line", {class: "guide", y1: T, y2: H - B, visibility: "hidden"});
  svg.append(guide);
  const tip = h("div", {class: "tip", hidden: true});
  const xs = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
  let at = -1;
  const show = (idx) => {
    at = Math.max(0, Math.min(xs.length - 1, idx));
    const x = xs[at];
    guide.setAttribute("x1", X(x)); guide.setAttribute("x2", X(x)); guide.setAttribute("visibility", "visible");
    const lines = [xFmt(x)];
    for (const sr of series) {
      const p = sr.points.find((q) => q[0] === x);
      if (p) lines.push(`${sr.name}: ${yFmt(p[1])} (${opts.unit === "bytes" ? Number(p[1]).toLocaleString() + " B" : p[1]})`);
    }
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    const left = X(x) / W * fig.clientWidth;
    tip.style.left = Math.min(Math.max(0, left - 60), Math.max(0, fig.clientWidth - 200)) + "px";
  };
  svg.addEventListener("pointermove", (e) => {
    const box = svg.getBoundingClientRect();
    const x = x0 + ((e.clientX - box.left) / box.width * W - L) / (W - L - R) * (x1 - x0);
    let best = 0;
    for (let i = 1; i < xs.length; i++) if (Math.abs(xs[i] - x) < Math.abs(xs[best] - x)) best = i;
    show(best);
  });
  const hide = () => { tip.hidden = true; guide.setAttribute("visibility", "hidden"); };
  svg.addEventListener("pointerleave", hide);
  fig.tabIndex = 0;
  fig.setAttribute("aria-describedby", "chart-help");
  fig.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") { e.preventDefault(); show(at < 0 ? xs.length - 1 : at + (e.key === "ArrowRight" ? 1 : -1)); }
    if (e.key === "Escape") hide();
  });
  fig.addEventListener("blur", hide);
  fig.append(caption, svg, tip);
  return fig;
}

/** The charts of a run's samples (and custom metric points), rebuilt as they grow. */
class RunCharts {
  constructor(container, memoryLimit) {
    this.container = container;
    this.samples = [];
    this.points = [];
    this.memoryLimit = memoryLimit;
    this.pending = false;
  }
  add(sample) { this.samples.push(sample); this.schedule(); }
  addPoint(p) { this.points.push(p); this.schedule(); }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    setTimeout(() => { this.pending = false; this.render(); }, 200);
  }
  render() {
    const S = this.samples;
    const line = (name, f) => ({name, points: S.filter((x) => f(x) !== null && f(x) !== undefined).map((x) => [x.elapsed, f(x)])});
    const charts = [
      lineChart([line("CPU", (x) => x.cpu_percent)], {title: "CPU", id: "cpu", unit: "percent", minTop: 100, empty: "No samples stored for this run (stream it, or ask for \"samples\": true)."}),
      lineChart([line("usage", (x) => x.memory_usage), line("peak", (x) => x.memory_peak)], {title: "Memory", id: "memory", unit: "bytes", limit: {value: this.memoryLimit, name: "limit"}}),
      lineChart([line("read", (x) => x.block_io_read), line("write", (x) => x.block_io_write)], {title: "Block I/O (cumulative)", id: "io", unit: "bytes", minTop: 4096}),
      lineChart([line("tasks", (x) => x.pids_count)], {title: "Tasks", id: "tasks", unit: "count", minTop: 3}),
    ];
    const names = [...new Set(this.points.map((p) => p.name))];
    for (const n of names) {
      const pts = this.points.filter((p) => p.name === n);
      // (stored points may leave the unit to the row's custom_metrics)
      const unit = pts.map((p) => p.unit).find(Boolean) || ((this.units || {})[n] || {}).unit;
      charts.push(lineChart([{name: n, points: pts.map((p) => [p.t, p.value])}], {title: `${n}${unit ? " (" + unit + ")" : ""}`, id: "custom-" + n, unit: unit === "bytes" ? "bytes" : unit === "s" ? "seconds" : "number"}));
    }
    this.container.replaceChildren(...charts);
  }
}

// ---- one run ------------------------------------------------------------------------

const FACTS = [
  ["status", "Status"], ["exit_code", "Exit code", "count"], ["execution_time", "Wall", "seconds"], ["cpu_user_time", "CPU user", "seconds"],
  ["cpu_system_time", "CPU system", "seconds"], ["cpu_percent", "CPU", "percent"], ["memory_peak", "Memory peak", "bytes"],
  ["memory_usage", "Memory at end", "bytes"], ["memory_limit", "Memory limit", "bytes"], ["block_io_read", "Block read", "bytes"],
  ["block_io_write", "Block write", "bytes"], ["network_io_rx", "Network in", "bytes"], ["network_io_tx", "Network out", "bytes"],
  ["pids_count", "Tasks", "count"], ["started_at", "Started"], ["finished_at", "Finished"],
];

function facts(r) {
  return h("dl", {class: "facts"}, FACTS.filter(([k]) => k in r).map(([k, label, unit]) => h("div", {"data-field": k},
    h("dt", {}, label),
    h("dd", {}, k === "status" ? badge(r[k]) : k.endsWith("_at") ? when(r[k]) : num(r[k], unit || "number")))));
}

function allFields(r) {
  const skip = new Set(["code", "output", "error", "results", "exception", "files"]);
  const rows = Object.keys(r).filter((k) => !skip.has(k)).sort().map((k) => {
    const v = r[k];
    const shown = v === null ? h("span", {class: "muted"}, "null") : typeof v === "number" ? num(v, unitOf(k))
      : typeof v === "object" ? h("code", {}, JSON.stringify(v)) : String(v);
    return h("tr", {}, h("th", {scope: "row"}, k), h("td", {class: typeof v === "number" ? "num" : null}, shown),
      h("td", {class: "muted"}, typeof v === "number" ? String(v) : ""));
  });
  return h("details", {}, h("summary", {}, "Every result field (exact values)"),
    h("div", {class: "scroll"}, h("table", {id: "fields"}, h("thead", {}, h("tr", {}, h("th", {}, "field"), h("th", {class: "num"}, "value"), h("th", {}, "exact"))), h("tbody", {}, rows))));
}

function richResults(r) {
  const out = [];
  for (const res of r.results || []) {
    const data = res.data || res;
    if (data["image/png"]) out.push(h("img", {src: "data:image/png;base64," + data["image/png"], alt: "figure from the run"}));
    else if (data["text/plain"]) out.push(h("pre", {}, data["text/plain"]));
  }
  return out.length ? [h("h2", {}, "Results"), h("div", {class: "images"}, out)] : [];
}

async function runPage(scope, id) {
  let {body: r} = await api(`/executions/${id}`, {signal: scope.signal});
  const header = h("h1", {}, `Run #${id}`, r.container_name ? h("span", {class: "muted"}, r.container_name) : null, badge(r.status));
  const chartBox = h("div", {class: "charts", id: "charts"});
  const output = h("pre", {id: "output"}, r.output || "");
  const errorBox = h("pre", {id: "error", class: "err", hidden: !r.error}, r.error || "");
  const factsBox = h("div", {id: "facts"}, facts(r));
  const fieldsBox = h("div", {}, allFields(r));
  const richBox = h("div", {}, richResults(r));
  const labels = h("p", {}, labelChips(r.labels), r.code_sha256 ? h("a", {href: `/ui/?code_sha256=${r.code_sha256}`, "data-nav": true, title: r.code_sha256}, "runs of this code") : null);
  setPage(`Run #${id}`, "runs", header, labels, factsBox,
    h("p", {id: "chart-help", class: "muted"}, "Hover a chart, or focus it and use ← →, for exact values."),
    chartBox, richBox,
    h("h2", {}, "Output"), output, h("h2", {}, "Error"), errorBox,
    h("h2", {}, "Code"), h("pre", {id: "code"}, r.code || ""), h("h2", {}, "Fields"), fieldsBox);
  const charts = new RunCharts(chartBox, r.memory_limit);
  charts.units = r.custom_metrics;
  if (r.status !== "running") {
    const [samples, points] = await Promise.all([
      api(`/executions/${id}/samples`, {signal: scope.signal}), api(`/executions/${id}/custom-metrics`, {signal: scope.signal})]);
    samples.body.samples.forEach((x) => charts.samples.push(x));
    points.body.points.forEach((p) => charts.points.push(p));
    charts.render();
    rendered("run");
    return;
  }
  // Running: the charts and the output grow from its event stream.
  const cancel = cancelButton(id);
  header.append(cancel);
  output.textContent = "";
  charts.render();
  try {
    await stream(`/executions/${id}/events`, {signal: scope.signal}, (name, data) => {
      if (name === "sample") charts.add(data);
      else if (name === "metric") charts.addPoint(data);
      else if (name === "stdout") output.append(data.data !== undefined ? data.data : "[binary]");
      else if (name === "stderr") { errorBox.hidden = false; errorBox.append(data.data !== undefined ? data.data : "[binary]"); }
      else if (name === "result") {
        cancel.remove();
        header.querySelector(".badge").replaceWith(badge(data.status));
      }
    });
  } catch (e) {
    if (isAbort(e)) return;
    if (!(e instanceof APIError && e.status === 409)) throw e;
  }
  if (scope.closed) return;
  // Finished: the logged record (its fields are those of the log row).
  ({body: r} = await api(`/executions/${id}`, {signal: scope.signal}));
  header.querySelector(".badge").replaceWith(badge(r.status));
  factsBox.replaceChildren(facts(r));
  fieldsBox.replaceChildren(allFields(r));
  output.textContent = r.output || "";
  errorBox.textContent = r.error || "";
  errorBox.hidden = !r.error;
  richBox.replaceChildren(...richResults(r));
  charts.memoryLimit = r.memory_limit;
  charts.units = r.custom_metrics;
  charts.render();
}

// ---- run code -------------------------------------------------------------------------

const EXAMPLE = `import time, math
for i in range(20):
    s = sum(math.sqrt(k) for k in range(200_000))
    print(f"step {i}: {s:.1f}", flush=True)
    time.sleep(0.05)
`;

async function newRunPage(scope) {
  const code = h("textarea", {id: "code", name: "code", spellcheck: "false", "aria-label": "Python code"}, sessionStorage.getItem("sandpit.draft") || EXAMPLE);
  code.addEventListener("input", () => sessionStorage.setItem("sandpit.draft", code.value));
  const status = h("div", {id: "run-status", class: "row", "aria-live": "polite"});
  const output = h("pre", {id: "output", hidden: true});
  const errorBox = h("pre", {id: "error", class: "err", hidden: true});
  const chartBox = h("div", {class: "charts", id: "charts"});
  const factsBox = h("div", {id: "facts"});
  const runButton = h("button", {type: "submit", id: "run"}, "Run");
  let running = null;
  const form = h("form", {class: "run", onsubmit: async (e) => {
    e.preventDefault();
    if (running) return;
    const f = new FormData(form);
    const body = {code: code.value, stream: true, samples: true};
    try {
      if (f.get("name")) body.container_name = f.get("name");
      if (f.get("time_limit")) body.time_limit = Number(f.get("time_limit"));
      if (f.get("memory_limit")) body.memory_limit = Math.round(Number(f.get("memory_limit")) * 1048576);
      if (f.get("labels")) body.labels = parseLabels(String(f.get("labels")));
    } catch (err) { status.replaceChildren(failure(err)); return; }
    running = new AbortController();
    scope.signal.addEventListener("abort", () => running && running.abort());
    runButton.disabled = true;
    output.textContent = ""; output.hidden = false; errorBox.textContent = ""; errorBox.hidden = true; factsBox.replaceChildren();
    const charts = new RunCharts(chartBox, body.memory_limit || null);
    charts.render();
    let id = null;
    status.replaceChildren(badge("running"));
    try {
      await stream("/execute", {method: "POST", body: JSON.stringify(body), headers: {"Content-Type": "application/json"}, signal: running.signal}, (name, data) => {
        if (name === "sample") charts.add(data);
        else if (name === "metric") charts.addPoint(data);
        else if (name === "stdout") output.append(data.data !== undefined ? data.data : "[binary]");
        else if (name === "stderr") { errorBox.hidden = false; errorBox.append(data.data !== undefined ? data.data : "[binary]"); }
        else if (name === "result") {
          status.replaceChildren(badge(data.status), h("a", {href: `/ui/runs/${id}`, "data-nav": true, id: "run-link"}, `Open run #${id}`));
          factsBox.replaceChildren(facts(data));
          charts.memoryLimit = data.memory_limit;
          charts.render();
        }
      }, (response) => {
        id = response.headers.get("X-Execution-Id");
        status.replaceChildren(badge("running"), h("a", {href: `/ui/runs/${id}`, "data-nav": true}, `#${id}`), cancelButton(id));
      });
    } catch (err) {
      if (!isAbort(err)) status.replaceChildren(failure(err));
    } finally {
      running = null;
      runButton.disabled = false;
    }
  }},
  h("label", {class: "wide"}, "Code (Ctrl+Enter runs it)", code),
  h("label", {}, "Name", h("input", {name: "name", size: 16, placeholder: "optional"})),
  h("label", {}, "Labels (key=value, …)", h("input", {name: "labels", id: "labels", size: 20, placeholder: "suite=demo"})),
  h("label", {}, "Time limit (s)", h("input", {name: "time_limit", type: "number", min: "0.001", max: "300", step: "any", value: "30", size: 6})),
  h("label", {}, "Memory limit (MiB)", h("input", {name: "memory_limit", type: "number", min: "16", max: "16384", step: "1", placeholder: "default", size: 8})),
  runButton);
  code.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });
  setPage("Run code", "new", h("h1", {}, "Run code"), form, status, factsBox,
    h("p", {id: "chart-help", class: "muted"}, "Hover a chart, or focus it and use ← →, for exact values."),
    chartBox, h("h2", {}, "Output"), output, errorBox);
  code.focus();
}

// ---- trends and regressions ---------------------------------------------------------

// The numeric result fields GET /executions/trends takes (its `metric` in openapi.json;
// a test keeps the two lists equal).
const TREND_METRICS = ["execution_time", "exit_code", "cpu_user_time", "cpu_system_time", "cpu_percent", "memory_usage",
  "memory_peak", "memory_percent", "memory_limit", "block_io_read", "block_io_write", "network_io_rx", "network_io_tx",
  "pids_count", "network_io_loopback", "signal", "custom_metrics_rejected", "memory_shared"];

async function trendsPage(scope) {
  const params = new URLSearchParams(location.search);
  const custom = (params.get("custom") || "").trim();
  const metric = custom ? "custom." + custom : params.get("metric") || "execution_time";
  const bucket = params.get("bucket") || "1h";
  const metrics = TREND_METRICS;
  const extra = [
    h("label", {}, "Metric", h("select", {name: "metric", id: "metric"}, metrics.map((m) => h("option", {value: m, selected: m === metric}, m)))),
    h("label", {}, "or custom metric", h("input", {name: "custom", value: custom, placeholder: "name the runs report", size: 14})),
    h("label", {}, "Bucket", h("select", {name: "bucket"}, ["1m", "1h", "1d"].map((b) => h("option", {value: b, selected: b === bucket}, b)))),
    h("label", {}, "Regressions by", h("input", {name: "by", value: params.get("by") || "", placeholder: "code_sha256 or label.KEY", size: 16})),
    h("label", {}, "recent runs", h("input", {name: "window", type: "number", min: 5, max: 1000, value: params.get("window") || "", placeholder: "20", size: 5})),
    h("label", {}, "baseline runs", h("input", {name: "baseline", type: "number", min: 5, max: 10000, value: params.get("baseline") || "", placeholder: "80", size: 5})),
    h("label", {}, "α", h("input", {name: "alpha", type: "number", min: "0.000001", max: "0.5", step: "any", value: params.get("alpha") || "", placeholder: "0.001", size: 6})),
  ];
  const form = filterForm(params, extra, (q) => navigate("/ui/trends?" + q));
  const chartBox = h("div", {class: "charts"});
  const table = h("div");
  const regress = h("div", {id: "regressions"});
  setPage("Trends", "trends", h("h1", {}, "Trends"), form, chartBox, table, h("h2", {}, "Regressions"), regress);
  let q;
  try { q = filterQuery(params); } catch (e) { chartBox.append(failure(e)); return; }
  q.set("metric", metric);
  const tq = new URLSearchParams(q);
  tq.set("bucket", bucket);
  const rq = new URLSearchParams(q);
  for (const k of ["by", "window", "baseline", "alpha"]) if (params.get(k)) rq.set(k, params.get(k));
  const [trend, reg] = await Promise.allSettled([
    api("/executions/trends?" + tq, {signal: scope.signal}), api("/executions/regressions?" + rq, {signal: scope.signal})]);
  if (trend.status === "rejected") { chartBox.append(failure(trend.reason)); }
  else {
    const t = trend.value.body;
    const unit = unitOf(metric);
    const pts = (k) => t.buckets.map((b) => [new Date(b.start).getTime(), b[k]]);
    chartBox.append(lineChart([{name: "p50", points: pts("p50")}, {name: "p95", points: pts("p95")}, {name: "max", points: pts("max")}],
      {title: `${metric} per ${bucket} (${t.unit})`, id: "trend", unit: unit === "number" ? "number" : unit, xUnit: "time", empty: "No finished runs in this window."}),
    lineChart([{name: "runs", points: t.buckets.map((b) => [new Date(b.start).getTime(), b.count])}], {title: "Runs per " + bucket, id: "count", unit: "count", xUnit: "time", empty: "No runs."}));
    table.append(h("details", {}, h("summary", {}, `The ${t.buckets.length} buckets (exact values)`),
      h("div", {class: "scroll"}, h("table", {}, h("thead", {}, h("tr", {}, ["bucket start", "runs", "p50", "p95", "max"].map((x, i) => h("th", {class: i ? "num" : null}, x)))),
        h("tbody", {}, t.buckets.map((b) => h("tr", {}, h("td", {}, when(b.start)), h("td", {class: "num"}, b.count),
          ...["p50", "p95", "max"].map((k) => h("td", {class: "num"}, num(b[k], unit))))))))));
  }
  rendered("trends");
  if (reg.status === "rejected") { regress.append(failure(reg.reason)); return; }
  const rb = reg.value.body;
  const unit = unitOf(metric);
  regress.append(h("p", {class: "muted"}, `${rb.checked} group(s) by ${rb.by} had enough runs (${rb.window} recent against ${rb.baseline} before them); ` +
    `a regression is a recent median at least ${rb.min_ratio}× the baseline's, significant at α = ${rb.alpha}.`));
  if (!rb.regressions.length) { regress.append(h("p", {}, "No regressions.")); return; }
  const link = (fp) => rb.by === "code_sha256" ? `/ui/?code_sha256=${fp}` : `/ui/?labels=${encodeURIComponent(rb.by.slice(6) + "=" + fp)}`;
  regress.append(h("div", {class: "scroll"}, h("table", {id: "regression-table"}, h("thead", {}, h("tr", {}, ["group", "baseline median", "recent median", "ratio", "p", "latest run"].map((x, i) => h("th", {class: i ? "num" : null}, x)))),
    h("tbody", {}, rb.regressions.map((g) => h("tr", {},
      h("td", {}, h("a", {href: link(g.fingerprint), "data-nav": true, title: g.fingerprint}, g.fingerprint.length > 16 ? g.fingerprint.slice(0, 12) + "…" : g.fingerprint)),
      h("td", {class: "num"}, num(g.baseline_median, unit)), h("td", {class: "num"}, num(g.recent_median, unit)),
      h("td", {class: "num"}, g.ratio === null ? "—" : g.ratio.toFixed(2) + "×"), h("td", {class: "num"}, g.p_value.toExponential(1)),
      h("td", {class: "num"}, h("a", {href: `/ui/runs/${g.latest_id}`, "data-nav": true}, "#" + g.latest_id))))))));
}

route();
