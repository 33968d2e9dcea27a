// embedstore browser page: plain JS over the public REST API (the same routes a script uses).
// No framework and no build step, so `embedstore serve` can ship it as three static files.
"use strict";

const $ = (selector) => document.querySelector(selector);
const TOKEN_KEY = "embedstore.token";
const THUMB = (id) => `videos/${encodeURIComponent(id)}/thumbnail?animated=true`;

const state = {
  encoders: [],       // rows of GET /encoders that have vectors in this store
  encoder: null,      // the chosen row
  query: null,        // last query ({video_id} | {text} | {file}), re-run when encoder/k/filter change
  seq: 0,             // answers to older searches are dropped when a newer one was sent
  thumbs: [],         // object URLs of the shown thumbnails, revoked when the grid is replaced
};

// -- API: bearer token from sessionStorage, asked for once on the first 401 ---------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

let tokenPrompt = null; // one prompt shared by every request that got a 401 at the same time

async function api(path, options = {}) {
  for (let busyRetries = 0; ; ) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      // Only forget the token we sent: another request may already have stored a newer one.
      if (token && sessionStorage.getItem(TOKEN_KEY) === token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(token ? "That token was refused; try again." : "");
      continue;
    }
    if (response.status === 503 && busyRetries < 3) {
      // The service sheds load with 503 + Retry-After rather than queueing: wait as told.
      busyRetries += 1;
      const wait = Math.min(Number(response.headers.get("Retry-After")) || 1, 10);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response;
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText || "error"}`;
}

function askToken(note) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const overlay = $("#token-overlay"), input = $("#token");
      $("#token-note").textContent = note;
      overlay.hidden = false;
      input.value = "";
      input.focus();
      $("#token-form").onsubmit = (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        overlay.hidden = true;
        tokenPrompt = null;
        resolve();
      };
    });
  }
  return tokenPrompt;
}

const getJSON = async (path) => (await api(path)).json();

// -- messages -------------------------------------------------------------------------------------
function showError(error) {
  const box = $("#error");
  box.hidden = !error;
  box.textContent = error ? error.message || String(error) : "";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children); // strings become text nodes: catalog values are never parsed as HTML
  return node;
}

const fmt = (value, digits = 1) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

// -- encoders -------------------------------------------------------------------------------------
async function loadEncoders() {
  // Only encoders with a loaded video index can answer a search.
  const rows = (await getJSON("encoders")).encoders;
  state.encoders = rows.filter((row) => (row.indexed || []).includes("videos"));
  const select = $("#encoder");
  select.replaceChildren(...state.encoders.map((row) =>
    el("option", { value: row.name, textContent: `${row.name} (${row.dim}-d)` })));
  if (!state.encoders.length) throw new Error("no searchable encoder in this store: run `embedstore encode` and `embedstore index` first");
  chooseEncoder(state.encoders[0].name);
}

function chooseEncoder(name) {
  state.encoder = state.encoders.find((row) => row.name === name);
  $("#encoder").value = name;
  const text = (state.encoder.modalities || []).includes("text");
  for (const node of [$("#text"), $("#text-button")]) node.disabled = !text;
  $("#text").placeholder = text ? "text query, e.g. \"severely reduced ejection fraction\""
                                : `text query (not for ${name}: no text tower)`;
  // Study search needs the encoder's `studies` index (`embedstore studies` + `index --target studies`).
  const studies = (state.encoder.indexed || []).includes("studies");
  for (const node of [$("#study-id"), $("#section"), $("#study-button")]) node.disabled = !studies;
  loadView(true);
  if (state.query) search(state.query);
}

// -- search -----------------------------------------------------------------------------------------
async function search(query) {
  const seq = ++state.seq;
  state.query = query;
  const k = Number($("#k").value) || 8;
  const where = $("#where").value.trim() || null;
  showError(null);
  document.body.classList.add("busy");
  for (const node of [$("#results"), $("#summary")]) node.classList.remove("stale");
  try {
    let response;
    if (query.file) {
      const form = new FormData();
      form.append("file", query.file, query.file.name);
      form.append("encoder", state.encoder.name);
      form.append("k", String(k));
      if (where) form.append("where", where);
      response = await api("search/video", { method: "POST", body: form });
    } else {
      const target = query.study_id ? "studies" : "videos";
      const body = { encoder: state.encoder.name, k, target, query, where, exclude_self: true };
      response = await api("search", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    }
    const result = await response.json();
    if (seq === state.seq) showResults(result, query);
  } catch (error) {
    if (seq !== state.seq) return;
    showError(error);
    // The grid still shows the previous query's answer: grey it so it is not read as this one's.
    for (const node of [$("#results"), $("#summary")]) node.classList.add("stale");
  } finally {
    if (seq === state.seq) document.body.classList.remove("busy");
  }
}

function showResults(result, query) {
  for (const url of state.thumbs) URL.revokeObjectURL(url);
  state.thumbs = [];
  const hits = result.results;
  $("#results").replaceChildren(...hits.map(card));
  for (const node of $("#results").querySelectorAll("img")) loadThumb(node);

  const label = query.file ? `file ${query.file.name}` : query.video_id ? `video ${query.video_id}`
    : query.study_id ? `study ${query.study_id} · ${result.query.section}` : `“${query.text}”`;
  const ef = result.ef_estimate;
  const parts = [el("span", {}, `${hits.length} neighbours of `, el("b", {}, label))];
  if (ef) parts.push(el("span", { id: "ef-estimate" }, " · EF estimate ", el("b", {}, `${fmt(ef.mean)} ± ${fmt(ef.std)} %`), ` (n=${ef.n})`));
  if (result.filtered_out) parts.push(` · filtered out ${result.filtered_out}`);
  parts.push(` · ${fmt(result.took_ms)} ms`);
  if (result.encoder_provenance && result.encoder_provenance.random_init) {
    parts.push(el("span", { class: "warn" }, " · random-init weights: neighbours are not clinically meaningful"));
  }
  $("#summary").replaceChildren(...parts);

  // A stored query (by id, or an upload whose bytes match a stored file) sits on the map itself.
  const storedId = query.video_id || (result.query && result.query.stored_id) || null;
  highlight(storedId, hits);
}

function studyCard(hit) {
  const meta = hit.metadata;
  const node = el("button", { class: "card study", type: "button", "data-id": hit.id, title: `search from study ${meta.study_id}` },
    el("div", { class: "meta" },
      el("div", { class: "id" }, `#${hit.rank} study ${meta.study_id}`),
      el("div", {}, `score ${fmt(hit.score, 3)}`),
      el("div", {}, `patient ${meta.patient_id ?? "–"}`),
      el("div", {}, `${meta.section} · ${meta.n_videos} videos`)));
  node.addEventListener("click", () => {
    $("#study-id").value = meta.study_id;
    search({ study_id: meta.study_id, section: meta.section });
  });
  return node;
}

function card(hit) {
  const meta = hit.metadata || {};
  if (meta.section !== undefined) return studyCard(hit);
  const node = el("button", { class: "card", type: "button", "data-id": hit.id, title: `search from ${hit.id}` },
    el("img", { alt: `video ${hit.id}`, "data-id": hit.id }),
    el("div", { class: "meta" },
      el("div", { class: "id" }, `#${hit.rank} ${hit.id}`),
      el("div", {}, `score ${fmt(hit.score, 3)}`),
      el("div", {}, `patient ${meta.patient_id ?? "–"}`),
      el("div", {}, `EF ${fmt(meta.ef)} · ${meta.split ?? "–"}`),
      el("div", { class: "view" }, `view ${meta.view ?? "–"}`)));
  node.addEventListener("click", () => {
    $("#video-id").value = hit.id;
    search({ video_id: hit.id });
  });
  return node;
}

// Thumbnails go through fetch so they carry the bearer token (an <img src> cannot send headers).
async function loadThumb(img) {
  try {
    const blob = await (await api(THUMB(img.dataset.id))).blob();
    const url = URL.createObjectURL(blob);
    state.thumbs.push(url);
    img.src = url;
  } catch (error) {
    img.alt = `no thumbnail: ${error.message}`;
  }
}

// -- the map: stored UMAP/PCA coordinates on a canvas ---------------------------------------------
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]; // viridis stops, low EF dark

const map = {
  view: null,            // {ids, x, y, columns: {ef, split, patient}, at: Map id -> index}
  zoom: { s: 1, x: 0, y: 0 }, // screen = base(data) * s + (x, y)
  colours: [],           // one CSS colour per point for the chosen column
  groups: new Map(),     // colour -> point indexes, so each colour is filled once
  sx: new Float32Array(0), sy: new Float32Array(0), // screen positions of the last paint
  query: null,           // {x, y, id, estimated}
  neighbours: [],        // indexes into the view
  hover: -1,
  seq: 0,                // answers for an older view request are dropped
  last: null,            // [storedId, hits] of the shown results, re-applied when the view changes
  pending: false,
};

// On an encoder change, take whichever stored view exists (UMAP first); the menu then asks for one.
async function loadView(auto = false) {
  const seq = ++map.seq, encoder = encodeURIComponent(state.encoder.name);
  const methods = auto === true ? ["umap", "pca"] : [$("#method").value];
  map.view = null;
  $("#map").dataset.points = "0";
  note("loading view…");
  draw();
  let failure = null;
  for (const method of methods) {
    try {
      const data = await getJSON(`views/${encoder}?method=${method}`);
      if (seq !== map.seq) return; // another encoder or method was chosen meanwhile
      $("#method").value = method;
      map.view = toView(data);
      map.zoom = { s: 1, x: 0, y: 0 };
      $("#map").dataset.points = String(map.view.ids.length);
      note(null);
      colourBy();
      if (map.last) highlight(...map.last); // results that arrived before the view
      return;
    } catch (error) {
      failure = error;
      if (error.status !== 404) break;
    }
  }
  // No stored view is common (`embedstore view` not run yet): the API's message says how to make one.
  if (seq === map.seq) note(failure.message);
}

// The API's view is already column-wise (ids, x, y, labels): parallel arrays stay cheap at 10^5 points.
function toView(data) {
  const labels = data.labels || {}, none = data.ids.map(() => null);
  return {
    ids: data.ids, x: data.x, y: data.y,
    columns: { ef: labels.ef || none, split: labels.split || none, patient: labels.patient_id || none },
    at: new Map(data.ids.map((id, i) => [id, i])),
    bounds: [...extent(data.x), ...extent(data.y)],
    stale: data.stale,
  };
}

// [min, max] without spreading: Math.min(...a) overflows the call stack at ~10^5 values.
const extent = (values) => values.reduce(([lo, hi], v) => (v === null ? [lo, hi] : [Math.min(lo, v), Math.max(hi, v)]), [Infinity, -Infinity]);

function note(text) {
  $("#map-note").hidden = !text;
  $("#map-note").textContent = text || "";
}

function colourBy() {
  const view = map.view, column = $("#colour").value;
  if (!view) return;
  const values = view.columns[column];
  const legend = [];
  if (column === "ef") {
    const [lo, hi] = extent(values);
    map.colours = values.map((v) => (v === null ? "#bbb" : ramp((v - lo) / (hi - lo || 1))));
    if (lo <= hi) legend.push(`EF ${fmt(lo)}`, el("span", { class: "ramp", style: `background: linear-gradient(90deg, ${RAMP.join(",")})` }), fmt(hi));
  } else {
    const categories = [...new Set(values.filter((v) => v !== null))].sort();
    const index = new Map(categories.map((c, i) => [c, i]));
    map.colours = values.map((v) => (v === null ? "#bbb" : PALETTE[index.get(v) % PALETTE.length]));
    if (categories.length <= PALETTE.length) {
      for (const c of categories) legend.push(el("span", {}, el("span", { class: "swatch", style: `background:${PALETTE[index.get(c)]}` }), c));
    } else {
      legend.push(`${categories.length} ${column}s (colours repeat)`);
    }
  }
  map.groups = new Map();
  map.colours.forEach((colour, i) => {
    const members = map.groups.get(colour);
    if (members) members.push(i); else map.groups.set(colour, [i]);
  });
  legend.push(el("span", {}, "◆ query · ○ neighbours"));
  if (view.stale) legend.push(el("span", { class: "warn" }, "view is older than the vectors: re-run `embedstore view`"));
  $("#legend").replaceChildren(...legend);
  draw();
}

const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
// 64 precomputed steps look continuous, cost one lookup per point, and keep the colour groups few.
const STEPS = Array.from({ length: 64 }, (_, k) => {
  const f = (k / 63) * (RAMP.length - 1), i = Math.min(Math.floor(f), RAMP.length - 2), u = f - i;
  const a = hex(RAMP[i]), b = hex(RAMP[i + 1]);
  return `rgb(${a.map((c, j) => Math.round(c + (b[j] - c) * u)).join(",")})`;
});
const ramp = (t) => STEPS[Math.round(Math.max(0, Math.min(1, t)) * 63)];

// Marks the query and its neighbours; the state is mirrored in data-* attributes of #map,
// so a test (or a user's devtools) can read what is highlighted without decoding pixels.
function highlight(storedId, hits) {
  const view = map.view, box = $("#map");
  map.last = [storedId, hits];
  map.neighbours = view ? hits.map((h) => view.at.get(h.id)).filter((i) => i !== undefined) : [];
  map.query = null;
  if (view && storedId && view.at.has(storedId)) {
    const i = view.at.get(storedId);
    map.query = { id: storedId, x: view.x[i], y: view.y[i], estimated: false };
  } else if (map.neighbours.length) {
    // An uploaded video is not in the stored view: place it at its neighbours' score-weighted centre.
    let w = 0, x = 0, y = 0;
    hits.forEach((h) => {
      const i = view.at.get(h.id);
      if (i === undefined) return;
      const s = Math.max(h.score, 1e-6);
      w += s; x += s * view.x[i]; y += s * view.y[i];
    });
    map.query = { id: "", x: x / w, y: y / w, estimated: true };
  }
  box.dataset.queryId = map.query ? map.query.id : "";
  box.dataset.queryPos = map.query ? `${map.query.x.toFixed(4)},${map.query.y.toFixed(4)}` : "";
  box.dataset.queryEstimated = map.query ? String(map.query.estimated) : "";
  box.dataset.neighbours = map.neighbours.map((i) => view.ids[i]).join(" ");
  draw();
}

// Data -> screen as an affine map (sx = ax * x + bx): fit the bounds into the canvas, then pan/zoom.
function projector() {
  const canvas = $("#map-canvas"), [x0, x1, y0, y1] = map.view.bounds, pad = 16;
  const w = canvas.clientWidth, h = canvas.clientHeight, z = map.zoom;
  const s = z.s * Math.min((w - 2 * pad) / (x1 - x0 || 1), (h - 2 * pad) / (y1 - y0 || 1));
  return { ax: s, bx: w / 2 + z.x - s * (x0 + x1) / 2, ay: -s, by: h / 2 + z.y + s * (y0 + y1) / 2 };
}

function draw() {
  if (map.pending) return;
  map.pending = true;
  requestAnimationFrame(() => { map.pending = false; paint(); });
}

function paint() {
  const canvas = $("#map-canvas"), ctx = canvas.getContext("2d"), ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
  }
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const view = map.view;
  map.sx = map.sy = new Float32Array(0);
  if (!view) return;
  const { ax, bx, ay, by } = projector(), n = view.ids.length;
  const sx = (map.sx = new Float32Array(n)), sy = (map.sy = new Float32Array(n)); // kept for hit-testing
  for (let i = 0; i < n; i++) { sx[i] = ax * view.x[i] + bx; sy[i] = ay * view.y[i] + by; }
  // One path and one fill per colour: per-point fills make 10^4 points too slow to pan smoothly.
  const r = n > 5000 ? 1.8 : n > 500 ? 3 : 4.5, square = n > 5000;
  for (const [colour, members] of map.groups) {
    ctx.fillStyle = colour;
    ctx.beginPath();
    for (const i of members) {
      if (square) ctx.rect(sx[i] - r, sy[i] - r, 2 * r, 2 * r);
      else { ctx.moveTo(sx[i] + r, sy[i]); ctx.arc(sx[i], sy[i], r, 0, 2 * Math.PI); }
    }
    ctx.fill();
  }
  ctx.lineWidth = 2; ctx.strokeStyle = "#111";
  for (const i of map.neighbours) {
    ctx.beginPath(); ctx.arc(sx[i], sy[i], r + 4, 0, 2 * Math.PI); ctx.stroke();
  }
  if (map.query) diamond(ctx, ax * map.query.x + bx, ay * map.query.y + by, map.query.estimated);
  if (map.hover >= 0) {
    ctx.strokeStyle = "#c2410c"; ctx.beginPath(); ctx.arc(sx[map.hover], sy[map.hover], r + 2, 0, 2 * Math.PI); ctx.stroke();
  }
}

function diamond(ctx, x, y, estimated) {
  const s = 9;
  ctx.save();
  ctx.setLineDash(estimated ? [3, 2] : []); // dashed: an upload's position is estimated, not stored
  ctx.beginPath(); ctx.moveTo(x, y - s); ctx.lineTo(x + s, y); ctx.lineTo(x, y + s); ctx.lineTo(x - s, y); ctx.closePath();
  ctx.fillStyle = estimated ? "rgba(194,65,12,.35)" : "#c2410c"; ctx.fill();
  ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
  ctx.lineWidth = 1; ctx.strokeStyle = "#111"; ctx.stroke();
  ctx.restore();
}

function nearest(px, py, radius = 8) {
  let best = -1, bestD = radius * radius;
  const { sx, sy } = map;
  for (let i = 0; i < sx.length; i++) {
    const d = (sx[i] - px) ** 2 + (sy[i] - py) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  }
  return best;
}

function bindMap() {
  const canvas = $("#map-canvas"), tip = $("#tooltip");
  let drag = null; // {x, y, moved}
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
      if (drag.moved) {
        canvas.classList.add("dragging");
        map.zoom.x += dx; map.zoom.y += dy; drag.x = e.clientX; drag.y = e.clientY;
        tip.hidden = true; draw();
        return;
      }
    }
    const box = canvas.getBoundingClientRect(), px = e.clientX - box.left, py = e.clientY - box.top;
    const i = nearest(px, py);
    if (i !== map.hover) { map.hover = i; draw(); }
    tip.hidden = i < 0;
    if (i >= 0) {
      const v = map.view;
      tip.textContent = `${v.ids[i]} · EF ${fmt(v.columns.ef[i])} · ${v.columns.split[i] ?? "–"} · patient ${v.columns.patient[i] ?? "–"}`;
      tip.style.left = `${Math.min(px + 12, box.width - tip.offsetWidth - 4)}px`;
      tip.style.top = `${py + 12}px`;
    }
  });
  canvas.addEventListener("pointerup", (e) => {
    const clicked = drag && !drag.moved;
    drag = null; canvas.classList.remove("dragging");
    if (!clicked) return;
    const box = canvas.getBoundingClientRect(), i = nearest(e.clientX - box.left, e.clientY - box.top);
    if (i >= 0) { $("#video-id").value = map.view.ids[i]; search({ video_id: map.view.ids[i] }); }
  });
  canvas.addEventListener("pointerleave", () => { tip.hidden = true; if (map.hover >= 0) { map.hover = -1; draw(); } });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    // Zoom about the pointer: the data point under it stays under it.
    const box = canvas.getBoundingClientRect(), px = e.clientX - box.left - box.width / 2, py = e.clientY - box.top - box.height / 2;
    const f = Math.exp(-e.deltaY * 0.0015), z = map.zoom, s = Math.max(0.2, Math.min(200, z.s * f)), g = s / z.s;
    z.x = px - (px - z.x) * g; z.y = py - (py - z.y) * g; z.s = s;
    draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { map.zoom = { s: 1, x: 0, y: 0 }; draw(); });
  window.addEventListener("resize", draw);
}

// -- audit: the summary of GET /audit (the same report as `embedstore audit`) ------------------------
async function runAudit() {
  const box = $("#audit");
  box.textContent = "auditing… (the first run re-encodes a few sample videos to choose the threshold)";
  try {
    const report = await getJSON(`audit?encoder=${encodeURIComponent(state.encoder.name)}`);
    const pairs = (counts) => Object.entries(counts).map(([pair, n]) => `${pair} ${n}`).join(", ");
    const lines = [`near-duplicate threshold: cosine ${report.threshold.how}`];
    for (const [kind, count] of Object.entries(report.counts)) {
      const split = pairs(count.by_split_pair);
      lines.push(`${kind}: ${count.total}${split ? ` (${split})` : ""}`);
    }
    const r = report.resplit;
    lines.push(`suggested patient-grouped re-split: ${pairs(r.videos_by_split)}; ${r.moved} videos move (CLI: --resplit FILE)`);
    const worst = report.near_duplicates.worst.slice(0, 5).map((p) => {
      const thumbs = [[p.a, p.thumbnail_a], [p.b, p.thumbnail_b]].filter(([, url]) => url)
        .map(([id]) => el("img", { alt: `video ${id}`, "data-id": id, class: "audit-thumb" }));
      return el("div", {}, `${p.a} ~ ${p.b}  cosine ${fmt(p.score, 5)}  ${p.split_a || "–"} / ${p.split_b || "–"} `, ...thumbs);
    });
    box.replaceChildren(...lines.map((line) => el("div", { textContent: line })), ...worst);
    box.querySelectorAll("img").forEach(loadThumb);
  } catch (error) {
    box.textContent = "";
    showError(error);
  }
}

// -- controls ----------------------------------------------------------------------------------------
function bindControls() {
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) search({ file });
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#file").click(); } });
  $("#file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) search({ file });
    e.target.value = ""; // choosing the same file again should search again
  });
  $("#by-id").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#video-id").value.trim();
    if (id) search({ video_id: id });
  });
  $("#by-study").addEventListener("submit", (e) => {
    e.preventDefault();
    const study = $("#study-id").value.trim(), section = $("#section").value.trim();
    if (study) search(section ? { study_id: study, section } : { study_id: study });
  });
  $("#by-text").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#text").value.trim();
    if (text) search({ text });
  });
  // Enter in the filter or k re-runs the last query with the new setting.
  for (const input of [$("#where"), $("#k")]) {
    input.addEventListener("keydown", (e) => { if (e.key === "Enter" && state.query) search(state.query); });
  }
  $("#encoder").addEventListener("change", (e) => chooseEncoder(e.target.value));
  $("#method").addEventListener("change", () => loadView());
  $("#colour").addEventListener("change", colourBy);
  $("#audit-button").addEventListener("click", runAudit);
  bindMap();
}

async function init() {
  bindControls();
  try {
    await loadEncoders(); // first: a token, when the server asks for one, is in hand before /health
    const health = await getJSON("health"); // counts come only to a caller with the token
    if (health.videos !== undefined) $("#store-info").textContent = `${health.videos} videos · embedstore ${health.version}`;
  } catch (error) {
    showError(error);
  }
}

init();
