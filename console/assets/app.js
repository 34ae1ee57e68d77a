// The console page: polls the daemon's /api and draws cameras, charts and
// events. Plain JavaScript, no build step; uPlot draws the charts.
"use strict";

const windowSeconds = 300; // chart span
const cards = new Map();   // camera name -> card state
let allowChanges = false;

async function api(path, options) {
  const r = await fetch(path, options);
  if (!r.ok) throw new Error((await r.text()).trim() || r.statusText);
  return r.headers.get("Content-Type")?.includes("json") ? r.json() : r.text();
}

// fmt shows a number to 4 significant digits without trailing zeros
// (24.11, 0.5, 1e+9): every number on the page the same way, the
// threshold field included.
function fmt(x, digits = 4) {
  return x == null ? "–" : String(Number(Number(x).toPrecision(digits)));
}

const readOnlyReason = "Read-only: changes need web.allow_changes: true in the daemon's configuration";

// openViewer shows an image large (snapshots with their region, NG parts'
// maps); Escape, the Close button or a click beside it closes it.
function openViewer(src, caption) {
  const viewer = document.getElementById("viewer");
  viewer.querySelector("img").src = src;
  viewer.querySelector(".caption").textContent = caption;
  viewer.showModal();
}
document.getElementById("viewer").addEventListener("click", (e) => {
  if (e.target.id === "viewer") e.target.close(); // the backdrop
});

// zoomable makes a thumbnail open large.
function zoomable(img, caption) {
  img.tabIndex = 0;
  img.title = "open large";
  const open = () => openViewer(img.src, caption);
  img.addEventListener("click", open);
  img.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
}

function newCard(cam) {
  const node = document.getElementById("camera-card").content.firstElementChild.cloneNode(true);
  node.id = "camera-" + cam.name;
  node.dataset.camera = cam.name;
  node.querySelector(".name").textContent = cam.name;
  const card = { node, name: cam.name, times: [], scores: [], pre: [], stu: [], patch: [], since: 0, threshold: cam.threshold, plot: null, clipped: null };
  const img = node.querySelector(".live");
  const overlay = node.querySelector(".overlay");
  const liveURL = () => `/api/cameras/${encodeURIComponent(cam.name)}/live.mjpeg?overlay=${overlay.checked ? 1 : 0}`;
  img.src = liveURL();
  overlay.addEventListener("change", () => { img.src = liveURL(); });
  node.querySelector(".parts").addEventListener("change", (e) => {
    for (const i of [3, 4, 5]) card.plot?.setSeries(i, { show: e.target.checked });
  });
  const status = node.querySelector(".threshold-status");
  const input = node.querySelector(".threshold-input");
  input.value = fmt(cam.threshold);
  card.input = input;
  // What a threshold would flag among the recent frames, as it is typed.
  input.addEventListener("input", async () => {
    if (input.value === "") return;
    try {
      const f = await api(`/api/cameras/${encodeURIComponent(cam.name)}/flagged?threshold=${encodeURIComponent(input.value)}`);
      status.textContent = `${f.flagged} of the last ${f.frames} frames would be flagged`;
    } catch (e) { status.textContent = e.message; }
  });
  const change = async (path, body) => {
    try {
      const r = await api(`/api/cameras/${encodeURIComponent(cam.name)}/${path}`, { method: "POST", body, headers: { "X-Transformaly": "1" } });
      status.textContent = path === "normal" ? `saved ${r.path}` : `threshold ${r.threshold} set`;
      status.dataset.result = "ok";
      refreshCameras();
    } catch (e) { status.textContent = e.message; status.dataset.result = "refused"; }
  };
  node.querySelector(".tuning").addEventListener("submit", (e) => { e.preventDefault(); change("threshold", input.value); });
  node.querySelector(".threshold-reset").addEventListener("click", () => change("threshold", "reset"));
  node.querySelector(".save-normal").addEventListener("click", () => change("normal", ""));
  for (const [sel, action] of [[".refit", "refit"], [".cancel-job", "cancel"], [".rollback", "rollback"]]) {
    node.querySelector(sel).addEventListener("click", () => modelAction(card, action));
  }
  document.getElementById("cameras").append(node);
  const opt = document.createElement("option");
  opt.value = opt.textContent = cam.name;
  document.getElementById("event-filter").append(opt);
  return card;
}

// yRange keeps the threshold readable beside large spikes: the axis spans
// the scores up to twice the threshold's distance from the lowest one
// above it, or up to the 90th percentile of the scores shown when that is
// higher (most frames over the threshold stay in view); higher peaks are
// cut at the top and named under the chart.
function yRange(card, min, max) {
  const t = card.threshold;
  if (min == null || max == null) return [t - 1, t + 1];
  const lo = Math.min(min, t);
  const finite = (card.scores ?? []).filter(Number.isFinite).sort((a, b) => a - b);
  const p90 = finite.length ? finite[Math.floor(0.9 * (finite.length - 1))] : -Infinity;
  const cap = Math.max(t + 2 * Math.max(t - lo, Math.abs(t) * 0.1, 1e-6), 1.1 * p90);
  const hi = Math.min(Math.max(max, t), cap);
  card.clipped = max > cap ? max : null;
  const pad = (hi - lo) * 0.05 || 1;
  return [lo - pad, hi + pad];
}

function makePlot(card) {
  const el = card.node.querySelector(".chart");
  const note = document.createElement("p");
  note.className = "clipped";
  el.after(note);
  card.clippedNote = note;
  const opts = {
    width: Math.max(200, el.clientWidth), height: 160,
    scales: { x: { time: true }, y: { range: (u, min, max) => yRange(card, min, max) } },
    legend: { live: false },
    series: [
      {},
      { label: "score", stroke: "#36c", width: 1.5 },
      { label: "threshold", stroke: "#c33", dash: [6, 4], width: 1 },
      { label: "pretrained", stroke: "#999", show: false },
      { label: "student", stroke: "#e90", show: false },
      { label: "patch", stroke: "#2a7", show: false },
    ],
  };
  card.plot = new uPlot(opts, [[], [], [], [], [], []], el);
  new ResizeObserver(() => card.plot.setSize({ width: Math.max(200, el.clientWidth), height: 160 })).observe(el);
}

async function refreshCameras() {
  let data;
  try {
    data = await api("/api/cameras");
    document.getElementById("connection").textContent = "connected";
  } catch (e) {
    document.getElementById("connection").textContent = "daemon unreachable: " + e.message;
    return;
  }
  allowChanges = data.allow_changes;
  document.getElementById("mode").textContent = allowChanges ? "changes allowed" : "read-only (web.allow_changes: false)";
  for (const cam of data.cameras ?? []) { // none while the daemon loads
    let card = cards.get(cam.name);
    if (!card) { card = newCard(cam); cards.set(cam.name, card); makePlot(card); }
    if (cam.threshold !== card.threshold && document.activeElement !== card.input) card.input.value = fmt(cam.threshold);
    card.threshold = cam.threshold;
    const st = card.node.querySelector(".state");
    st.textContent = cam.state + (cam.detect ? "" : ", detect off");
    st.className = "state " + cam.state;
    card.node.querySelector(".status").textContent =
      `${cam.bundle} on ${cam.provider} · capture ${cam.capture_fps.toFixed(1)} fps · scored ${cam.scored_fps.toFixed(1)} fps · ` +
      `threshold ${fmt(cam.threshold)} (bundle ${fmt(cam.bundle_threshold)}) · reconnects ${cam.reconnects} · damaged ${cam.damaged_frames} · events ${cam.events}` +
      (cam.false_rejects || cam.true_defects ? ` · reviewed: ${cam.false_rejects} false rejects, ${cam.true_defects} true defects` : "");
    const drift = card.node.querySelector(".drift");
    const promised = cam.promised_false_alarm_rate;
    drift.textContent = `over threshold: ${(100 * cam.recent_over_threshold).toFixed(1)}% of the last ${cam.recent_frames} frames` +
      (promised == null ? "" : ` (promised for normal parts: ${(100 * promised).toFixed(1)}%)`) +
      (cam.drift ? " · DRIFT: far more than promised; the normal may have moved (lighting, parts): check, and refit on today's normal parts" : "");
    drift.className = cam.drift ? "drift drifted" : "drift";
    for (const b of card.node.querySelectorAll(".tuning button")) {
      b.disabled = !allowChanges;
      b.title = allowChanges ? "" : readOnlyReason;
    }
    card.node.querySelector(".readonly-note").hidden = allowChanges;
  }
}

async function refreshScores() {
  for (const card of cards.values()) {
    let pts;
    try {
      pts = await api(`/api/cameras/${encodeURIComponent(card.name)}/scores?since=${card.since}`);
    } catch { continue; }
    for (const p of pts) {
      card.since = p.t;
      card.times.push(p.t / 1000);
      card.scores.push(p.score); card.pre.push(p.pretrained); card.stu.push(p.student); card.patch.push(p.patch);
    }
    const cut = Date.now() / 1000 - windowSeconds;
    let drop = 0;
    while (drop < card.times.length && card.times[drop] < cut) drop++;
    for (const a of [card.times, card.scores, card.pre, card.stu, card.patch]) a.splice(0, drop);
    card.node.dataset.points = card.times.length;
    card.plot?.setData([card.times, card.scores, card.times.map(() => card.threshold), card.pre, card.stu, card.patch]);
    if (card.clippedNote) card.clippedNote.textContent = card.clipped == null ? "" : `peaks up to ${fmt(card.clipped)} are cut at the top`;
  }
}

async function refreshEvents() {
  let events;
  try { events = await api("/api/events?camera=" + encodeURIComponent(document.getElementById("event-filter").value)); } catch { return; }
  const list = document.getElementById("events");
  list.replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    li.dataset.event = e.id;
    const img = document.createElement("img");
    img.alt = "snapshot";
    const text = document.createElement("div");
    const start = new Date(e.start_time);
    const duration = e.end_time ? ((new Date(e.end_time) - start) / 1000).toFixed(1) + " s" : "open";
    const region = e.region ? ` · region ${e.region.x},${e.region.y} ${e.region.width}×${e.region.height}` : "";
    if (e.snapshot) {
      img.src = `/api/events/${encodeURIComponent(e.id)}/snapshot.jpg`;
      zoomable(img, `${e.camera} · ${start.toLocaleTimeString()} · peak ${fmt(e.peak_score)} (threshold ${fmt(e.threshold)})${region}`);
    }
    text.innerHTML = `<b></b><br>${start.toLocaleTimeString()} · ${duration} · peak ${fmt(e.peak_score)} (threshold ${fmt(e.threshold)})${region}`;
    text.querySelector("b").textContent = e.camera;
    if (!e.end_time) text.classList.add("open");
    li.append(img, text);
    return li;
  }));
}

const reviewLabels = { false_reject: "false reject: joins the normal images", true_defect: "true defect: kept as a labelled defect" };

// reviewControls lets an operator mark an NG part: a false reject's frame
// joins the camera's normal images for the next fit, a true defect's is
// kept as a labelled anomalous image.
function reviewControls(p) {
  const box = document.createElement("div");
  box.className = "review";
  const label = document.createElement("span");
  label.className = "review-state";
  label.textContent = p.review ? reviewLabels[p.review] : "not reviewed";
  box.append(label);
  for (const [mark, text] of [["false_reject", "False reject"], ["true_defect", "True defect"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = mark.replace("_", "-");
    b.textContent = text;
    b.disabled = !allowChanges || p.review === mark;
    b.title = allowChanges ? "" : readOnlyReason;
    b.addEventListener("click", async () => {
      try {
        await api(`/api/parts/${encodeURIComponent(p.id)}/review`, { method: "POST", body: mark, headers: { "X-Transformaly": "1" } });
        refreshParts(); refreshCameras();
      } catch (e) { label.textContent = e.message; }
    });
    box.append(b);
  }
  return box;
}

// Triggered cameras' part results, newest first; NG parts with their map.
async function refreshParts() {
  let parts;
  try { parts = await api("/api/parts"); } catch { return; }
  document.getElementById("parts-section").hidden = parts.length === 0;
  document.getElementById("parts").replaceChildren(...parts.slice(0, 50).map((p) => {
    const li = document.createElement("li");
    li.dataset.part = p.id;
    const img = document.createElement("img");
    img.alt = p.map ? "anomaly map" : "";
    if (p.map) {
      img.src = `/api/parts/${encodeURIComponent(p.id)}/map.jpg`;
      zoomable(img, `${p.camera} part ${p.part_id} · ${p.verdict.toUpperCase()} · score ${fmt(p.score)} (threshold ${fmt(p.threshold)})`);
    }
    const text = document.createElement("div");
    const verdict = document.createElement("span");
    verdict.className = "verdict " + p.verdict;
    verdict.textContent = p.verdict.toUpperCase();
    const what = document.createElement("b");
    what.textContent = ` ${p.camera} part ${p.part_id}`;
    const detail = document.createElement("div");
    detail.textContent = `${new Date(p.trigger_time).toLocaleTimeString()} · score ${fmt(p.score)} (threshold ${fmt(p.threshold)}) · ${fmt(p.latency_ms)} ms` + (p.reason ? ` · ${p.reason}` : "");
    text.append(verdict, what, detail);
    if (p.verdict === "ng" && p.map) text.append(reviewControls(p));
    li.append(img, text);
    return li;
  }));
}

// modelAction asks the daemon for a refit, a comparison, a shadow, a
// promote or a rollback of the camera's bundle.
async function modelAction(card, action, candidate = "") {
  const status = card.node.querySelector(".model-status");
  try {
    await api(`/api/cameras/${encodeURIComponent(card.name)}/model/${action}`, { method: "POST", body: candidate, headers: { "X-Transformaly": "1" } });
    status.textContent = `${action} ${candidate}: accepted`;
    status.dataset.result = "ok";
  } catch (e) { status.textContent = `${action}: ${e.message}`; status.dataset.result = "refused"; }
  refreshModel(card);
  refreshCameras();
}

const pct = (x) => x == null ? "–" : fmt(100 * x, 3) + "%";
const base = (p) => p ? p.split("/").pop() : "–";

// figuresTable shows a comparison: each bundle at its own threshold on the
// same held-out normal images and true defects.
function figuresTable(cmp) {
  const t = document.createElement("table");
  const rows = [
    ["", "live", "candidate"],
    ["false alarms (held-out normal)", ...[cmp.live_figures, cmp.candidate_figures].map((f) => `${pct(f.false_alarm_rate)} (promised ${pct(f.expected_false_alarm_rate)})`)],
    ["detection (true defects)", ...[cmp.live_figures, cmp.candidate_figures].map((f) => pct(f.detection_rate))],
    ["AUROC", ...[cmp.live_figures, cmp.candidate_figures].map((f) => fmt(f.auroc))],
    ["images", ...[cmp.live_figures, cmp.candidate_figures].map((f) => `${f.normal_images} normal, ${f.anomalous_images} defects`)],
  ];
  for (const [i, r] of rows.entries()) {
    const tr = t.insertRow();
    for (const cell of r) {
      const td = document.createElement(i === 0 ? "th" : "td");
      td.textContent = cell;
      tr.append(td);
    }
  }
  return t;
}

async function refreshModel(card) {
  let m;
  try { m = await api(`/api/cameras/${encodeURIComponent(card.name)}/model`); } catch { return; }
  const node = card.node;
  node.querySelector(".live-bundle").textContent = base(m.live) + (m.promoted_at ? ` (promoted ${new Date(m.promoted_at).toLocaleString()}; before: ${base(m.previous)})` : "");
  const running = m.job?.state === "running";
  const job = node.querySelector(".job");
  job.hidden = !m.job;
  if (m.job) {
    job.querySelector("progress").value = m.job.fraction;
    job.dataset.state = m.job.state;
    const left = running && m.job.left_s > 0 ? ` · about ${Math.ceil(m.job.left_s)} s left` : "";
    job.querySelector(".job-text").textContent = `${m.job.kind} ${m.job.state}` + (m.job.stage ? `: ${m.job.stage}` : "") + left + (m.job.error ? ` · ${m.job.error}` : "");
  }
  node.querySelector(".refit").disabled = !allowChanges || running;
  node.querySelector(".cancel-job").hidden = !running;
  node.querySelector(".cancel-job").disabled = !allowChanges;
  const rollback = node.querySelector(".rollback");
  rollback.hidden = !m.promoted_at;
  rollback.disabled = !allowChanges || running;
  for (const b of node.querySelectorAll(".model button")) b.title = allowChanges ? "" : readOnlyReason;
  const shadow = node.querySelector(".shadow");
  shadow.hidden = !m.shadow;
  if (m.shadow) {
    const s = { ...m.shadow, disagreements: m.shadow.disagreements ?? [] };
    const p = document.createElement("p");
    p.className = "agreement";
    p.textContent = `shadow ${s.candidate}: agrees with the live bundle on ${s.agree} of ${s.frames} frames` +
      (s.frames ? ` (${pct(s.agree / s.frames)})` : "") + (s.disagreements.length ? "; where they differ:" : "");
    const imgs = s.disagreements.map((x) => {
      const img = document.createElement("img");
      img.src = `/api/cameras/${encodeURIComponent(card.name)}/shadow/${x.image}.jpg`;
      img.alt = "a frame judged differently";
      zoomable(img, `${new Date(x.time).toLocaleTimeString()} · live ${x.live_anomalous ? "NG" : "OK"} ${fmt(x.live_score)} · candidate ${fmt(x.candidate_score)}`);
      return img;
    });
    shadow.replaceChildren(p, ...imgs);
  }
  node.querySelector(".candidates").replaceChildren(...m.candidates.map((c) => {
    const li = document.createElement("li");
    li.dataset.candidate = c.id;
    const text = document.createElement("div");
    text.textContent = `candidate ${c.id} · ${c.train_images} images fitted, ${c.holdout_images} held out · threshold ${fmt(c.threshold)}` + (m.live === c.bundle ? " · LIVE" : "");
    li.append(text);
    if (c.compare) li.append(figuresTable(c.compare));
    const actions = document.createElement("div");
    actions.className = "actions";
    const shadowing = m.shadow?.candidate === c.id;
    for (const [cls, label, action] of [["compare", "Compare", "compare"], ["shadow", shadowing ? "Stop shadow" : "Shadow", shadowing ? "unshadow" : "shadow"], ["promote", "Promote", "promote"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = cls;
      b.textContent = label;
      b.disabled = !allowChanges || running || (action === "promote" && m.live === c.bundle);
      b.title = allowChanges ? "" : readOnlyReason;
      b.addEventListener("click", () => modelAction(card, action, c.id));
      actions.append(b);
    }
    li.append(actions);
    return li;
  }));
}

setInterval(() => { for (const card of cards.values()) refreshModel(card); }, 2000);

document.getElementById("event-filter").addEventListener("change", refreshEvents);
refreshCameras().then(() => { refreshScores(); refreshEvents(); refreshParts(); });
setInterval(refreshParts, 2000);
setInterval(refreshCameras, 2000);
setInterval(refreshScores, 1000);
setInterval(refreshEvents, 3000);
