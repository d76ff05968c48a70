// pgmigrator dashboard: fed by the /api/v1/ws WebSocket (one snapshot every 500 ms).
// Plain JavaScript, no build step. Data is only ever inserted with textContent (never innerHTML),
// so table names and log messages cannot inject markup.
"use strict";

(function () {
  const TOKEN_KEY = "pgmigrator.token";
  const CHART_POINTS = 60;
  const $ = (id) => document.getElementById(id);
  const rates = [];
  const tableRows = new Map();
  let backoff = 500;
  let socket = null;

  // -- formatting ---------------------------------------------------------------------------------

  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    if (n < 1024) return Math.round(n) + " B";
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n, u = -1;
    do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
    return v.toFixed(1) + " " + units[u];
  }

  function fmtCount(n) {
    return n === null || n === undefined ? "-" : Math.round(n).toLocaleString("en-US");
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "-";
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h) return h + "h" + String(m).padStart(2, "0") + "m";
    if (m) return m + "m" + String(sec).padStart(2, "0") + "s";
    return sec + "s";
  }

  function setText(id, text) {
    const el = $(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function overallPercent(snap) {
    const tables = snap.tables || [];
    if (!tables.length) return snap.phase === "done" ? 100 : 0;
    let weights = 0, acc = 0;
    for (const t of tables) {
      const w = Math.max(t.bytes_total || 0, 1);
      weights += w;
      acc += w * (t.percent || 0);
    }
    return acc / weights;
  }

  // -- rendering ----------------------------------------------------------------------------------

  function renderHeader(snap) {
    setText("pipeline", snap.pipeline || "");
    const phase = $("phase");
    phase.textContent = snap.phase;
    phase.className = "badge phase-" + String(snap.phase).split("-")[0];
    setText("state", snap.state || "?");
    setText("uptime", fmtDuration(snap.uptime_s));
  }

  function renderCards(snap) {
    const pct = overallPercent(snap);
    setText("overall-pct", pct.toFixed(1) + "%");
    $("overall-bar").style.width = pct.toFixed(1) + "%";
    $("overall-bar").className = "fill" + (pct >= 100 ? " done" : "");
    setText("tables-copied", String(snap.tables_copied));
    setText("tables-total", String(snap.tables_total));
    setText("total-rows", fmtCount(snap.total_rows));
    setText("total-bytes", fmtBytes(snap.total_bytes));
    setText("lag", snap.lag_formatted || "unknown");
    setText("applied-lsn", snap.applied_lsn || "-");
    setText("confirmed-lsn", snap.confirmed_lsn || "-");
    setText("latest-lsn", snap.latest_lsn || "-");
    setText("error-count", String(snap.error_count));
    const last = snap.last_error;
    setText("last-error", last ? (last.component ? "[" + last.component + "] " : "") + last.message : "");
    setText("rate-rows", fmtCount(snap.rows_per_s) + " rows/s");
    setText("rate-bytes", fmtBytes(snap.bytes_per_s) + "/s");
    const verification = (snap.info || {}).verification;
    setText("verification", verification ? "verification: " + verification : "");
    const health = $("health");
    health.replaceChildren();
    for (const [name, h] of Object.entries(snap.health || {})) {
      const span = document.createElement("span");
      span.className = "health-" + h.status;
      span.textContent = name + ": " + h.status + (h.detail ? " (" + h.detail + ")" : "") + "  ";
      health.appendChild(span);
    }
  }

  function tableRow(key) {
    let tr = tableRows.get(key);
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.dataset.table = key;
    const cells = ["name", "state", "progress", "rows", "size", "rate", "eta"];
    for (const c of cells) {
      const td = document.createElement("td");
      td.className = "col-" + c;
      if (c === "progress") {
        const bar = document.createElement("div");
        bar.className = "bar";
        const fill = document.createElement("div");
        fill.className = "fill";
        bar.appendChild(fill);
        const pct = document.createElement("span");
        pct.className = "pct";
        td.append(bar, pct);
      }
      tr.appendChild(td);
    }
    tableRows.set(key, tr);
    return tr;
  }

  function renderTables(snap) {
    const body = $("tables-body");
    const seen = new Set();
    const ordered = [];
    for (const t of snap.tables || []) {
      const key = t.schema + "." + t.name;
      seen.add(key);
      const tr = tableRow(key);
      const cell = (c) => tr.querySelector(".col-" + c);
      cell("name").textContent = key;
      cell("state").textContent = t.state + (t.error ? ": " + t.error : "");
      cell("state").className = "col-state state-" + t.state;
      const fill = tr.querySelector(".fill");
      fill.style.width = t.percent + "%";
      fill.className = "fill" + (t.state === "errored" ? " errored" : t.percent >= 100 ? " done" : "");
      tr.querySelector(".pct").textContent = t.percent.toFixed(1) + "%";
      cell("rows").textContent = fmtCount(t.rows_copied) + " / " + fmtCount(t.rows_total);
      cell("size").textContent = fmtBytes(t.bytes_copied) + " / " + fmtBytes(t.bytes_total);
      cell("rate").textContent = t.rows_per_s ? fmtCount(t.rows_per_s) + " rows/s" : "-";
      cell("eta").textContent = t.eta_s ? fmtDuration(t.eta_s) : "-";
      ordered.push(tr);
    }
    for (const key of [...tableRows.keys()]) {
      if (!seen.has(key)) tableRows.delete(key);
    }
    body.replaceChildren(...ordered);
  }

  function renderLogs(snap) {
    const list = $("logs");
    const items = (snap.logs || []).slice().reverse().map((e) => {
      const li = document.createElement("li");
      li.className = "lvl-" + e.level;
      const fields = Object.entries(e.fields || {}).map(([k, v]) => k + "=" + v).join(" ");
      li.textContent = e.time + " " + e.level + " " + e.component + ": " + e.message + (fields ? " " + fields : "");
      return li;
    });
    list.replaceChildren(...items);
  }

  function drawChart() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const max = Math.max(1, ...rates);
    const pad = 4, step = (width - 2 * pad) / (CHART_POINTS - 1);
    const y = (v) => height - pad - (v / max) * (height - 2 * pad - 14);
    ctx.strokeStyle = "#2a3542";
    ctx.beginPath();
    ctx.moveTo(0, height - pad);
    ctx.lineTo(width, height - pad);
    ctx.stroke();
    ctx.fillStyle = "#8b98a5";
    ctx.font = "11px sans-serif";
    ctx.fillText("max " + fmtCount(max) + " rows/s", pad, 12);
    if (!rates.length) return;
    const x0 = pad + (CHART_POINTS - rates.length) * step;
    ctx.beginPath();
    rates.forEach((v, i) => (i ? ctx.lineTo(x0 + i * step, y(v)) : ctx.moveTo(x0, y(v))));
    ctx.strokeStyle = "#4fa3e0";
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.lineTo(x0 + (rates.length - 1) * step, height - pad);
    ctx.lineTo(x0, height - pad);
    ctx.closePath();
    ctx.fillStyle = "rgba(79, 163, 224, 0.15)";
    ctx.fill();
  }

  function render(snap) {
    rates.push(snap.rows_per_s || 0);
    if (rates.length > CHART_POINTS) rates.shift();
    renderHeader(snap);
    renderCards(snap);
    renderTables(snap);
    renderLogs(snap);
    drawChart();
    document.body.dataset.updated = snap.timestamp;
  }

  // -- live feed ----------------------------------------------------------------------------------

  function setConnected(up) {
    const el = $("conn");
    el.textContent = up ? "live" : "disconnected";
    el.className = "conn " + (up ? "conn-up" : "conn-down");
  }

  function connect() {
    const token = localStorage.getItem(TOKEN_KEY) || "";
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    const ws = new WebSocket(scheme + location.host + "/api/v1/ws" + query);
    let opened = false;
    socket = ws;
    ws.onopen = () => { opened = true; setConnected(true); backoff = 500; };
    ws.onmessage = (event) => {
      try { render(JSON.parse(event.data)); } catch (err) { console.error("bad snapshot", err); }
    };
    ws.onclose = () => {
      if (socket !== ws) return;  // replaced by a newer connection
      setConnected(false);
      if (!opened) showResult("live feed refused or unreachable; if reads are protected, enter the token and Save", false);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  // -- control ------------------------------------------------------------------------------------

  function showResult(text, ok) {
    const el = $("control-result");
    el.textContent = text;
    el.className = "small " + (ok ? "ok" : "error");
  }

  async function control(action) {
    const token = $("token").value.trim() || localStorage.getItem(TOKEN_KEY) || "";
    if (token) localStorage.setItem(TOKEN_KEY, token);
    try {
      const res = await fetch("/api/v1/" + action, {
        method: "POST",
        headers: token ? { Authorization: "Bearer " + token } : {},
      });
      const body = await res.json().catch(() => ({}));
      if (res.ok) showResult(action + ": " + (body.message || "ok"), true);
      else if (res.status === 401) showResult(action + " refused: wrong or missing token", false);
      else showResult(action + " refused: " + (body.message || res.status), false);
    } catch (err) {
      showResult(action + " failed: " + err, false);
    }
  }

  function setup() {
    const saved = localStorage.getItem(TOKEN_KEY);
    if (saved) $("token").value = saved;
    $("btn-save-token").addEventListener("click", () => {
      localStorage.setItem(TOKEN_KEY, $("token").value.trim());
      showResult("token saved in this browser", true);
      const old = socket;
      socket = null;
      if (old) old.close();
      backoff = 500;
      connect();
    });
    $("btn-pause").addEventListener("click", () => control("pause"));
    $("btn-resume").addEventListener("click", () => control("resume"));
    $("btn-verify").addEventListener("click", () => control("verify"));
    $("btn-switchover").addEventListener("click", () => {
      if (window.confirm("Start the switchover? Writes must be stopped on the source.")) control("switchover");
    });
    window.addEventListener("resize", drawChart);
    drawChart();
    connect();
  }

  document.addEventListener("DOMContentLoaded", setup);
})();
