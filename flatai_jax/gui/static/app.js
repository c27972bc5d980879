// flatai gui: uploads, per-file progress, and a before/after viewer of downsampled previews.
"use strict";
const $ = (id) => document.getElementById(id);
const jobs = new Map();  // id -> job status from /api/jobs/{id}
const state = {job: null, tab: "compare", split: 0.5, scale: 1, ox: 0, oy: 0, layers: {}};
let pending = [];  // File objects chosen, not yet sent

// --- form ------------------------------------------------------------------------------------
fetch("/api/info").then((r) => r.json()).then((info) => {
  $("device").textContent = `device: ${info.device} · default model: ${info.checkpoint}`;
}).catch(() => {});
$("model").addEventListener("change", () => { $("run-dir").hidden = $("model").value !== "run"; });
$("strength").addEventListener("input", () => {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
});
function choose(files) {
  pending = Array.from(files);
  $("chosen").textContent = pending.map((f) => f.name).join(", ");
}
$("files").addEventListener("change", () => choose($("files").files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files);
});

$("start").addEventListener("click", async () => {
  $("form-error").textContent = "";
  if (!pending.length) { $("form-error").textContent = "Choose one or more images first."; return; }
  const form = new FormData();
  pending.forEach((f) => form.append("files", f, f.name));
  const model = $("model").value === "run" ? $("run-dir").value.trim() : $("model").value;
  if (!model) { $("form-error").textContent = "Enter the run directory of the model."; return; }
  form.append("model", model);
  form.append("task", $("task").value);
  form.append("strength", $("strength").value);
  form.append("cfa", $("cfa").value);
  form.append("input_stretch", $("input-stretch").value.trim() || "auto");
  form.append("tile", $("tile").value);
  form.append("overlap", $("overlap").value);
  try {
    const r = await fetch("/api/jobs", {method: "POST", body: form});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || (body.detail && JSON.stringify(body.detail)) || r.statusText);
    body.jobs.forEach(addJob);
    pending = []; $("files").value = ""; $("chosen").textContent = "";
  } catch (e) {
    $("form-error").textContent = `Could not start: ${e.message}`;
  }
});

// --- jobs ------------------------------------------------------------------------------------
function addJob(job) {
  const div = document.createElement("div");
  div.className = "job"; div.dataset.id = job.id;
  div.innerHTML = '<div class="name"></div><progress max="1" value="0"></progress>' +
                  '<div class="msg"></div><div class="notes"></div>';
  div.querySelector(".name").textContent = job.name;
  div.addEventListener("click", () => { if (jobs.get(job.id).status === "done") select(job.id); });
  $("jobs").appendChild(div);
  update(job);
  poll(job.id);
}
function update(job) {
  jobs.set(job.id, job);
  const div = document.querySelector(`.job[data-id="${job.id}"]`);
  div.dataset.status = job.status;
  const bar = div.querySelector("progress");
  bar.max = Math.max(job.total, 1); bar.value = job.status === "done" ? bar.max : job.done;
  const msg = div.querySelector(".msg");
  msg.classList.toggle("error", job.status === "error");
  msg.textContent = job.status === "error" ? job.message : job.status === "running" && job.total
    ? `running: ${job.done}/${job.total} tiles` : job.status;
  div.querySelector(".notes").textContent = job.notes.join(" · ");
}
async function poll(id) {
  try {
    const r = await fetch(`/api/jobs/${id}`);
    const job = await r.json();
    if (!r.ok) throw new Error(job.error || r.statusText);
    update(job);
    if (job.status === "done" && (!state.job || jobs.get(state.job).status !== "done")) select(id);
    if (job.status === "done" || job.status === "error") return;
  } catch (e) {
    const div = document.querySelector(`.job[data-id="${id}"] .msg`);
    div.textContent = `lost contact with the server: ${e.message}`; div.classList.add("error");
  }
  setTimeout(() => poll(id), 400);
}

// --- viewer ----------------------------------------------------------------------------------
const canvas = $("canvas"), ctx = canvas.getContext("2d");
function select(id) {
  state.job = id;
  document.querySelectorAll(".job").forEach((d) => d.classList.toggle("selected", d.dataset.id === id));
  const job = jobs.get(id);
  const tabs = [["compare", "before / after"], ...["F", "G", "confidence", "psf_field"]
    .filter((k) => job.views.includes(k)).map((k) => [k, k === "psf_field" ? "PSF field" : k])];
  if (!tabs.some(([k]) => k === state.tab)) state.tab = "compare";
  $("tabs").innerHTML = "";
  for (const [key, title] of tabs) {
    const b = document.createElement("button");
    b.className = "tab" + (key === state.tab ? " active" : ""); b.textContent = title;
    b.dataset.tab = key;
    b.addEventListener("click", () => { state.tab = key; select(id); });
    $("tabs").appendChild(b);
  }
  state.layers = {};
  fit(); load(); downloads();
}
const kinds = () => state.tab === "compare" ? ["input", "corrected"] : [state.tab];
const imageUrl = (kind, region) => `/api/jobs/${state.job}/image/${kind}.png?stretch=` +
  $("view-stretch").value + (region ? `&x=${region.x}&y=${region.y}&w=${region.w}&h=${region.h}` : "");
function load() {
  for (const kind of kinds()) {
    const img = new Image();
    img.onload = () => { state.layers[kind] = {preview: img}; draw(); refine(); };
    img.onerror = () => showError(`could not load the ${kind} view`);
    img.src = imageUrl(kind);
  }
  canvas.dataset.afterSrc = state.tab === "compare" ? imageUrl("corrected") : "";
}
function showError(text) { $("form-error").textContent = text; }
function fit() {
  const job = jobs.get(state.job); if (!job) return;
  const [h, w] = job.shape, cw = canvas.clientWidth, ch = canvas.clientHeight;
  state.scale = Math.min(cw / w, ch / h);
  state.ox = (cw - w * state.scale) / 2; state.oy = (ch - h * state.scale) / 2;
}
function draw() {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * dpr; canvas.height = canvas.clientHeight * dpr;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  const job = jobs.get(state.job); if (!job) return;
  const [h, w] = job.shape, s = state.scale;
  ctx.imageSmoothingEnabled = s < 1;
  const paint = (layer) => {
    if (!layer) return;
    ctx.drawImage(layer.preview, state.ox, state.oy, w * s, h * s);
    if (layer.region) {
      const r = layer.region.rect;
      ctx.drawImage(layer.region.img, state.ox + r.x * s, state.oy + r.y * s, r.w * s, r.h * s);
    }
  };
  const [left, right] = kinds();
  paint(state.layers[left]);
  if (right) {
    const sx = state.split * canvas.clientWidth;
    ctx.save(); ctx.beginPath(); ctx.rect(sx, 0, canvas.clientWidth - sx, canvas.clientHeight);
    ctx.clip(); paint(state.layers[right]); ctx.restore();
    ctx.fillStyle = "#ffd54a"; ctx.fillRect(sx - 1, 0, 2, canvas.clientHeight);
    ctx.fillRect(sx - 6, canvas.clientHeight / 2 - 14, 12, 28);
    ctx.font = "12px sans-serif"; ctx.fillText("before", 8, 16); ctx.fillText("after", sx + 8, 16);
  }
}
let refineTimer = null;
function refine() {  // zoomed past the preview's resolution: fetch the visible region at full res
  clearTimeout(refineTimer);
  refineTimer = setTimeout(() => {
    const job = jobs.get(state.job); if (!job) return;
    const [h, w] = job.shape, s = state.scale;
    for (const kind of kinds()) {
      const layer = state.layers[kind];
      if (!layer || w * s <= layer.preview.naturalWidth * 1.05) { if (layer) layer.region = null; continue; }
      const x = Math.max(0, Math.floor(-state.ox / s)), y = Math.max(0, Math.floor(-state.oy / s));
      const rect = {x, y, w: Math.min(w, Math.ceil((canvas.clientWidth - state.ox) / s)) - x,
                    h: Math.min(h, Math.ceil((canvas.clientHeight - state.oy) / s)) - y};
      if (rect.w <= 0 || rect.h <= 0) continue;
      const img = new Image(), job0 = state.job;
      img.onload = () => { if (state.job === job0 && state.layers[kind] === layer) { layer.region = {img, rect}; draw(); } };
      img.src = imageUrl(kind, rect);
    }
  }, 200);
}
let drag = null;
canvas.addEventListener("mousedown", (e) => {
  const sx = state.split * canvas.clientWidth;
  drag = state.tab === "compare" && Math.abs(e.offsetX - sx) < 10 ? {split: true}
    : {x: e.clientX, y: e.clientY, ox: state.ox, oy: state.oy};
});
window.addEventListener("mouseup", () => { if (drag && !drag.split) refine(); drag = null; });
window.addEventListener("mousemove", (e) => {
  if (!drag) return;
  if (drag.split) {
    const box = canvas.getBoundingClientRect();
    state.split = Math.min(1, Math.max(0, (e.clientX - box.left) / box.width));
  } else {
    state.ox = drag.ox + e.clientX - drag.x; state.oy = drag.oy + e.clientY - drag.y;
  }
  draw();
});
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  const f = Math.exp(-e.deltaY * 0.0015);
  state.ox = e.offsetX - (e.offsetX - state.ox) * f; state.oy = e.offsetY - (e.offsetY - state.oy) * f;
  state.scale *= f; draw(); refine();
}, {passive: false});
$("reset").addEventListener("click", () => { fit(); draw(); refine(); });
$("view-stretch").addEventListener("change", () => { if (state.job) { state.layers = {}; load(); downloads(); } });
window.addEventListener("resize", draw);

function downloads() {
  const job = jobs.get(state.job), box = $("downloads");
  box.innerHTML = "download: ";
  const link = (href, text, key) => {
    const a = document.createElement("a"); a.href = href; a.textContent = text; a.dataset.key = key;
    a.setAttribute("download", ""); box.appendChild(a);
  };
  for (const [key, out] of Object.entries(job.outputs)) link(out.url, `${key} (${out.file})`, key);
  link(`/api/jobs/${job.id}/beforeafter.png?stretch=${$("view-stretch").value}`, "before/after PNG", "beforeafter");
}
