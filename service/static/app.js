// vq-tokenizer dashboard: model metadata, live served-traffic codebook usage, and a
// tokenize -> detokenize tryout. Plain DOM + canvas, no libraries (the service runs offline).
"use strict";

const REFRESH_MS = 2000;
const state = { models: [] };

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(digits);
  return String(value);
}

function setStatus(text, kind) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.dataset.state = kind;
}

// Colour ramp for log-scaled counts: 0 -> white-ish (dead code), 1 -> dark blue.
function ramp(t) {
  const r = Math.round(235 - 205 * t);
  const g = Math.round(240 - 150 * t);
  const b = Math.round(250 - 60 * t);
  return `rgb(${r},${g},${b})`;
}

// Heatmap: code k at row floor(k / side), column k % side; colour by log(1 + hits).
// Returns how many non-zero bins it drew (exposed as data-nonzero-bins for tests).
function drawHeatmap(canvas, histogram) {
  const k = histogram.length;
  const side = Math.ceil(Math.sqrt(k));
  const cell = Math.max(1, Math.floor(256 / side));
  canvas.width = side * cell;
  canvas.height = Math.ceil(k / side) * cell;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const maxLog = Math.log1p(Math.max(1, ...histogram));
  let nonzero = 0;
  for (let i = 0; i < k; i++) {
    const hits = histogram[i];
    if (hits > 0) nonzero++;
    ctx.fillStyle = hits > 0 ? ramp(0.15 + 0.85 * (Math.log1p(hits) / maxLog)) : "#f4d6d2";
    ctx.fillRect((i % side) * cell, Math.floor(i / side) * cell, cell, cell);
  }
  return nonzero;
}

// Rank plot: hits per code sorted from most to least used (a flat curve is even usage).
function drawRankPlot(canvas, histogram) {
  const sorted = [...histogram].sort((a, b) => b - a);
  canvas.width = 320;
  canvas.height = 160;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, sorted[0] || 0);
  const barW = canvas.width / sorted.length;
  ctx.fillStyle = "#2f6fde";
  let drawn = 0;
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i] === 0) break;
    const h = Math.max(1, (sorted[i] / top) * (canvas.height - 4));
    ctx.fillRect(i * barW, canvas.height - h, Math.max(barW, 1), h);
    drawn++;
  }
  return drawn;
}

function modelCard(model) {
  const card = el("article", { class: "model", id: `model-${model.name}`, "data-model": model.name });
  card.append(el("h3", { class: "model-name" }, model.name));
  const dl = el("dl");
  const fields = [
    ["quantizer", model.kind + (model.codebook ? ` (${model.codebook}, ${model.grad_estimator})` : "")],
    ["codebook size", model.codebook_size],
    ["f", model.f],
    ["code dim", model.code_dim],
    ["levels", model.levels ? model.levels.join("×") : "–"],
    ["image range", model.image_range.join(" … ")],
    ["device", model.device],
    ["created", model.created ? model.created.replace("T", " ").replace("+00:00", " UTC") : "–"],
  ];
  for (const [key, value] of Object.entries(model.metrics || {})) fields.push([key, fmt(value)]);
  fields.push(
    ["tokens seen", "–", "tokens_seen"],
    ["window usage", "–", "window_usage"],
    ["perplexity", "–", "perplexity"],
    ["dead codes", "–", "dead_codes"],
  );
  for (const [key, value, stat] of fields) {
    dl.append(el("dt", {}, key));
    const dd = el("dd", stat ? { "data-stat": stat } : {}, String(value));
    dl.append(dd);
  }
  card.append(dl);
  const charts = el("div", { class: "charts" });
  const heat = el("figure");
  heat.append(el("canvas", { class: "usage-heatmap", "data-nonzero-bins": "0" }));
  heat.append(el("figcaption", {}, "hits per code id (log scale; pink: no hit in the window)"));
  const rank = el("figure");
  rank.append(el("canvas", { class: "usage-rank", "data-drawn-bars": "0" }));
  rank.append(el("figcaption", {}, "hits per code, most used first"));
  charts.append(heat, rank);
  card.append(charts);
  return card;
}

async function refreshUsage(model) {
  const card = document.getElementById(`model-${model.name}`);
  if (!card) return;
  const usage = await getJSON(`v1/models/${encodeURIComponent(model.name)}/usage`);
  for (const key of ["tokens_seen", "window_usage", "perplexity", "dead_codes"]) {
    const dd = card.querySelector(`[data-stat="${key}"]`);
    if (dd) dd.textContent = fmt(usage[key]);
  }
  const heat = card.querySelector("canvas.usage-heatmap");
  heat.dataset.nonzeroBins = String(drawHeatmap(heat, usage.histogram));
  heat.dataset.tokensSeen = String(usage.tokens_seen);
  const rank = card.querySelector("canvas.usage-rank");
  rank.dataset.drawnBars = String(drawRankPlot(rank, usage.histogram));
  card.dataset.updated = new Date().toISOString();
}

async function loadModels() {
  const list = await getJSON("v1/models");
  state.models = list.models;
  const container = document.getElementById("models");
  container.replaceChildren(...state.models.map(modelCard));
  const select = document.getElementById("tryout-model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, m.name)));
}

async function refreshLoop() {
  try {
    if (state.models.length === 0) await loadModels();
    await Promise.all(state.models.map(refreshUsage));
    setStatus(`ready · ${state.models.length} model(s)`, "ready");
  } catch (error) {
    setStatus(`not ready: ${error.message}`, "error");
  }
  setTimeout(refreshLoop, REFRESH_MS);
}

// Code grid as a mosaic: each code id gets a stable pseudo-random colour.
function drawCodes(canvas, codes) {
  const h = codes.length;
  const w = codes[0].length;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      const id = codes[i][j];
      const o = 4 * (i * w + j);
      image.data[o] = (id * 97) % 256;
      image.data[o + 1] = (id * 57 + 80) % 256;
      image.data[o + 2] = (id * 31 + 160) % 256;
      image.data[o + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

// A synthetic picture (gradient + discs) for trying the service without a file at hand.
function sampleImage() {
  const canvas = document.createElement("canvas");
  canvas.width = 128;
  canvas.height = 128;
  const ctx = canvas.getContext("2d");
  const gradient = ctx.createLinearGradient(0, 0, 128, 128);
  gradient.addColorStop(0, "#f6c177");
  gradient.addColorStop(1, "#31748f");
  ctx.fillStyle = gradient;
  ctx.fillRect(0, 0, 128, 128);
  for (const [x, y, r, colour] of [[40, 44, 22, "#eb6f92"], [90, 80, 30, "#9ccfd8"], [70, 30, 12, "#191724"]]) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
  }
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function runTryout(file) {
  const section = document.getElementById("tryout");
  const message = document.getElementById("tryout-message");
  section.dataset.status = "running";
  const model = document.getElementById("tryout-model").value;
  const fit = document.getElementById("tryout-fit").value;
  document.getElementById("tryout-input").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("files", file, file.name || "sample.png");
  message.textContent = "tokenizing…";
  const query = `model=${encodeURIComponent(model)}&fit=${encodeURIComponent(fit)}`;
  const tokenized = await fetch(`v1/tokenize?${query}`, { method: "POST", body: form });
  const body = await tokenized.json();
  if (!tokenized.ok) throw new Error(`tokenize failed (${tokenized.status}): ${body.detail}`);
  const result = body.results[0];
  drawCodes(document.getElementById("tryout-codes"), result.codes);
  document.getElementById("tryout-codes-caption").textContent =
    `codes: ${result.grid[0]}×${result.grid[1]} (h×w) ids in [0, ${body.codebook_size})`;
  message.textContent = "detokenizing…";
  const decoded = await fetch("v1/detokenize", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, codes: result.codes }),
  });
  if (!decoded.ok) {
    const error = await decoded.json();
    throw new Error(`detokenize failed (${decoded.status}): ${error.detail}`);
  }
  document.getElementById("tryout-output").src = URL.createObjectURL(await decoded.blob());
  message.textContent =
    `${result.image_size[0]}×${result.image_size[1]} px (H×W) -> ${result.grid[0] * result.grid[1]} tokens -> image`;
  section.dataset.status = "done";
  section.dataset.tokens = String(result.grid[0] * result.grid[1]);
  await Promise.all(state.models.map(refreshUsage));
}

function tryout(getFile) {
  Promise.resolve(getFile())
    .then((file) => {
      if (!file) throw new Error("choose an image first");
      return runTryout(file);
    })
    .catch((error) => {
      document.getElementById("tryout").dataset.status = "error";
      document.getElementById("tryout-message").textContent = `error: ${error.message}`;
    });
}

document.getElementById("refresh-s").textContent = String(REFRESH_MS / 1000);
document.getElementById("tryout-form").addEventListener("submit", (event) => {
  event.preventDefault();
  tryout(() => document.getElementById("tryout-file").files[0]);
});
document.getElementById("tryout-sample").addEventListener("click", () => tryout(sampleImage));
refreshLoop().then(() => {
  // /?tryout=sample runs the tryout on the sample image once the models are listed.
  if (new URLSearchParams(location.search).get("tryout") === "sample") tryout(sampleImage);
});
