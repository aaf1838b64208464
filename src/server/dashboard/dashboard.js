/* SPDX-License-Identifier: MIT */
// The heapd dashboard: polls heapd's JSON (/api/overview, /api/gc, /api/sessions, and on a
// session's page /api/session and /api/doctor) and draws it on canvases, every second.
// No library and no other origin: the page is served by heapd and works offline.
//
// Every chart, once drawn, says what it drew in data- attributes of its canvas (points,
// last value, marks), which the browser test reads back against the JSON it fetches itself.
"use strict";

const GC_WINDOW_MS = 5 * 60 * 1000; // the collection timeline's width
const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function fmtNum(n) { return n.toLocaleString("en-US"); }
function fmtMs(ms) {
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}
function fmtPause(ns) {
  if (ns < 1e3) return ns + " ns";
  if (ns < 1e6) return (ns / 1e3).toFixed(1) + " µs";
  if (ns < 1e9) return (ns / 1e6).toFixed(1) + " ms";
  return (ns / 1e9).toFixed(2) + " s";
}
function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  // 401: needs an admin; 404: no such session; 503: its worker is taking the first look.
  if (r.status === 401 || r.status === 404 || r.status === 503) return { status: r.status };
  if (!r.ok) throw new Error(url + ": " + r.status);
  return { status: 200, data: await r.json() };
}

// ---------------------------------------------------------------------------------------
// Charts.

// Lines over time: series [{values, color}], times in ms; y from 0 to the largest value.
function drawLines(canvas, times, series, fmt) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height, padL = 70, padB = 18;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  let max = 1;
  for (const s of series) for (const v of s.values) max = Math.max(max, v);
  max = Math.ceil(max / 4) * 4; // four whole steps on the axis
  const t0 = times.length ? times[0] : 0, t1 = times.length ? times[times.length - 1] : 1;
  const x = (t) => padL + (W - padL - 6) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => 6 + (H - padB - 6) * (1 - v / max);
  g.strokeStyle = css("--line"); g.fillStyle = css("--dim"); g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = max * k / 4, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(padL, yy); g.lineTo(W - 6, yy); g.stroke();
    g.fillText(fmt(Math.round(v)), 4, yy + 4);
  }
  if (times.length) g.fillText(fmtMs(t1 - t0) + " ago", padL, H - 4);
  let drawn = 0;
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
    s.values.forEach((v, i) => (i ? g.lineTo(x(times[i]), y(v)) : g.moveTo(x(times[i]), y(v))));
    g.stroke();
    drawn += s.values.length;
  }
  canvas.dataset.points = String(times.length);
  canvas.dataset.last = series.length && series[0].values.length
    ? String(series[0].values[series[0].values.length - 1]) : "";
  canvas.dataset.drawn = String(drawn);
}

// The collection timeline: one mark per collection at its time, its height the pause on a log
// scale from 1 µs to 1 s, its colour its generation.
function drawGc(canvas, marks, now) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height, padL = 70, padB = 18;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  const lo = 3, hi = 9; // log10 of 1 µs and 1 s in ns
  const y = (ns) => {
    const l = Math.min(hi, Math.max(lo, Math.log10(Math.max(ns, 1))));
    return H - padB - (H - padB - 6) * (l - lo + 0.15) / (hi - lo + 0.15);
  };
  g.strokeStyle = css("--line"); g.fillStyle = css("--dim"); g.lineWidth = 1;
  for (const [ns, label] of [[1e3, "1 µs"], [1e6, "1 ms"], [1e9, "1 s"]]) {
    const yy = Math.round(y(ns)) + 0.5;
    g.beginPath(); g.moveTo(padL, yy); g.lineTo(W - 6, yy); g.stroke();
    g.fillText(label, 4, yy + 4);
  }
  g.fillText("5 min ago", padL, H - 4);
  g.fillText("now", W - 30, H - 4);
  const colors = [css("--g0"), css("--g1"), css("--g2")];
  const x = (t) => padL + (W - padL - 6) * (1 - (now - t) / GC_WINDOW_MS);
  let n = 0, per = [0, 0, 0];
  for (const m of marks) {
    if (now - m.t > GC_WINDOW_MS) continue;
    const xx = Math.round(x(m.t)) + 0.5;
    g.strokeStyle = colors[m.generation]; g.lineWidth = m.generation === 2 ? 2 : 1;
    g.beginPath(); g.moveTo(xx, H - padB); g.lineTo(xx, y(m.pause_ns)); g.stroke();
    n++; per[m.generation]++;
  }
  canvas.dataset.marks = String(n);
  canvas.dataset.generations = per.join(",");
}

// Bars per size class: blocks in use (solid) and available (light), by block bytes.
function drawClasses(canvas, classes) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height, padB = 18, padL = 40;
  g.clearRect(0, 0, W, H);
  g.font = "10px system-ui, sans-serif";
  let max = 1;
  for (const c of classes) max = Math.max(max, (c.blocks_in_use + c.blocks_available) * c.block_size);
  const bw = (W - padL) / 32;
  let bars = 0;
  classes.forEach((c, i) => {
    const used = c.blocks_in_use * c.block_size, avail = c.blocks_available * c.block_size;
    const hu = (H - padB - 6) * used / max, ha = (H - padB - 6) * avail / max;
    const hue = Math.round(300 * i / 31);
    g.fillStyle = `hsl(${hue} 70% 55%)`;
    g.fillRect(padL + i * bw + 1, H - padB - hu, bw - 2, hu);
    g.fillStyle = `hsl(${hue} 40% 25%)`;
    g.fillRect(padL + i * bw + 1, H - padB - hu - ha, bw - 2, ha);
    if (c.pools) bars++;
    if (i % 4 === 0) { g.fillStyle = css("--dim"); g.fillText(String(c.block_size), padL + i * bw, H - 4); }
  });
  g.fillStyle = css("--dim");
  g.fillText(fmtBytes(max), 2, 12);
  canvas.dataset.classes = String(bars);
}

// The heap map: a row per arena, a cell per pool; hue = size class, lightness = fullness.
function drawHeapMap(canvas, map) {
  const cell = 18, gap = 1, rows = map.arenas.length;
  canvas.width = 64 * cell;
  canvas.height = Math.max(1, rows) * cell;
  const g = canvas.getContext("2d");
  g.fillStyle = css("--bg"); g.fillRect(0, 0, canvas.width, canvas.height);
  let used = 0;
  map.arenas.forEach((row, r) => {
    row.forEach((p, i) => {
      // [class, in use, total]; class 255: holds nothing, 254: lost to alignment.
      const [c, n, total] = p;
      if (c === 254) g.fillStyle = "#000";
      else if (c === 255) g.fillStyle = css("--line");
      else {
        used++;
        const full = total ? n / total : 0;
        g.fillStyle = `hsl(${Math.round(300 * c / 31)} 75% ${Math.round(22 + 45 * full)}%)`;
      }
      g.fillRect(i * cell + gap, r * cell + gap, cell - 2 * gap, cell - 2 * gap);
    });
  });
  canvas.dataset.arenas = String(rows);
  canvas.dataset.pools = String(used);
}

// ---------------------------------------------------------------------------------------
// The overview.

const state = { gc: [], gcSince: 0, admin: false };

// The persistence part of the server line: when the sessions were last saved, or that saving
// fails (docs/PERSISTENCE.md); nothing when there is no data_dir.
function snapshotLine(o) {
  const p = o.persistence;
  if (!p || !p.enabled) return "";
  if (p.last_fail_unix && p.last_fail_unix >= p.last_ok_unix) return " · snapshots FAILING";
  if (!p.last_ok_unix) return " · no snapshot yet";
  return ` · saved ${fmtMs(Math.max(0, o.now_unix_ms - p.last_ok_unix * 1000))} ago`;
}

async function refreshOverview() {
  const r = await getJSON("/api/overview");
  const o = r.data;
  state.admin = o.admin;
  $("server-line").textContent =
    `heapd ${o.version} · up ${fmtMs(o.uptime_ms)} · ${o.sessions} session${o.sessions === 1 ? "" : "s"}` +
    ` (${o.sessions_detached} detached) · ${o.connections} connections · RSS ${fmtBytes(o.rss_bytes)}` +
    ` · ${o.workers.length} workers, lag ${Math.max(0, ...o.workers.map((w) => w.lag_us / 1000)).toFixed(1)} ms` +
    snapshotLine(o);
  $("login").hidden = o.admin;
  $("logout").hidden = !o.admin || !document.cookie.includes("heapd_admin=");
  const h = o.history, t = h.map((p) => p.t);
  drawLines($("chart-memory"), t, [
    { values: h.map((p) => p.object_bytes), color: css("--c0") },
    { values: h.map((p) => p.used_bytes), color: css("--c1") },
    { values: h.map((p) => p.rss_bytes), color: css("--c2") },
  ], fmtBytes);
  $("mem-now").textContent = `${fmtBytes(o.memory.object_bytes)} in objects, ` +
    `${fmtBytes(o.memory.arena_bytes + o.memory.large_bytes)} held`;
  const rps = h.map((p, i) => (i ? Math.max(0, Math.round((p.requests - h[i - 1].requests) * 1000 /
    Math.max(1, p.t - h[i - 1].t))) : 0));
  drawLines($("chart-requests"), t, [{ values: rps, color: css("--c0") }], fmtNum);
  $("rps-now").textContent = rps.length ? fmtNum(rps[rps.length - 1]) + "/s" : "";
  drawLines($("chart-sessions"), t, [{ values: h.map((p) => p.sessions), color: css("--c1") }], fmtNum);
  $("sessions-now").textContent = String(o.sessions);
  $("sessions-now").dataset.value = String(o.sessions);
}

async function refreshGc() {
  const r = await getJSON("/api/gc?since=" + state.gcSince);
  const now = r.data.now_unix_ms;
  for (const m of r.data.collections) state.gc.push(m);
  if (state.gc.length) state.gcSince = state.gc[state.gc.length - 1].t;
  state.gc = state.gc.filter((m) => now - m.t <= GC_WINDOW_MS).slice(-20000);
  drawGc($("chart-gc"), state.gc, now);
  const last = state.gc[state.gc.length - 1];
  $("gc-now").textContent = `${state.gc.length} in 5 min` +
    (last ? ` · last: generation ${last.generation}, ${fmtPause(last.pause_ns)}` : "");
}

async function refreshSessions() {
  const r = await getJSON("/api/sessions");
  const body = $("sessions").tBodies[0];
  body.replaceChildren();
  for (const s of r.data.sessions) {
    const tr = body.insertRow();
    const a = document.createElement("a");
    a.href = "#/session/" + s.id;
    a.textContent = s.id;
    tr.insertCell().append(a);
    tr.insertCell().textContent = s.client_name;
    for (const v of [fmtBytes(s.object_bytes), fmtNum(s.objects), fmtNum(s.arena_bytes >> 20), fmtNum(s.requests)]) {
      const td = tr.insertCell(); td.className = "n"; td.textContent = v;
    }
    tr.insertCell().textContent = (s.attached ? "attached" : "detached") + (s.tracing ? ", tracing" : "");
    const idle = tr.insertCell(); idle.className = "n"; idle.textContent = fmtMs(s.idle_ms);
    tr.dataset.bytes = String(s.object_bytes);
  }
  $("sessions").dataset.rows = String(r.data.sessions.length);
}

// ---------------------------------------------------------------------------------------
// A session's page.

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const tr = body.insertRow();
    row.forEach((v, i) => {
      const td = tr.insertCell(); td.textContent = v;
      if (i) td.className = "n";
    });
  }
  table.dataset.rows = String(rows.length);
}

async function refreshSession(id) {
  $("s-id").textContent = id;
  const r = await getJSON("/api/session?id=" + encodeURIComponent(id));
  if (r.status === 503) return; // asked for: the next tick has it
  $("s-denied").hidden = r.status !== 401;
  $("s-gone").hidden = r.status !== 404;
  $("s-body").hidden = r.status !== 200;
  if (r.status !== 200) return;
  const s = r.data;
  $("s-client").textContent = `${s.client_name} · ${s.attached ? "attached" : "detached"} · ` +
    `${fmtBytes(s.heap.object_bytes)} in ${fmtNum(s.heap.objects)} objects · ` +
    `${s.heap.arenas_current} arenas`;
  drawHeapMap($("heapmap"), s.map);
  $("s-map-note").textContent = `${s.map.arenas.length} of ${s.heap.arenas_current} arenas`;
  const legend = $("heapmap-legend");
  legend.replaceChildren();
  s.classes.forEach((c, i) => {
    if (!c.pools) return;
    const b = document.createElement("i");
    b.style.background = `hsl(${Math.round(300 * i / 31)} 75% 50%)`;
    legend.append(b, `${c.block_size} B`);
  });
  drawClasses($("chart-classes"), s.classes);
  fillTable($("s-gc"), [0, 1, 2].map((g) => [String(g), fmtNum(s.gc.count[g]), fmtNum(s.gc.threshold[g]),
    fmtNum(s.gc.stats[g].collections), fmtNum(s.gc.stats[g].collected), fmtNum(s.gc.stats[g].uncollectable)]));
  $("s-gc-note").textContent = `automatic collection ${s.gc.enabled ? "on" : "off"} · ` +
    `${fmtNum(s.gc.garbage)} in gc.garbage · ${fmtNum(s.gc.frozen)} frozen · longest pause ` +
    fmtPause(s.gc.pause_ns_max);
  fillTable($("s-tags"), s.tags.map((t) => [t.key || "(none)", fmtNum(t.count), fmtBytes(t.bytes)]));
  fillTable($("s-sites"), s.sites.map((t) => [t.key || "(none)", fmtNum(t.count), fmtBytes(t.bytes)]));
  const d = await getJSON("/api/doctor?session=" + encodeURIComponent(id));
  const ul = $("s-doctor");
  ul.replaceChildren();
  if (d.status === 200) {
    for (const f of d.data.findings) {
      const li = document.createElement("li");
      li.className = "sev-" + f.severity;
      li.textContent = `${f.title}: ${f.evidence} — ${f.advice}`;
      ul.append(li);
    }
    if (!d.data.findings.length) ul.append(Object.assign(document.createElement("li"), { textContent: d.data.summary }));
  }
}

// ---------------------------------------------------------------------------------------
// Routing, login, the clock.

function route() {
  // A session id: hex digits, after its node's id and a dot when it has one (docs/SCALING.md).
  const m = location.hash.match(/^#\/session\/([A-Za-z0-9_.-]+)$/);
  $("overview").hidden = !!m;
  $("session").hidden = !m;
  return m ? m[1] : null;
}

let ticking = false;
async function tick() {
  if (ticking) return;
  ticking = true;
  try {
    const id = route();
    await refreshOverview();
    if (id) await refreshSession(id);
    else await Promise.all([refreshGc(), refreshSessions()]);
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    $("server-line").textContent = "heapd unreachable: " + e.message;
  } finally {
    ticking = false;
  }
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  document.cookie = "heapd_admin=" + encodeURIComponent($("token").value) + "; path=/; SameSite=Strict";
  $("token").value = "";
  tick();
});
$("logout").addEventListener("click", () => {
  document.cookie = "heapd_admin=; path=/; SameSite=Strict; max-age=0";
  tick();
});
window.addEventListener("hashchange", tick);
tick();
setInterval(tick, 1000);
