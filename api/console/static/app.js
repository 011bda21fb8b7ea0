// ctsyncd web console. Plain JavaScript, no dependencies. The session is an
// HttpOnly cookie; the CSRF token is kept in this variable only.
"use strict";

const state = {
  csrf: "", role: "", name: "",
  sort: "src", order: "asc", offset: 0, limit: 50,
  filter: {}, source: "kernel",
  history: [], // {t, rate, lag} of the last 5 minutes
  prev: null,  // previous counters {t, msgs}
  timer: null,
};
const HISTORY_MS = 5 * 60 * 1000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401 && path !== "/api/v1/login") { showLogin(); }
  if (!r.ok) {
    const msg = data && data.error ? data.error : r.status + " " + r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

// ---- login ----

function showLogin(msg) {
  clearInterval(state.timer);
  state.timer = null;
  $("main-view").hidden = true;
  $("logout").hidden = true;
  $("hdr-user").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = msg || "";
  $("login-token").focus();
}

function loggedIn(info) {
  state.csrf = info.csrf_token || "";
  state.role = info.role;
  state.name = info.name;
  document.body.classList.toggle("admin", info.role === "admin");
  $("hdr-user").textContent = info.name + " (" + info.role + ")";
  $("logout").hidden = false;
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  refreshStatus();
  loadFlows();
  if (!state.timer) state.timer = setInterval(refreshStatus, 2000);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const tok = $("login-token");
  try {
    const info = await api("POST", "/api/v1/login", { token: tok.value });
    tok.value = "";
    loggedIn(info);
  } catch (e) {
    tok.value = "";
    $("login-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/v1/logout"); } catch (e) { /* gone anyway */ }
  state.csrf = "";
  showLogin("Logged out.");
});

// ---- cluster view ----

function fmtDur(ns) {
  if (ns === undefined || ns === null) return "–";
  const ms = ns / 1e6;
  if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + " ms";
  return (ms / 1000).toFixed(1) + " s";
}

function fmtAgo(iso) {
  if (!iso || iso.startsWith("0001-")) return "never";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 1) return "just now";
  if (s < 120) return Math.round(s) + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function badge(text, cls) { return el("span", { class: "badge " + (cls || "") }, text); }

function card(title, badges, rows, attrs) {
  const dl = el("dl");
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  return el("div", Object.assign({ class: "card" }, attrs || {}), el("h3", {}, title, ...badges), dl);
}

// peersOf returns the peers as a list, from the status document's stats.
function peersOf(s) {
  if (Array.isArray(s.peers)) return s.peers;
  const m = (s.stats && s.stats.peers) || {};
  return Object.keys(m).sort().map((k) => Object.assign({ name: k }, m[k]));
}

function renderStatus(s) {
  $("hdr-node").textContent = s.node + " · " + (s.version || "");
  const nodes = $("nodes");
  nodes.replaceChildren();
  const role = String(s.role || "unknown");
  const ready = s.ready === undefined ? null : s.ready;
  const peers = peersOf(s);
  const alive = peers.filter((p) => p.up).length;
  const lc = s.last_commit;
  const sync = s.sync || {};
  const risk = s.flows_at_risk !== undefined ? s.flows_at_risk : peers.reduce((a, p) => a + (p.up ? (p.pending || 0) : 0), 0);
  nodes.append(card(s.node, [
      badge(role, role === "MASTER" ? "master" : ""),
      ready === null ? badge("this node") : badge(ready ? "ready" : "not ready", ready ? "ok" : "bad"),
    ], [
      ["peers alive", alive + " / " + peers.length],
      ["internal cache", (s.internal_flows ?? "–").toLocaleString()],
      ["external cache", (sync.external_flows ?? "–").toLocaleString()],
      ["flows at risk", risk.toLocaleString()],
      ["last commit", lc ? lc.flows + " flows, " + Number(lc.seconds).toFixed(2) + " s" : "none"],
      ["last reconcile", fmtAgo(s.last_reconcile)],
      ["uptime", s.uptime || "–"],
    ], { "data-node": s.node }));
  for (const p of peers) {
    nodes.append(card(p.name || p.addr, [badge(p.up ? "alive" : "down", p.up ? "ok" : "bad"), badge("peer")], [
      ["address", p.addr || "–"],
      ["last seen", fmtAgo(p.last_seen)],
      ["lag", fmtDur(p.lag_ns)],
      ["unacknowledged", (p.pending || 0).toLocaleString()],
      ["flows received", (p.flows_in || 0).toLocaleString()],
      ["bulks in/out", (p.bulks_received || 0) + " / " + (p.bulks_sent || 0)],
    ], { "data-node": p.name || p.addr }));
  }
  const warnings = (s.warnings || []).slice();
  for (const p of peers) if (!p.up) warnings.push("peer " + (p.name || p.addr) + " is down");
  const ev = s.stats && s.stats.events;
  if (ev && ev.overruns) warnings.push(ev.overruns + " event socket overruns since start");
  $("warnings").replaceChildren(...warnings.map((w) => el("li", {}, typeof w === "string" ? w : JSON.stringify(w))));
  $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();

  // history for the charts
  const now = Date.now();
  const msgs = peers.reduce((a, p) => a + (p.msgs_in || 0) + (p.msgs_out || 0), 0);
  const lag = peers.reduce((a, p) => Math.max(a, (p.lag_ns || 0) / 1e6), 0);
  let rate = 0;
  if (state.prev && now > state.prev.t) rate = Math.max(0, (msgs - state.prev.msgs) / ((now - state.prev.t) / 1000));
  state.prev = { t: now, msgs };
  state.history.push({ t: now, rate, lag });
  while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();
  drawChart($("chart-rate"), state.history.map((h) => [h.t, h.rate]), now, "#2457c5");
  drawChart($("chart-lag"), state.history.map((h) => [h.t, h.lag]), now, "#b26a00");
}

async function refreshStatus() {
  try {
    renderStatus(await api("GET", "/api/v1/status"));
  } catch (e) {
    $("warnings").replaceChildren(el("li", {}, "status: " + e.message));
  }
}

// drawChart plots [t, v] points of the last five minutes on a canvas.
function drawChart(cv, pts, now, color) {
  const ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, L = 48, B = 18, T = 8, R = 8;
  ctx.clearRect(0, 0, W, H);
  const max = Math.max(1, ...pts.map((p) => p[1])) * 1.1;
  ctx.strokeStyle = "#dfe3ea";
  ctx.fillStyle = "#697386";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * i / 4;
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W - R, y); ctx.stroke();
    const v = max * (1 - i / 4);
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 4, y + 4);
  }
  for (let m = 0; m <= 5; m++) {
    const x = L + (W - L - R) * (1 - m / 5);
    ctx.fillText(m === 0 ? "now" : "-" + m + "m", x - 10, H - 4);
  }
  if (pts.length < 2) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  pts.forEach(([t, v], i) => {
    const x = L + (W - L - R) * (1 - (now - t) / HISTORY_MS);
    const y = T + (H - T - B) * (1 - v / max);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

// ---- flow table ----

const FILTERS = ["proto", "src", "dst", "sport", "dport", "state", "mark", "zone", "origin"];

function readFilters() {
  state.filter = {};
  for (const k of FILTERS) {
    const v = $("f-" + k).value.trim();
    if (v) state.filter[k] = v;
  }
  state.source = $("f-source").value;
}

$("filter-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  readFilters();
  state.offset = 0;
  loadFlows();
});
$("f-clear").addEventListener("click", () => {
  for (const k of FILTERS) $("f-" + k).value = "";
  readFilters();
  state.offset = 0;
  loadFlows();
});
$("page-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadFlows(); });
$("page-next").addEventListener("click", () => { state.offset += state.limit; loadFlows(); });
$("page-size").addEventListener("change", () => { state.limit = Number($("page-size").value); state.offset = 0; loadFlows(); });
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    const k = th.getAttribute("data-sort");
    if (state.sort === k) state.order = state.order === "asc" ? "desc" : "asc";
    else { state.sort = k; state.order = "asc"; }
    state.offset = 0;
    loadFlows();
  });
}

function query(extra) {
  const q = new URLSearchParams(Object.assign({ source: state.source }, state.filter, extra || {}));
  return q.toString();
}

let loadSeq = 0;
async function loadFlows() {
  const seq = ++loadSeq;
  $("flow-error").textContent = "";
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.classList.toggle("sorted-asc", th.getAttribute("data-sort") === state.sort && state.order === "asc");
    th.classList.toggle("sorted-desc", th.getAttribute("data-sort") === state.sort && state.order === "desc");
  }
  let page;
  try {
    page = await api("GET", "/api/v1/flows/page?" + query({ sort: state.sort, order: state.order, offset: state.offset, limit: state.limit }));
  } catch (e) {
    if (seq === loadSeq) {
      $("flow-error").textContent = e.message;
      $("flows").tBodies[0].replaceChildren();
    }
    return;
  }
  if (seq !== loadSeq) return; // a newer request is on its way
  const tb = $("flows").tBodies[0];
  tb.replaceChildren(...page.flows.map(flowRow));
  const last = Math.min(page.total, page.offset + page.flows.length);
  $("page-info").textContent = page.total ? (page.offset + 1) + "–" + last + " of " + page.total.toLocaleString() : "no flows";
  $("flow-summary").textContent = page.total.toLocaleString() + " flows in " + page.source + " (" + page.took + ")";
  $("page-prev").disabled = page.offset === 0;
  $("page-next").disabled = last >= page.total;
}

function hasPorts(p) { return ["tcp", "udp", "udplite", "sctp", "dccp"].includes(p); }

function flowRow(f) {
  const ports = hasPorts(f.proto);
  const reply = f.reply_src + (ports ? ":" + f.reply_sport : "") + " → " + f.reply_dst + (ports ? ":" + f.reply_dport : "");
  const tr = el("tr", {},
    el("td", {}, f.proto), el("td", {}, f.state || ""),
    el("td", {}, f.src), el("td", {}, ports ? f.sport : ""),
    el("td", {}, f.dst), el("td", {}, ports ? f.dport : ""),
    el("td", { class: "reply" }, reply), el("td", {}, f.mark), el("td", {}, f.zone),
    el("td", {}, f.timeout), el("td", {}, f.origin || ""));
  const td = el("td", { class: "admin-only" });
  if (state.source === "kernel") {
    const b = el("button", { class: "del", title: "delete this flow" }, "Delete");
    b.addEventListener("click", () => confirmDelete(f));
    td.append(b);
  }
  tr.append(td);
  return tr;
}

// flowFilter selects exactly one flow of the kernel's table.
function flowFilter(f) {
  const q = { proto: f.proto, src: f.src, dst: f.dst, zone: String(f.zone) };
  if (hasPorts(f.proto)) { q.sport = String(f.sport); q.dport = String(f.dport); }
  if (f.proto === "icmp" || f.proto === "icmpv6") {
    q["icmp-type"] = String(f.dport >> 8); q["icmp-code"] = String(f.dport & 255); q["icmp-id"] = String(f.sport);
  }
  return q;
}

let pending = null;
function confirmDelete(f) {
  pending = f;
  $("confirm-text").textContent = Object.entries(flowFilter(f)).map(([k, v]) => k + "=" + v).join(" ");
  $("confirm").hidden = false;
  $("confirm-no").focus();
}
$("confirm-no").addEventListener("click", () => { pending = null; $("confirm").hidden = true; });
$("confirm-yes").addEventListener("click", async () => {
  const f = pending;
  pending = null;
  $("confirm").hidden = true;
  if (!f) return;
  try {
    const r = await api("DELETE", "/api/v1/flows?" + new URLSearchParams(flowFilter(f)).toString());
    $("flow-error").textContent = "";
    $("flow-summary").textContent = "deleted " + r.deleted + " flow(s)";
  } catch (e) {
    $("flow-error").textContent = "delete: " + e.message;
  }
  loadFlows();
});

// ---- start ----

(async () => {
  try {
    loggedIn(await api("GET", "/api/v1/session"));
  } catch (e) {
    showLogin();
  }
})();
