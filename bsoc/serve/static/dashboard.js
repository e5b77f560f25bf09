// bsoc dashboard: plain JavaScript + canvas, no libraries, nothing fetched from elsewhere.
// Polls the service once a second: /metrics (throughput, latency, errors), /v1/streams
// (the list), and the selected stream with its recent history (plots).
"use strict";

const POLL_MS = 1000;
const HISTORY = 300;
const LIST_LIMIT = 500;
const state = { selected: null, key: sessionStorage.getItem("bsoc-key") || "", filter: "" };

function $(id) { return document.getElementById(id); }

function headers() {
  return state.key ? { "Authorization": "Bearer " + state.key } : {};
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401) { $("key-form").hidden = false; throw new Error("unauthorized"); }
  if (!response.ok) throw new Error(path + " -> " + response.status);
  return response.json();
}

// Prometheus text -> {"name{labels}": value}
function parseMetrics(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    values[line.slice(0, cut)] = Number(line.slice(cut + 1));
  }
  return values;
}

function sumMatching(values, prefix) {
  let total = 0;
  for (const [name, value] of Object.entries(values)) if (name.startsWith(prefix)) total += value;
  return total;
}

function fmtMs(seconds) { return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms"; }

async function refreshStats() {
  const response = await fetch("/metrics", { cache: "no-store" });
  const m = parseMetrics(await response.text());
  $("stat-streams").textContent = m["bsoc_streams"];
  $("stat-rate").textContent = m["bsoc_recent_samples_per_second"].toFixed(1);
  $("stat-p50").textContent = fmtMs(m['bsoc_recent_latency_seconds{quantile="0.5"}']);
  $("stat-p99").textContent = fmtMs(m['bsoc_recent_latency_seconds{quantile="0.99"}']);
  $("stat-errors").textContent = sumMatching(m, "bsoc_errors_total{");
}

async function refreshList() {
  const query = "?limit=" + LIST_LIMIT + "&prefix=" + encodeURIComponent(state.filter);
  const list = await getJson("/v1/streams" + query);
  $("stream-count").textContent = list.count + " streams" + (list.count > LIST_LIMIT ? " (first " + LIST_LIMIT + " shown)" : "");
  const body = document.querySelector("#streams tbody");
  const rows = list.streams.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.streamId = s.stream_id;
    if (s.stream_id === state.selected) tr.className = "selected";
    for (const [text, cls] of [[s.stream_id, ""], [(100 * s.soc).toFixed(1) + " %", "num"], [String(s.samples), "num"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => select(s.stream_id));
    return tr;
  });
  body.replaceChildren(...rows);
  if (!state.selected && list.streams.length) select(list.streams[0].stream_id);
}

function select(streamId) {
  state.selected = streamId;
  history.replaceState(null, "", "#stream=" + encodeURIComponent(streamId));
  for (const tr of document.querySelectorAll("#streams tbody tr")) {
    tr.className = tr.dataset.streamId === streamId ? "selected" : "";
  }
  refreshSelected().catch(showError);
}

async function refreshSelected() {
  if (!state.selected) return;
  let stream;
  try {
    stream = await getJson("/v1/streams/" + encodeURIComponent(state.selected) + "?history=" + HISTORY);
  } catch (error) {
    if (String(error).includes("404")) { $("selected-info").textContent = "stream " + state.selected + " is gone"; return; }
    throw error;
  }
  const h = stream.history;
  $("selected-id").textContent = stream.stream_id;
  $("selected-soc").textContent = (100 * stream.soc).toFixed(1) + " %" +
    (stream.soc_std == null ? "" : " ± " + (200 * stream.soc_std).toFixed(1) + " (2σ)");
  $("selected-info").textContent = stream.samples + " samples · t = " + stream.last_time_s.toFixed(1) +
    " s · " + stream.last_sample.voltage_v.toFixed(3) + " V · " + stream.last_sample.current_a.toFixed(2) +
    " A · " + stream.last_sample.temperature_c.toFixed(1) + " °C" + (stream.gaps ? " · gaps: " + stream.gaps : "");
  const band = h.soc_std ? h.soc_std.map((v) => 200 * v) : null;  // ±2σ, percent
  plot($("plot-soc"), h.time_s, h.soc.map((v) => 100 * v), [0, 100], band);
  plot($("plot-voltage"), h.time_s, h.voltage_v);
  plot($("plot-current"), h.time_s, h.current_a);
}

// One line plot on a canvas: axes, grid, tick labels, the series (and a shaded ±band around
// it when given). Draws at device resolution.
function plot(canvas, xs, ys, fixedRange, band) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = { left: 52, right: 10, top: 18, bottom: 22 };
  const w = width - pad.left - pad.right, h = height - pad.top - pad.bottom;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#1d232a";
  g.fillText(canvas.dataset.label, pad.left, 12);
  canvas.dataset.points = String(xs.length);
  canvas.dataset.last = xs.length ? String(ys[ys.length - 1]) : "";
  if (xs.length === 0) return;
  let [lo, hi] = fixedRange || [Math.min(...ys), Math.max(...ys)];
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const x0 = xs[0], x1 = xs.length > 1 ? xs[xs.length - 1] : xs[0] + 1;
  const px = (x) => pad.left + (w * (x - x0)) / (x1 - x0);
  const py = (y) => pad.top + h - (h * (y - lo)) / (hi - lo);
  g.strokeStyle = "#e3e6ea"; g.fillStyle = "#6b7480"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = lo + ((hi - lo) * k) / 4;
    g.beginPath(); g.moveTo(pad.left, py(y)); g.lineTo(pad.left + w, py(y)); g.stroke();
    g.fillText(y.toFixed(Math.abs(hi - lo) < 5 ? 2 : 0), 4, py(y) + 4);
  }
  for (let k = 0; k <= 4; k++) {
    const x = x0 + ((x1 - x0) * k) / 4;
    g.fillText(x.toFixed(0) + " s", Math.min(px(x) - 10, width - 40), height - 6);
  }
  canvas.dataset.band = band ? String(band.length) : "0";
  if (band) {
    const clip = (y) => Math.min(Math.max(y, lo), hi);
    g.fillStyle = canvas.dataset.color; g.globalAlpha = 0.18;
    g.beginPath();
    xs.forEach((x, i) => (i ? g.lineTo(px(x), py(clip(ys[i] + band[i]))) : g.moveTo(px(x), py(clip(ys[i] + band[i])))));
    for (let i = xs.length - 1; i >= 0; i--) g.lineTo(px(xs[i]), py(clip(ys[i] - band[i])));
    g.closePath(); g.fill(); g.globalAlpha = 1;
  }
  g.strokeStyle = canvas.dataset.color; g.lineWidth = 2;
  g.beginPath();
  xs.forEach((x, i) => (i ? g.lineTo(px(x), py(ys[i])) : g.moveTo(px(x), py(ys[i]))));
  g.stroke();
}

function showError(error) { $("model").textContent = "service unreachable: " + error.message; }

async function tick() {
  try {
    await Promise.all([refreshStats(), refreshList()]);
    await refreshSelected();
  } catch (error) {
    if (error.message !== "unauthorized") showError(error);
  }
}

async function start() {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("stream");
  if (wanted) state.selected = wanted;
  $("filter").addEventListener("input", (e) => { state.filter = e.target.value; tick(); });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key-input").value;
    sessionStorage.setItem("bsoc-key", state.key);
    $("key-form").hidden = true;
    tick();
  });
  try {
    const health = await (await fetch("/healthz")).json();
    $("model").textContent = "model " + health.model.name + " (" + health.model.kind + ") · gap limit " +
      health.gap_limit_s + " s, policy " + health.gap_policy;
  } catch (error) { showError(error); }
  await tick();
  setInterval(tick, POLL_MS);
}

start();
