// The livelens ops dashboard: one script for every page (body[data-page] says which).
// Data comes from the JSON API; everything is drawn with textContent (never innerHTML), so stream ids,
// on-screen text and alert reasons cannot inject markup.
"use strict";

const KEY_STORE = "livelens.apiKey";
let refreshMs = 1500;

// -- API key: given once as ?key=..., or typed into the bar; kept in localStorage, sent as X-API-Key. --------
(function takeKeyFromAddress() {
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    localStorage.setItem(KEY_STORE, params.get("key"));
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
})();

function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

class ApiError extends Error {
  constructor(status, code, message) { super(`${status} ${code}: ${message}`); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let code = "http_error", message = response.statusText;
    try { const body = await response.json(); code = body.error.code; message = body.error.message; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, code, message);
  }
  return response.json();
}

// Thumbnails need the key too, which an <img src> cannot send: fetch each once, keep an object URL.
const thumbs = new Map();
function thumbnail(img, key, tenant) {
  if (!key) return;
  if (!thumbs.has(key)) {
    const path = "/v1/thumbnails/" + key.split("/").map(encodeURIComponent).join("/") + "?tenant_id=" + encodeURIComponent(tenant);
    thumbs.set(key, fetch(path, { headers: apiKey() ? { "X-API-Key": apiKey() } : {} })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(r.status))))
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => { thumbs.delete(key); return ""; }));
  }
  thumbs.get(key).then((url) => { if (url) img.src = url; });
}

// -- clips: the video of a hit or an alert, played in the page -------------------------------------------
// A <video src> cannot send the key either: the clip (an MP4 of a few seconds) is fetched once as a blob.
// Beside it, the on-screen text recognised in the clip's span and what was said in it (captions, subtitles,
// recognised speech), each line tagged with where its words came from.
async function playClip(evidence, tenant, title) {
  const panel = document.getElementById("player");
  const video = el("video", { controls: "", muted: "", autoplay: "", playsinline: "", class: "clip" });
  video.muted = true;  // browsers autoplay only muted video
  const texts = el("ul", { class: "texts clip-texts" });
  const status = el("p", { class: "muted", text: "loading the clip…" });
  panel.replaceChildren(el("h2", { text: title }), el("div", { class: "clip-player" }, video, el("div", {}, status, texts)));
  panel.hidden = false;
  try {
    const response = await fetch(evidence.clip_url, { headers: apiKey() ? { "X-API-Key": apiKey() } : {} });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, "clip", message);
    }
    const start = Number(response.headers.get("X-Livelens-Clip-Start"));
    const end = Number(response.headers.get("X-Livelens-Clip-End"));
    video.src = URL.createObjectURL(await response.blob());
    status.textContent = `${evidence.stream_id} · ${start.toFixed(1)}–${end.toFixed(1)} s`;
    // The clip's span in wall-clock time, from the evidence's own mapping of stream to wall time.
    const wallStart = Date.parse(evidence.wallclock_start) / 1000 - (evidence.t_start - start);
    const span = `start=${new Date(wallStart * 1000).toISOString()}&end=${new Date((wallStart + end - start) * 1000).toISOString()}`;
    const frames = await api(`/v1/streams/${encodeURIComponent(evidence.stream_id)}/timeline?tenant_id=${encodeURIComponent(tenant)}&${span}`);
    let previous = null;
    for (const f of frames) {
      if (f.text && f.text !== previous) texts.append(el("li", {}, el("span", { class: "muted", text: `${f.t_start.toFixed(1)} s  ` }), f.text.replace(/\n/g, " / ")));
      previous = f.text;
    }
    const said = await api(`/v1/streams/${encodeURIComponent(evidence.stream_id)}/transcript?tenant_id=${encodeURIComponent(tenant)}&${span}`);
    for (const line of said) {
      texts.append(el("li", { class: "said" }, el("span", { class: "muted", text: `${line.t_start.toFixed(1)} s ${line.source}  ` }), line.text));
    }
    if (!texts.children.length) texts.append(el("li", { class: "muted", text: "no on-screen text or transcript in this span" }));
  } catch (error) {
    status.textContent = `no clip: ${error.message}`;
  }
}

function clipButton(evidence, tenant, title) {
  const button = el("button", { type: "button", class: "play", text: "▶ clip" });
  button.disabled = !evidence || !evidence.clip_url;
  if (!button.disabled) button.addEventListener("click", () => playClip(evidence, tenant, title));
  return button;
}

// -- formatting --------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}
function seconds(s) { return s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`; }
function fps(v) { return v === null ? "–" : v.toFixed(2); }
function tokens(row) { return row.tokens_kept.toLocaleString() + (row.kept_share === null ? "" : ` (${Math.round(row.kept_share * 100)}%)`); }
function size(n) { return n < 1e3 ? `${n} B` : n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : n < 1e9 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e9).toFixed(2)} GB`; }
// Memories that count bytes per tier give the total; others, the bytes of the kept tokens.
function memory(row) {
  const bytes = row.memory_bytes === null ? `${size(row.token_bytes)} tokens` : size(row.memory_bytes);
  return `${row.frames.toLocaleString()} frames · ${bytes}`;
}
function tiers(row) { return Object.entries(row.tiers).map(([t, c]) => `${t}: ${Object.entries(c).map(([k, v]) => `${v.toLocaleString()} ${k}`).join(", ")}`).join("; "); }
// Stretches without video (the live source was away): how many memory lists, and the newest.
function gaps(row) {
  if (!row.gaps.length) return "none";
  const last = row.gaps[row.gaps.length - 1];
  return `${row.gaps.length}, last ${seconds(last.end_s - last.start_s)} at ${seconds(last.start_s)}`;
}
function lastAlert(a) { return a ? `${a.state} ${a.reason}` + (a.acked ? " (acked)" : "") : "–"; }
function clock(iso) { return new Date(iso).toLocaleTimeString(); }

// -- the bar: navigation, the key field, when the page last updated ---------------------------------------
function drawBar() {
  const bar = document.getElementById("bar");
  const key = el("input", { type: "password", id: "api-key", placeholder: "API key (if required)" });
  key.value = apiKey();
  const save = el("button", { type: "button", text: "use key" });
  save.addEventListener("click", () => { localStorage.setItem(KEY_STORE, key.value.trim()); location.reload(); });
  bar.append(el("a", { href: "/dashboard", text: "livelens" }), el("a", { href: "/dashboard", text: "Streams" }),
    el("a", { href: "/dashboard/alerts", text: "Alerts" }), el("span", { class: "spacer" }),
    el("span", { id: "updated", class: "updated", text: "loading…" }), key, save);
}

function updated(error) {
  const node = document.getElementById("updated");
  node.classList.toggle("error", Boolean(error));
  node.textContent = error
    ? (error.status === 401 ? "an API key is required: enter it on the right" : `update failed: ${error.message}`)
    : `updated ${new Date().toLocaleTimeString()}`;
}

// Poll without overlapping: the next read starts refreshMs after the previous one finished.
function poll(read) {
  const tick = async () => {
    try { await read(); updated(null); } catch (error) { updated(error); }
    setTimeout(tick, refreshMs);
  };
  tick();
}

// -- pages ---------------------------------------------------------------------------------------------------
function tenantParam() { return new URLSearchParams(location.search).get("tenant") || "default"; }

// -- managing a stream: its state (live, paused, deleted) and the buttons that change it ------------------
// Each tenant's states come from GET /v1/streams (with the key, only the key's tenant). Deleting takes two
// clicks: the first arms the button, the second deletes (history kept until retention; purging is the CLI's
// and the API's, never one click away).
async function streamStates(tenants) {
  const states = new Map();
  for (const tenant of tenants) {
    try {
      for (const s of await api(`/v1/streams?tenant_id=${encodeURIComponent(tenant)}`)) states.set(`${tenant}/${s.stream_id}`, s);
    } catch (error) { if (error.status !== 403 && error.status !== 401) throw error; }  // not this key's tenant
  }
  return states;
}

function controlCell(row, state) {
  const cell = el("td", { class: "control" });
  if (!state) return cell;
  const path = `/v1/streams/${encodeURIComponent(row.stream_id)}`;
  const tenant = `?tenant_id=${encodeURIComponent(row.tenant_id)}`;
  const act = (button, method, suffix) => button.addEventListener("click", async () => {
    button.disabled = true;
    try { await api(path + suffix + tenant, { method }); cell.querySelector(".state").textContent = "…"; }
    catch (error) { button.disabled = false; updated(error); }
  });
  cell.append(el("span", { class: `state ${state.state}`, text: state.state + (state.catch_up_pending ? " (catching up)" : "") }), " ");
  if (state.state === "live") {
    const pause = el("button", { type: "button", class: "pause", text: "pause" });
    act(pause, "POST", "/pause");
    cell.append(pause, " ");
  } else {
    const resume = el("button", { type: "button", class: "resume", text: "resume" });
    act(resume, "POST", "/resume");
    cell.append(resume, " ");
  }
  if (state.state !== "deleted") {
    const remove = el("button", { type: "button", class: "delete", text: "delete" });
    remove.addEventListener("click", function arm() {
      remove.textContent = "really delete?";
      remove.classList.add("armed");
      remove.removeEventListener("click", arm);
      act(remove, "DELETE", "");
    });
    cell.append(remove);
  }
  return cell;
}

async function overviewPage() {
  poll(async () => {
    const report = await api("/v1/overview");
    refreshMs = report.refresh_ms;
    const states = await streamStates([...new Set(report.streams.map((row) => row.tenant_id))]);
    const body = document.querySelector("#streams tbody");
    body.replaceChildren(...report.streams.map((row) => {
      const link = el("a", { href: `/dashboard/streams/${encodeURIComponent(row.stream_id)}?tenant=${encodeURIComponent(row.tenant_id)}`, text: row.stream_id });
      return el("tr", { "data-stream": `${row.tenant_id}/${row.stream_id}` },
        el("td", { text: row.tenant_id }), el("td", {}, link),
        el("td", { class: `status ${row.status}`, text: row.status }),
        el("td", { class: "num lag", text: seconds(row.ingest_lag_s) }), el("td", { class: "num fps", text: fps(row.fps) }),
        el("td", { class: "num tokens", text: tokens(row) }), el("td", { class: "num memory", text: memory(row), title: tiers(row) }),
        el("td", { class: "alert", text: lastAlert(row.last_alert) }),
        controlCell(row, states.get(`${row.tenant_id}/${row.stream_id}`)));
    }));
    document.getElementById("no-streams").hidden = report.streams.length > 0;
    document.querySelector("#actors tbody").replaceChildren(...Object.entries(report.actors).map(([name, stats]) =>
      el("tr", {}, el("td", { text: name }), el("td", {}, el("pre", { class: "stats", text: JSON.stringify(stats) })))));
  });
}

async function streamPage() {
  const streamId = decodeURIComponent(location.pathname.split("/").pop());
  const tenant = tenantParam();
  document.getElementById("stream-id").textContent = streamId;
  document.title = `livelens · ${streamId}`;
  const detailPath = `/v1/overview/streams/${encodeURIComponent(streamId)}?tenant_id=${encodeURIComponent(tenant)}`;
  poll(async () => {
    const detail = await api(detailPath);
    refreshMs = detail.refresh_ms;
    const row = detail.stream;
    const status = document.getElementById("status");
    status.className = `status ${row.status}`;
    status.textContent = row.status;
    const numbers = document.getElementById("numbers");
    numbers.querySelector(".lag").textContent = seconds(row.ingest_lag_s);
    numbers.querySelector(".fps").textContent = fps(row.fps);
    numbers.querySelector(".tokens").textContent = tokens(row);
    numbers.querySelector(".memory").textContent = memory(row);
    numbers.querySelector(".memory").title = tiers(row);
    numbers.querySelector(".alert").textContent = lastAlert(row.last_alert);
    numbers.querySelector(".gaps").textContent = gaps(row);
    drawTimeline(detail, tenant);
  });
  document.getElementById("query-form").addEventListener("submit", (event) => { event.preventDefault(); ask(streamId, tenant); });
}

function drawTimeline(detail, tenant) {
  // An alert sits on the frame its first evidence starts at (standing queries), or its decision time.
  const alertAt = new Map();
  for (const a of detail.alerts) {
    const t = a.evidence.length ? a.evidence[0].t_start : a.pts_s;
    if (t !== null && t !== undefined) alertAt.set(t.toFixed(3), a);
  }
  document.getElementById("timeline").replaceChildren(...detail.frames.map((f) => {
    const img = el("img", { alt: `t=${f.t_start.toFixed(1)} s` });
    thumbnail(img, f.thumbnail, tenant);
    const alert = alertAt.get(f.t_start.toFixed(3));
    return el("div", { class: "frame" + (f.boundary ? " boundary" : ""), title: f.text_read ? f.text || "" : "text not read (OCR was behind)" }, img,
      el("div", { text: `${f.t_start.toFixed(1)} s` + (f.boundary ? " ▌event" : "") + (f.text_read ? "" : " · text not read") }),
      el("div", { class: "flag", text: alert ? `⚑ ${alert.state}` : "" }));
  }));
  // On-screen text where it changes.
  const texts = [];
  let previous = null;
  for (const f of detail.frames) {
    if (f.text && f.text !== previous) texts.push(el("li", {}, el("span", { class: "muted", text: `${f.t_start.toFixed(1)} s  ` }), f.text.replace(/\n/g, " / ")));
    previous = f.text;
  }
  document.getElementById("texts").replaceChildren(...texts.reverse());
  drawTranscript(detail, tenant);
  document.getElementById("stream-alerts").replaceChildren(...detail.alerts.map((a) => el("li", {},
    el("span", { class: `alert-state ${a.state}`, text: a.state }), ` ${clock(a.produced_at)} ${a.reason}` + (a.ack ? ` (acked by ${a.ack.by})` : "") + " ",
    clipButton(a.evidence[0], tenant, `${a.state} alert at ${clock(a.produced_at)}`))));
}

// What was said over the timeline's span: caption, subtitle and speech lines, newest first, each with its source.
async function drawTranscript(detail, tenant) {
  if (!detail.frames.length) return;
  const since = encodeURIComponent(detail.frames[0].wallclock_start);
  const said = await api(`/v1/streams/${encodeURIComponent(detail.stream.stream_id)}/transcript?tenant_id=${encodeURIComponent(tenant)}&start=${since}`);
  document.getElementById("said").replaceChildren(...said.reverse().map((line) => el("li", {},
    el("span", { class: "muted", text: `${line.t_start.toFixed(1)} s ${line.source}  ` }), line.text)));
}

async function ask(streamId, tenant) {
  const question = document.getElementById("question").value;
  const box = document.getElementById("answer");
  const meta = document.getElementById("answer-meta");
  box.hidden = false;
  meta.textContent = "asking…";
  document.getElementById("evidence").replaceChildren();
  try {
    const answer = await api("/v1/query", { method: "POST", body: JSON.stringify({ tenant_id: tenant, stream_ids: [streamId], text: question, top_k: 5 }) });
    document.getElementById("answer-text").textContent = answer.error ? `error: ${answer.error}` : answer.answer;
    meta.textContent = `${answer.extractive ? "extractive" : answer.model} · ${Math.round(answer.latency_ms)} ms · ${answer.evidence.length} evidence`;
    document.getElementById("evidence").replaceChildren(...answer.evidence.map((e) => {
      const img = el("img", { alt: e.frame_key });
      thumbnail(img, e.thumbnail, tenant);
      return el("li", { class: "evidence" }, img, el("div", {},
        el("div", { text: `${e.t_start.toFixed(1)}–${e.t_end.toFixed(1)} s · ${clock(e.wallclock_start)} · score ${e.score.toFixed(3)} ` },
          clipButton(e, tenant, `Evidence at ${e.t_start.toFixed(1)} s`)),
        el("div", { class: "muted", text: (e.source ? `${e.source}: ` : "") + (e.text || "").replace(/\n/g, " / ") })));
    }));
  } catch (error) {
    meta.textContent = `failed: ${error.message}`;
  }
}

async function alertsPage() {
  const tenant = tenantParam();
  poll(async () => {
    const alerts = await api(`/v1/alerts?tenant_id=${encodeURIComponent(tenant)}&limit=200`);
    document.querySelector("#alerts tbody").replaceChildren(...alerts.map((a) => {
      const ack = a.ack ? el("span", { class: "muted", text: `by ${a.ack.by}` }) : el("button", { type: "button", text: "ack" });
      if (!a.ack) ack.addEventListener("click", () => acknowledge(a.alert_id, tenant, ack));
      return el("tr", { "data-alert": a.alert_id }, el("td", { text: clock(a.produced_at) }),
        el("td", {}, el("a", { href: `/dashboard/streams/${encodeURIComponent(a.stream_id)}?tenant=${encodeURIComponent(a.tenant_id)}`, text: a.stream_id })),
        el("td", { text: a.kind }), el("td", { class: `alert-state ${a.state}`, text: a.state }),
        el("td", { text: a.reason }), el("td", { class: "num", text: a.score.toFixed(2) }), el("td", {}, ack),
        el("td", {}, clipButton(a.evidence[0], tenant, `${a.state} alert on ${a.stream_id} at ${clock(a.produced_at)}`)));
    }));
    document.getElementById("no-alerts").hidden = alerts.length > 0;
  });
}

async function acknowledge(alertId, tenant, button) {
  button.disabled = true;
  try {
    await api(`/v1/alerts/${encodeURIComponent(alertId)}/ack?tenant_id=${encodeURIComponent(tenant)}`,
      { method: "POST", body: JSON.stringify({ by: "dashboard" }) });
    button.replaceWith(el("span", { class: "muted", text: "acked" }));
  } catch (error) {
    button.disabled = false;
    updated(error);
  }
}

drawBar();
({ overview: overviewPage, stream: streamPage, alerts: alertsPage })[document.body.dataset.page]();
