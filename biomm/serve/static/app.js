// biomm page: plain JS, same-origin requests only. The token lives in sessionStorage (this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const state = { token: sessionStorage.getItem("biomm-token") || "", subject: null, offset: 0, limit: 50, total: 0, objectUrls: [], subjects: [], nSubjects: 0 };
const ENCOUNTER_CLASS = { AMB: "ambulatory visit", IMP: "inpatient stay", EMER: "emergency visit", ACUTE: "acute inpatient stay",
  NONAC: "non-acute inpatient stay", OBSENC: "observation stay", PRENC: "pre-admission", SS: "short stay", VR: "virtual visit",
  HH: "home health visit", FLD: "field visit" };
const KIND_LABEL = { encounters: "encounter", conditions: "condition / procedure", medications: "medication", labs: "lab / vital",
  images: "image", demographics: "demographics" };

// A number with sensible precision (4 significant digits, no float noise) and its unit, case kept: "138.5 mm[Hg]".
function fmtValue(v, unit) {
  if (v == null || Number.isNaN(Number(v))) return "";
  const n = Number(v), a = Math.abs(n);
  const text = a >= 1000 ? String(Math.round(n)) : String(Number(n.toPrecision(4)));
  return unit ? `${text} ${unit}` : text;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function showError(msg) { const e = $("error"); e.textContent = msg || ""; e.hidden = !msg; }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { logout(); throw new Error("The token was not accepted. Log in again."); }
  if (!res.ok) {
    let detail = res.statusText;
    try { const body = await res.json(); detail = typeof body.detail === "string" ? body.detail : body.detail.map((d) => d.msg).join("; "); } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return options.raw ? res : res.json();
}

// ------------------------------------------------------------------ login
async function login(token) {
  state.token = token;
  try {
    const info = await api("/model");
    sessionStorage.setItem("biomm-token", token);
    $("model-name").textContent = `model ${info.model} · ${info.subjects} subjects`;
    state.nSubjects = info.subjects;
    $("login").hidden = true; $("before-login").hidden = true; $("whoami").hidden = false; $("app").hidden = false; showError("");
    const sel = $("task-select"); sel.replaceChildren(...info.tasks.map((t) => el("option", { value: t }, t)));
    $("task-form").hidden = info.tasks.length === 0;
    await loadSubjects();
  } catch (err) { state.token = ""; showError(err.message); }
}
function logout() {
  sessionStorage.removeItem("biomm-token"); state.token = "";
  $("login").hidden = false; $("before-login").hidden = false; $("whoami").hidden = true; $("app").hidden = true; $("model-name").textContent = "";
}

// ------------------------------------------------------------------ subjects
let filterTimer = null;
function subjectFacts(s) {
  return [s.sex, s.age_band ? `age ${s.age_band}` : null, s.encounters != null ? `${s.encounters} visits` : null,
    s.last_visit ? `last ${s.last_visit}` : null].filter(Boolean).join(" · ");
}
async function loadSubjects() {
  if (!state.subjects.length) state.subjects = (await api("/subjects?limit=1000")).subjects;
  const words = $("subject-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const shown = state.subjects.filter((s) => {
    const hay = `${s.subject_id} ${s.sex || ""} ${s.age_band ? "age " + s.age_band : ""} ${s.modalities.join(" ")}`.toLowerCase();
    return words.every((w) => hay.includes(w));
  });
  $("subject-count").textContent = `${shown.length} of ${state.subjects.length} subjects`;
  $("subject-list").replaceChildren(...shown.map((s) => el("li", {},
    el("button", { type: "button", "data-subject": s.subject_id, onclick: () => openSubject(s.subject_id) },
      s.subject_id, el("small", { class: "facts" }, subjectFacts(s)), el("small", { class: "facts" }, s.modalities.join(" · "))))));
}

async function openSubject(id) {
  showError("");
  try {
    const d = await api("/subjects/" + encodeURIComponent(id));
    state.subject = id; state.offset = 0;
    document.querySelectorAll("#subject-list button").forEach((b) => b.classList.toggle("active", b.dataset.subject === id));
    $("pick-hint").hidden = true; $("subject").hidden = false; $("answer").hidden = true;
    $("subject-id").textContent = d.subject_id;
    const span = d.events ? ` · events ${d.events.first.slice(0, 10)} to ${d.events.last.slice(0, 10)}` : "";
    $("subject-meta").textContent = `${d.kind || "subject"} · split ${d.split || "-"}${span}`;
    $("modalities").replaceChildren(...Object.entries(d.modalities).map(([m, c]) => el("span", { class: "chip", "data-modality": m }, `${m}: ${c.records} record(s), ${c.items} item(s)`)));
    $("similar-by").replaceChildren(el("option", { value: "" }, "fused"), ...Object.keys(d.modalities).map((m) => el("option", { value: m }, m)));
    await Promise.all([loadTimeline(true), loadImages()]);
  } catch (err) { showError(err.message); }
}

// ------------------------------------------------------------------ timeline
// Events newest first, one header row per visit day naming that day's encounter(s).
function eventRows(events) {
  const rows = [];
  let day = null;
  events.forEach((e, i) => {
    const d = (e.time || "").slice(0, 10);
    if (d !== day) {
      day = d;
      const visits = events.filter((o) => (o.time || "").slice(0, 10) === d && o.kind === "encounters")
        .map((o) => `${o.description || o.code}${ENCOUNTER_CLASS[o.text] ? " (" + ENCOUNTER_CLASS[o.text] + ")" : ""}`);
      rows.push(el("tr", { class: "visit" }, el("td", { colspan: 5 }, `${d || "undated"}${visits.length ? " · " + [...new Set(visits)].join("; ") : ""}`)));
    }
    const what = e.description || e.code;
    const extra = e.kind === "encounters" ? ENCOUNTER_CLASS[e.text] || e.text : e.kind === "images" ? "" : e.text;
    rows.push(el("tr", { "data-kind": e.kind || "" },
      el("td", {}, (e.time || "").slice(11, 16)), el("td", {}, what, extra && !String(extra).includes("/") ? el("small", { class: "muted" }, ` ${extra}`) : ""),
      el("td", { class: "num" }, fmtValue(e.value, e.unit)), el("td", {}, KIND_LABEL[e.kind] || e.kind || ""), el("td", { class: "code" }, e.code)));
  });
  return rows;
}

async function loadTimeline(withChart) {
  const code = $("code-filter").value.trim(), kind = $("kind-filter").value;
  const notesOnly = kind === "notes";
  const t = await api(`/subjects/${encodeURIComponent(state.subject)}/timeline?order=desc&limit=${state.limit}&offset=${state.offset}`
    + (code ? "&code=" + encodeURIComponent(code) : "") + (kind && !notesOnly ? "&kind=" + encodeURIComponent(kind) : ""));
  state.total = notesOnly ? t.notes.length : t.total;
  $("event-count").textContent = `(${t.total} events)`;
  $("event-page").textContent = state.total ? `${state.offset + 1}–${Math.min(state.offset + state.limit, state.total)} of ${state.total}, newest first` : "no events";
  $("events").tBodies[0].replaceChildren(...(notesOnly
    ? t.notes.slice(state.offset, state.offset + state.limit).map((n) => el("tr", { "data-kind": "note" },
      el("td", {}, (n.time || "").slice(0, 10)), el("td", {}, n.text.slice(0, 300)), el("td", {}, ""), el("td", {}, n.kind || "note"), el("td", {}, "")))
    : eventRows(t.events)));
  if (withChart) {
    drawTimeline(t.by_system);
    $("notes").replaceChildren(...(t.notes.length ? t.notes.map((n) => el("div", { class: "note" },
      el("strong", {}, `${(n.time || "").slice(0, 10)} ${n.kind || ""}`), el("br"), n.text)) : [el("p", { class: "muted" }, "No notes.")]));
  }
}

function drawTimeline(bySystem) {
  const systems = Object.keys(bySystem);
  const box = $("timeline-chart");
  if (!systems.length) { box.replaceChildren(el("p", { class: "muted" }, "No events.")); return; }
  const times = systems.flatMap((s) => bySystem[s].times.filter(Boolean).map((t) => Date.parse(t)));
  const t0 = Math.min(...times), t1 = Math.max(...times), span = Math.max(t1 - t0, 1);
  const W = 900, left = 110, right = 20, row = 18, H = systems.length * row + 30;
  const x = (t) => left + ((t - t0) / span) * (W - left - right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "event timeline" });
  systems.forEach((s, i) => {
    const y = 10 + i * row + row / 2;
    root.append(svg("text", { x: 4, y: y + 4 }, `${s} (${bySystem[s].count})`));
    root.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y, stroke: "#eef1f5" }));
    const hue = (i * 67) % 360;
    for (const t of bySystem[s].times) if (t) root.append(svg("circle", { cx: x(Date.parse(t)).toFixed(1), cy: y, r: 3, fill: `hsl(${hue},60%,45%)`, "fill-opacity": 0.6 }));
  });
  const yAxis = H - 12, years = [new Date(t0).getUTCFullYear(), new Date(t1).getUTCFullYear()];
  const step = Math.max(1, Math.ceil((years[1] - years[0]) / 10));
  for (let yr = years[0]; yr <= years[1]; yr += step) root.append(svg("text", { x: x(Date.UTC(yr, 0, 1)).toFixed(1), y: yAxis + 8, "text-anchor": "middle" }, String(yr)));
  box.replaceChildren(root);
}

// ------------------------------------------------------------------ images
async function loadImages() {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u)); state.objectUrls = [];
  const list = await api(`/subjects/${encodeURIComponent(state.subject)}/images`);
  if (!list.length) { $("images").replaceChildren(el("p", { class: "muted" }, "No images.")); return; }
  $("images").replaceChildren(...list.map((im) => {
    const img = el("img", { alt: `${im.dicom_modality || ""} ${im.body_part || ""}`.trim() || "image" });
    const preset = el("select", { "aria-label": "display preset" }, ...im.presets.map((p) => el("option", { value: p }, p)));
    const slice = im.slices > 1 ? el("input", { type: "range", min: 0, max: im.slices - 1, value: Math.floor(im.slices / 2), "aria-label": "slice" }) : null;
    const render = async () => {
      const q = `preset=${encodeURIComponent(preset.value)}` + (slice ? `&slice=${slice.value}` : "");
      try {
        const blob = await (await api(`/images/${encodeURIComponent(im.record_id)}.png?${q}`, { raw: true })).blob();
        const url = URL.createObjectURL(blob); state.objectUrls.push(url); img.src = url;
      } catch (err) { showError(err.message); }
    };
    preset.addEventListener("change", render); if (slice) slice.addEventListener("input", render);
    render();
    const date = im.study_date ? `${im.study_date.slice(0, 4)}-${im.study_date.slice(4, 6)}-${im.study_date.slice(6, 8)}` : "";
    return el("figure", {}, img, el("figcaption", {}, `${im.dicom_modality || "?"} ${im.body_part || ""} ${date} · ${im.shape.slice(1).join("×")} `, preset, slice || ""));
  }));
}

// ------------------------------------------------------------------ queries and evidence
async function runQuery(body) {
  showError("");
  const out = $("answer"); out.hidden = false; $("answer-text").textContent = "…"; $("answer-value").textContent = "";
  try { renderAnswer(await api("/query", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })); }
  catch (err) { $("answer-text").textContent = ""; out.hidden = true; showError(err.message); }
}

function renderAnswer(r) {
  $("answer-text").textContent = r.answer || "(the model gave an empty answer)";
  $("answer-value").textContent = r.value == null ? `model ${r.model}` : `value ${typeof r.value === "number" ? fmtValue(r.value) : r.value} · model ${r.model}`;
  const d = r.details || {};
  const recorded = d.recorded_answer != null ? d.recorded_answer : d.reference_answer;
  const box = $("answer-recorded");
  box.hidden = recorded == null || String(recorded) === String(r.answer);
  box.textContent = box.hidden ? "" : `Recorded in the chart: ${recorded} (the model said: ${r.answer})`;
  $("answer-warnings").replaceChildren(...r.warnings.map((w) => el("li", {}, w)));
  const ev = r.evidence || { modalities: [], top_events: [], similar_subjects: [], image_series: [] };
  drawAttributions(ev.modalities);
  $("top-events").tBodies[0].replaceChildren(...(ev.top_events.length ? ev.top_events.map((e) => el("tr", {},
    el("td", {}, (e.time || "").slice(0, 10)), el("td", { class: "code" }, e.code), el("td", {}, e.description || ""),
    el("td", { class: "num" }, fmtValue(e.value, e.unit)))) : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none"))]));
  const others = Math.max(1, state.nSubjects - 1);
  $("similar-list").replaceChildren(...(ev.similar_subjects.length ? ev.similar_subjects.map((n, i) => {
    const known = state.subjects.find((s) => s.subject_id === n.subject_id);
    const pct = Math.max(1, Math.ceil(((i + 1) / others) * 100));
    return el("li", { "data-rank": i + 1 },
      el("button", { type: "button", onclick: () => openSubject(n.subject_id) }, n.subject_id),
      ` rank ${i + 1} of ${others} · top ${pct}% of the cohort`, known && subjectFacts(known) ? ` · ${subjectFacts(known)}` : "",
      n.label ? ` · ${n.label}` : "", (n.shared || []).length ? el("span", { class: "shared" }, ` · shares: ${n.shared.join(", ")}`) : "",
      el("small", { class: "muted" }, ` (cosine ${n.score.toFixed(2)})`));
  }) : [el("li", { class: "muted" }, "none")]));
}

function drawAttributions(mods) {
  const box = $("attribution-chart");
  const rows = mods.filter((m) => m.attribution != null || m.gate != null || !m.present);
  if (!rows.length) { box.replaceChildren(el("p", { class: "muted" }, "No attributions for this answer.")); return; }
  const val = (m) => (m.attribution != null ? m.attribution : m.gate != null ? m.gate : 0);
  const maxAbs = Math.max(1e-6, ...rows.map((m) => Math.abs(val(m))));
  const W = 320, left = 80, right = 60, row = 24, H = rows.length * row + 10, mid = left + (W - left - right) / 2, half = (W - left - right) / 2;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "modality attributions", id: "attribution-svg" });
  root.append(svg("line", { x1: mid, x2: mid, y1: 0, y2: H, stroke: "#9aa5b4" }));
  rows.forEach((m, i) => {
    const y = 5 + i * row, v = val(m), w = (Math.abs(v) / maxAbs) * half;
    root.append(svg("text", { x: 4, y: y + 15 }, m.modality));
    if (m.present) {
      root.append(svg("rect", { class: "bar", "data-modality": m.modality, x: v >= 0 ? mid : mid - w, y: y + 3, width: Math.max(w, 1).toFixed(1), height: row - 8, fill: v >= 0 ? "#2f7d4f" : "#b3413a" }));
      root.append(svg("text", { x: W - right + 6, y: y + 15 }, (v >= 0 ? "+" : "") + v.toFixed(3)));
    } else root.append(svg("text", { x: mid + 6, y: y + 15, fill: "#9aa5b4" }, "absent"));
  });
  box.replaceChildren(root);
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => { e.preventDefault(); login($("token").value.trim()); $("token").value = ""; });
  $("logout").addEventListener("click", logout);
  $("subject-filter").addEventListener("input", () => { clearTimeout(filterTimer); filterTimer = setTimeout(() => loadSubjects().catch((e) => showError(e.message)), 250); });
  $("code-filter").addEventListener("change", () => { state.offset = 0; loadTimeline(false).catch((e) => showError(e.message)); });
  $("kind-filter").addEventListener("change", () => { state.offset = 0; loadTimeline(false).catch((e) => showError(e.message)); });
  $("newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadTimeline(false).catch((e) => showError(e.message)); });
  $("older").addEventListener("click", () => { if (state.offset + state.limit < state.total) { state.offset += state.limit; loadTimeline(false).catch((e) => showError(e.message)); } });
  $("task-form").addEventListener("submit", (e) => { e.preventDefault(); runQuery({ kind: "task", subject: state.subject, task: $("task-select").value }); });
  $("ask-form").addEventListener("submit", (e) => { e.preventDefault(); const q = $("question").value.trim(); if (q) runQuery({ kind: "ask", subject: state.subject, question: q }); });
  $("similar-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = { kind: "similar", subject: state.subject, k: Math.min(100, Math.max(1, Number($("similar-k").value) || 10)) };
    if ($("similar-by").value) body.modality = $("similar-by").value;
    runQuery(body);
  });
  if (state.token) login(state.token);
});
