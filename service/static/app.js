// vq-tokenizer dashboard: a tokenize -> detokenize tryout, each model's training card and
// its live served-traffic codebook usage (heatmap, rank plot, usage over time).
// Plain DOM + canvas, no libraries (the service runs offline).
"use strict";

const REFRESH_MS = 2000;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const INK = "#1d2330";
const MUTED = "#667085";
const GRID = "#e4e7ec";
const DEAD = "#f4d6d2"; // a code with no hit in a full window
const UNSEEN = "#f7f7f5"; // a code with no hit yet, while the window is still filling
const EMPTY = "#eef0f3"; // no traffic at all
const USAGE_COLOUR = "#2f6fde";
const PERPLEXITY_COLOUR = "#e07a1f";
const HEATMAP_CELLS = 1024; // at most 32 x 32 heatmap cells; larger codebooks are binned
const HEATMAP_PX = 320; // side of the heatmap's square of cells
const state = { models: [] };

// API key (setting api_keys): asked for on the first 401 and kept for this tab only
// (sessionStorage). Every request of the page goes to this service, so fetch itself carries
// the key. A 401 with the stored key asks again; declined, the page asks no more until reloaded.
const KEY_ITEM = "vq-api-key";
const plainFetch = window.fetch.bind(window);
let keyDeclined = false;
window.fetch = async (url, options = {}) => {
  const send = (key) => {
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return plainFetch(url, { ...options, headers });
  };
  const used = sessionStorage.getItem(KEY_ITEM);
  const response = await send(used);
  if (response.status !== 401) return response;
  let key = sessionStorage.getItem(KEY_ITEM);
  if (key === used) {
    // another request may have asked meanwhile; else ask now
    if (keyDeclined) return response;
    key = (window.prompt("This service needs an API key:") || "").trim();
    if (!key) {
      keyDeclined = true;
      return response;
    }
    sessionStorage.setItem(KEY_ITEM, key);
  }
  return send(key);
};

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
  if (typeof value === "number") return value.toLocaleString("en-US");
  return String(value);
}

const percent = (x) => `${(100 * x).toFixed(1)} %`;

// Codes that n independent uniform draws from K codes hit on average: K (1 - (1 - 1/K)^n).
// What a window of n tokens can show even when every code is equally likely.
function expectedCoverage(k, n) {
  if (n <= 0) return 0;
  return k * -Math.expm1(n * Math.log1p(-1 / k));
}

function setStatus(text, kind) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.dataset.state = kind;
}

// --- small plotting helpers ---------------------------------------------------------------

function canvas2d(canvas, width, height) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.font = FONT;
  return ctx;
}

// Round numbers (1, 2, 5 x 10^k) from lo to hi, about n of them.
function niceTicks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

// The smallest round number (a multiple of niceTicks' step) >= v.
function niceCeil(v) {
  const ticks = niceTicks(0, v, 4);
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : v;
  return Math.ceil(v / step - 1e-9) * step;
}

function shortNumber(v) {
  if (Math.abs(v) >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (Math.abs(v) >= 1e3) return `${+(v / 1e3).toPrecision(3)}k`;
  return String(+v.toPrecision(3));
}

function shortTime(seconds) {
  if (seconds >= 7200) return `${+(seconds / 3600).toPrecision(3)} h`;
  if (seconds >= 120) return `${+(seconds / 60).toPrecision(3)} min`;
  return `${+seconds.toPrecision(3)} s`;
}

function text(ctx, str, x, y, align = "left", baseline = "alphabetic", colour = MUTED) {
  ctx.fillStyle = colour;
  ctx.textAlign = align;
  ctx.textBaseline = baseline;
  ctx.fillText(str, x, y);
}

// Frame of a plot box with ticks: xTicks / yTicks are [pixel, label] pairs.
function axes(ctx, box, { xTicks = [], yTicks = [], yTicksRight = [], xLabel, yLabel, yLabelRight }) {
  const { left, top, width, height } = box;
  const bottom = top + height;
  const right = left + width;
  ctx.strokeStyle = GRID;
  ctx.lineWidth = 1;
  for (const [y] of yTicks) {
    ctx.beginPath();
    ctx.moveTo(left, y + 0.5);
    ctx.lineTo(right, y + 0.5);
    ctx.stroke();
  }
  ctx.strokeStyle = MUTED;
  ctx.strokeRect(left + 0.5, top + 0.5, width, height);
  for (const [x, label] of xTicks) {
    ctx.beginPath();
    ctx.moveTo(x + 0.5, bottom);
    ctx.lineTo(x + 0.5, bottom + 4);
    ctx.stroke();
    text(ctx, label, x, bottom + 6, "center", "top");
  }
  for (const [y, label] of yTicks) {
    ctx.beginPath();
    ctx.moveTo(left - 4, y + 0.5);
    ctx.lineTo(left, y + 0.5);
    ctx.stroke();
    text(ctx, label, left - 6, y, "right", "middle");
  }
  for (const [y, label] of yTicksRight) {
    ctx.beginPath();
    ctx.moveTo(right, y + 0.5);
    ctx.lineTo(right + 4, y + 0.5);
    ctx.stroke();
    text(ctx, label, right + 6, y, "left", "middle");
  }
  if (xLabel) text(ctx, xLabel, left + width / 2, bottom + 20, "center", "top", INK);
  if (yLabel) {
    ctx.save();
    ctx.translate(11, top + height / 2);
    ctx.rotate(-Math.PI / 2);
    text(ctx, yLabel, 0, 0, "center", "middle", INK);
    ctx.restore();
  }
  if (yLabelRight) {
    ctx.save();
    ctx.translate(ctx.canvas.width - 9, top + height / 2);
    ctx.rotate(Math.PI / 2);
    text(ctx, yLabelRight, 0, 0, "center", "middle", INK);
    ctx.restore();
  }
}

function showEmpty(figure, empty) {
  figure.querySelector(".no-traffic").hidden = !empty;
  figure.dataset.empty = String(empty);
}

// --- the three usage charts ---------------------------------------------------------------

// Pale to dark blue for s in [0, 1] (the palest still tells a hit from UNSEEN's near-white).
function shade(s) {
  const t = 0.3 + 0.7 * s;
  return `rgb(${Math.round(235 - 205 * t)},${Math.round(240 - 150 * t)},${Math.round(250 - 60 * t)})`;
}

// Colour of a code with `hits` >= 1 when the busiest has `max`: log scale.
const ramp = (hits, max) => shade(max > 1 ? Math.log(hits) / Math.log(max) : 1);

// Per heatmap cell: `size` consecutive code ids, how many of them were hit, their hits.
function binHistogram(histogram, size) {
  const cells = [];
  for (let start = 0; start < histogram.length; start += size) {
    const codes = histogram.slice(start, start + size);
    cells.push({
      start,
      codes: codes.length,
      used: codes.filter((h) => h > 0).length,
      hits: codes.reduce((a, b) => a + b, 0),
    });
  }
  return cells;
}

// Heatmap of the window's hits by code id, about HEATMAP_PX square whatever K is. Up to
// HEATMAP_CELLS codes: one cell per code, coloured by log(hits). More: each cell holds `bin`
// consecutive ids and is coloured by the share of them hit. Codes without a hit are
// "not yet seen" (grey) while the window is filling, "dead" (pink) once it is full.
// Sets data-nonzero-bins (codes hit), data-bin-size and data-cells on the canvas.
function drawHeatmap(canvas, histogram, { empty, filling }) {
  const k = histogram.length;
  const bin = Math.ceil(k / HEATMAP_CELLS);
  const cells = binHistogram(histogram, bin);
  const side = Math.ceil(Math.sqrt(cells.length));
  const rows = Math.ceil(cells.length / side);
  const cell = Math.max(2, Math.floor(HEATMAP_PX / side));
  const box = { left: 54, top: 8, width: side * cell, height: rows * cell };
  const ctx = canvas2d(canvas, box.left + box.width + 112, box.top + box.height + 40);
  const max = Math.max(1, ...histogram);
  const none = filling ? UNSEEN : DEAD;
  cells.forEach((c, i) => {
    const colour = bin === 1 ? ramp(c.hits, max) : shade(c.used / c.codes);
    ctx.fillStyle = empty ? EMPTY : c.used > 0 ? colour : none;
    ctx.fillRect(box.left + (i % side) * cell, box.top + Math.floor(i / side) * cell, cell, cell);
  });
  const rowTicks = niceTicks(0, rows - 1, 4).map((r) => [box.top + (r + 0.5) * cell, shortNumber(r * side * bin)]);
  const colTicks = niceTicks(0, side - 1, 3).map((c) => [box.left + (c + 0.5) * cell, `+${shortNumber(c * bin)}`]);
  axes(ctx, box, { xTicks: colTicks, yTicks: rowTicks, xLabel: "+ code id", yLabel: "code id (row start)" });
  // Colour scale beside the cells, the no-hit swatch below it.
  const bar = { left: box.left + box.width + 14, top: box.top, width: 12, height: box.height - 22 };
  const at = (s) => bar.top + (1 - s) * (bar.height - 1);
  for (let y = 0; y < bar.height; y++) {
    ctx.fillStyle = empty ? EMPTY : shade(1 - y / Math.max(1, bar.height - 1));
    ctx.fillRect(bar.left, bar.top + y, bar.width, 1);
  }
  ctx.strokeStyle = MUTED;
  ctx.strokeRect(bar.left + 0.5, bar.top + 0.5, bar.width, bar.height);
  if (bin === 1) {
    const barTicks = [1];
    for (let p = 10; p < max; p *= 10) barTicks.push(p);
    if (max > 1) barTicks.push(max);
    for (const v of barTicks) {
      const s = max > 1 ? Math.log(v) / Math.log(max) : 1;
      if (v !== max && max > 1 && 1 - s < 0.12) continue;
      text(ctx, shortNumber(v), bar.left + bar.width + 4, at(s), "left", "middle");
    }
  } else {
    for (const s of [0.25, 0.5, 0.75, 1]) text(ctx, `${s * 100}%`, bar.left + bar.width + 4, at(s), "left", "middle");
  }
  ctx.fillStyle = none;
  ctx.fillRect(bar.left, box.top + box.height - 12, bar.width, 12);
  ctx.strokeRect(bar.left + 0.5, box.top + box.height - 11.5, bar.width, 12);
  text(ctx, filling ? "not yet seen" : "no hit", bar.left + bar.width + 4, box.top + box.height - 6, "left", "middle");
  text(ctx, bin === 1 ? "hits" : "codes hit", bar.left, box.top + box.height + 8, "left", "top", INK);
  canvas.dataset.binSize = String(bin);
  canvas.dataset.cells = String(cells.length);
  // For the hover read-out (heatmapHover).
  canvas.heatmap = { box, side, cell, cells, bin };
  return histogram.filter((h) => h > 0).length;
}

// The read-out under the heatmap: which code ids the cell under the pointer holds, and hits.
function heatmapHover(event) {
  const canvas = event.target;
  const map = canvas.heatmap;
  const out = canvas.closest("figure").querySelector(".readout");
  if (!map || !out) return;
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width) - map.box.left;
  const y = (event.clientY - rect.top) * (canvas.height / rect.height) - map.box.top;
  const i = Math.floor(y / map.cell) * map.side + Math.floor(x / map.cell);
  const c = x >= 0 && y >= 0 && x < map.box.width ? map.cells[i] : undefined;
  if (!c) {
    out.textContent = "";
    return;
  }
  const ids = c.codes === 1 ? `code ${fmt(c.start)}` : `codes ${fmt(c.start)}–${fmt(c.start + c.codes - 1)}`;
  out.textContent = `${ids}: ${fmt(c.hits)} hits, ${c.used} of ${c.codes} hit`;
}

// Rank plot: hits per code sorted from most to least used, on a log scale (one busy code
// cannot flatten the rest); a dashed line where the used codes end.
function drawRankPlot(canvas, histogram, empty) {
  const sorted = [...histogram].sort((a, b) => b - a);
  const k = sorted.length;
  const box = { left: 50, top: 10, width: 260, height: 150 };
  const ctx = canvas2d(canvas, box.left + box.width + 14, box.top + box.height + 40);
  const used = sorted.findIndex((v) => v === 0) === -1 ? k : sorted.findIndex((v) => v === 0);
  const decades = Math.max(1, Math.ceil(Math.log10(Math.max(1, sorted[0] || 1)) + 1e-9));
  const y = (v) => box.top + box.height - (Math.log10(v) / decades) * box.height;
  const x = (rank) => box.left + ((rank - 1) / Math.max(1, k - 1)) * box.width;
  if (!empty) {
    ctx.fillStyle = USAGE_COLOUR;
    for (let px = 0; px < box.width; px++) {
      const rank = Math.floor((px / box.width) * k); // the busiest code of this pixel column
      const hits = sorted[rank];
      if (!(hits > 0)) break;
      const top = y(hits);
      ctx.fillRect(box.left + px, top, 1, Math.max(1, box.top + box.height - top));
    }
  }
  const yTicks = [];
  for (let d = 0; d <= decades; d++) yTicks.push([y(10 ** d), shortNumber(10 ** d)]);
  const xTicks = [1, ...niceTicks(0, k, 3).filter((r) => r > 0)].map((r) => [x(r), shortNumber(r)]);
  axes(ctx, box, { xTicks, yTicks, xLabel: "rank (most used first)", yLabel: "hits (log scale)" });
  if (!empty && used < k) {
    const ux = Math.round(x(used + 1)) + 0.5;
    ctx.strokeStyle = INK;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(ux, box.top);
    ctx.lineTo(ux, box.top + box.height);
    ctx.stroke();
    ctx.setLineDash([]);
    const label = `${used.toLocaleString("en-US")} used`;
    text(ctx, label, ux + (ux > box.left + box.width - 70 ? -4 : 4), box.top + 12, ux > box.left + box.width - 70 ? "right" : "left", "middle", INK);
  }
  return empty ? 0 : used;
}

// Window usage (left axis, 0-1) and perplexity (right axis) since the model was loaded.
function drawHistory(canvas, history) {
  const points = history.points;
  const box = { left: 54, top: 22, width: 250, height: 138 };
  const ctx = canvas2d(canvas, box.left + box.width + 56, box.top + box.height + 40);
  const tMax = Math.max(1, ...points.map((p) => p.t));
  const pTop = niceCeil(Math.max(1, ...points.map((p) => p.perplexity)));
  const x = (t) => box.left + (t / tMax) * box.width;
  const yUsage = (u) => box.top + box.height - u * box.height;
  const yPerp = (v) => box.top + box.height - (v / pTop) * box.height;
  const xTicks = niceTicks(0, tMax, 3).map((t) => [x(t), shortTime(t)]);
  const yTicks = [0, 0.25, 0.5, 0.75, 1].map((u) => [yUsage(u), `${u * 100}%`]);
  const yTicksRight = niceTicks(0, pTop, 4).map((v) => [yPerp(v), shortNumber(v)]);
  axes(ctx, box, { xTicks, yTicks, yTicksRight, xLabel: "time since start", yLabel: "window usage", yLabelRight: "perplexity" });
  for (const [key, colour, y] of [["window_usage", USAGE_COLOUR, yUsage], ["perplexity", PERPLEXITY_COLOUR, yPerp]]) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i === 0 ? ctx.moveTo(x(p.t), y(p[key])) : ctx.lineTo(x(p.t), y(p[key]))));
    ctx.stroke();
    for (const p of points.length <= 24 ? points : points.slice(-1)) {
      ctx.beginPath();
      ctx.arc(x(p.t), y(p[key]), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.lineWidth = 1;
  // Legend above the box.
  ctx.fillStyle = USAGE_COLOUR;
  ctx.fillRect(box.left, 8, 14, 3);
  text(ctx, "window usage", box.left + 18, 10, "left", "middle", INK);
  ctx.fillStyle = PERPLEXITY_COLOUR;
  ctx.fillRect(box.left + 118, 8, 14, 3);
  text(ctx, "perplexity", box.left + 136, 10, "left", "middle", INK);
  return points.length;
}

// --- model cards --------------------------------------------------------------------------

// The artifact's metrics (config.json, measured on held-out images at export), labelled.
const CARD_METRICS = {
  psnr: ["PSNR", (v) => `${v.toFixed(2)} dB`],
  ssim: ["SSIM", (v) => v.toFixed(3)],
  lpips: ["LPIPS (VGG)", (v) => v.toFixed(3)],
  epoch_usage: ["codes used", percent],
  epoch_perplexity: ["perplexity", (v) => v.toFixed(1)],
  epoch_dead_codes: ["dead codes", (v) => fmt(Math.round(v))],
  tokens: ["tokens evaluated", (v) => fmt(Math.round(v))],
  loss: ["loss", (v) => v.toFixed(4)],
  mse: ["MSE", (v) => v.toFixed(4)],
};

// A captioned table of (label, value[, data-stat]) rows, two pairs per table row.
function table(cls, caption, note, rows) {
  const t = el("table", { class: cls });
  const cap = el("caption", {}, caption);
  cap.append(typeof note === "string" ? el("small", {}, note) : note);
  t.append(cap);
  const body = el("tbody");
  for (let i = 0; i < rows.length; i += 2) {
    const tr = el("tr");
    for (const [key, value, stat] of rows.slice(i, i + 2)) {
      const th = el("th", stat ? { scope: "row", "data-for": stat } : { scope: "row" }, key);
      tr.append(th, el("td", stat ? { "data-stat": stat } : {}, String(value)));
    }
    body.append(tr);
  }
  t.append(body);
  return t;
}

function chart(cls, caption) {
  const figure = el("figure", { class: "chart" });
  const plot = el("div", { class: "plot" });
  plot.append(el("canvas", { class: cls }), el("div", { class: "no-traffic" }, "no traffic yet"));
  figure.append(plot, el("figcaption", {}, caption));
  return figure;
}

function heatmapCaption(bin, filling) {
  const cells = bin === 1
    ? "one cell per code id, coloured by its hits in the window (log scale)"
    : `each cell: ${bin} consecutive code ids, coloured by the share of them hit in the window`;
  const none = filling
    ? "white: not yet seen (the window is still filling)"
    : "pink: no hit in the full window";
  return `${cells}; ${none}. Point at a cell for its ids and hits.`;
}

// Where the training card's figures come from: crops, not full images (they read lower than
// the full-image Kodak figures of the model card, which the note links).
function trainingNote(model) {
  const note = el("small", { class: "training-note" });
  const tokens = (model.metrics || {}).tokens;
  const pixels = tokens ? ` (${fmt(Math.round(tokens))} tokens, ${(tokens * model.f * model.f / 1e6).toFixed(1)} Mpx)` : "";
  note.append(
    `config.json: vq-train's validation at export, on the training run's held-out crops${pixels}, ` +
      "not full images, so they read lower than full-image figures. ",
  );
  if (model.card) {
    note.append(el("a", {
      class: "card-link",
      href: `v1/models/${encodeURIComponent(model.name)}/card`,
      target: "_blank",
    }, "Full-image figures (Kodak): the model card"));
  }
  return note;
}

function modelCard(model) {
  const card = el("article", { class: "model", id: `model-${model.name}`, "data-model": model.name });
  const quantizer = model.kind === "fsq"
    ? `FSQ, levels ${model.levels.join("×")}`
    : `VQ, ${model.codebook} codebook, ${model.grad_estimator}`;
  card.append(el("h3", { class: "model-name" }, model.name));
  const trained = [
    ["quantizer", quantizer],
    ["codebook size", fmt(model.codebook_size)],
    ["downsampling f", model.f],
    ["code dim", model.code_dim],
    ["created", model.created ? model.created.slice(0, 10) : "–"],
  ];
  for (const [key, value] of Object.entries(model.metrics || {})) {
    const [label, show] = CARD_METRICS[key] || [key, (v) => fmt(v)];
    trained.push([label, typeof value === "number" ? show(value) : String(value)]);
  }
  const live = [
    ["device", model.device],
    ["tokens seen", "–", "tokens_seen"],
    ["tokens in window", "–", "window_tokens"],
    ["window usage", "–", "window_usage"],
    ["uniform draws would hit", "–", "reachable"],
    ["perplexity", "–", "perplexity"],
    ["dead codes", "–", "dead_codes"],
  ];
  const tables = el("div", { class: "tables" });
  tables.append(
    table("training-card", "Training card", trainingNote(model), trained),
    table("live-traffic", "Served traffic", "live: window and totals since start", live),
  );
  card.append(tables, el("p", { class: "hint reach-note", "data-stat": "reach_note" }));
  const charts = el("div", { class: "charts" });
  const heatmap = chart("usage-heatmap", heatmapCaption(1, true));
  heatmap.append(el("div", { class: "readout" }));
  heatmap.querySelector("canvas").addEventListener("mousemove", heatmapHover);
  charts.append(
    heatmap,
    chart("usage-rank", "hits per code, most used first (log scale)"),
    chart("usage-history", "window usage and perplexity since start"),
  );
  card.append(charts);
  return card;
}

async function refreshUsage(model) {
  const card = document.getElementById(`model-${model.name}`);
  if (!card) return;
  const name = encodeURIComponent(model.name);
  const [usage, history] = await Promise.all([
    getJSON(`v1/models/${name}/usage`),
    getJSON(`v1/models/${name}/usage/history`),
  ]);
  const k = usage.codebook_size;
  const n = usage.window_tokens;
  // Until the window holds `window` tokens a code without a hit has not had its chance yet:
  // n uniform draws hit expectedCoverage(k, n) codes, and no traffic hits more than n.
  const filling = n < usage.window;
  const expected = expectedCoverage(k, n);
  const shown = {
    tokens_seen: fmt(usage.tokens_seen),
    window_tokens: `${fmt(n)} / ${shortNumber(usage.window)}${filling ? " (filling)" : ""}`,
    window_usage: percent(usage.window_usage),
    reachable: `${percent(expected / k)} (at most ${percent(Math.min(n, k) / k)})`,
    perplexity: usage.perplexity.toFixed(1),
    // One meaning per name (docs/api.md): unseen_codes while the window fills, dead_codes once full.
    dead_codes: `${fmt(filling ? usage.unseen_codes : usage.dead_codes)} / ${fmt(k)}`,
  };
  for (const [key, value] of Object.entries(shown)) {
    const cell = card.querySelector(`[data-stat="${key}"]`);
    if (cell) cell.textContent = value;
  }
  card.querySelector('th[data-for="dead_codes"]').textContent = filling ? "not yet seen" : "dead codes";
  card.querySelector('[data-stat="reach_note"]').textContent = n === 0 ? "" : filling
    ? `The window holds ${fmt(n)} of its ${fmt(usage.window)} tokens: ${fmt(n)} draws from ` +
      `${fmt(k)} equally likely codes would hit ${fmt(Math.round(expected))} of them ` +
      `(${percent(expected / k)}) on average, and no traffic can hit more than ` +
      `${percent(Math.min(n, k) / k)}. Codes without a hit are "not yet seen" until the window is full; ` +
      "compare the training card's usage then."
    : `The window is full (${fmt(n)} tokens): ${fmt(n)} draws from ${fmt(k)} equally likely codes ` +
      `would hit ${percent(expected / k)} of them; codes without a hit in it are dead for this traffic.`;
  card.dataset.filling = String(filling);
  const empty = n === 0;
  const heat = card.querySelector("canvas.usage-heatmap");
  heat.dataset.nonzeroBins = String(drawHeatmap(heat, usage.histogram, { empty, filling }));
  heat.dataset.tokensSeen = String(usage.tokens_seen);
  heat.closest("figure").querySelector("figcaption").textContent = heatmapCaption(Number(heat.dataset.binSize), filling);
  showEmpty(heat.closest("figure"), empty);
  const rank = card.querySelector("canvas.usage-rank");
  rank.dataset.drawnBars = String(drawRankPlot(rank, usage.histogram, empty));
  rank.dataset.scale = "log";
  showEmpty(rank.closest("figure"), empty);
  const line = card.querySelector("canvas.usage-history");
  line.dataset.points = String(drawHistory(line, history));
  showEmpty(line.closest("figure"), history.points.length === 0);
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

// --- the tryout ---------------------------------------------------------------------------

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
  canvas.width = 256;
  canvas.height = 256;
  const ctx = canvas.getContext("2d");
  const gradient = ctx.createLinearGradient(0, 0, 256, 256);
  gradient.addColorStop(0, "#f6c177");
  gradient.addColorStop(1, "#31748f");
  ctx.fillStyle = gradient;
  ctx.fillRect(0, 0, 256, 256);
  for (const [x, y, r, colour] of [[80, 88, 44, "#eb6f92"], [180, 160, 60, "#9ccfd8"], [140, 60, 24, "#191724"]]) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
  }
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// RGBA pixels of an image blob as the browser decodes it (no colour-space conversion).
async function pixelsOf(blob, width, height) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = width ?? bitmap.width;
  canvas.height = height ?? bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

// PSNR (RGB, dB) of the reconstruction against the pixels the model was given. crop and pad
// are exact (the service's centre crop; the padded border left out); a resized input is
// compared with the browser's own resize of the original, so that figure is approximate.
async function reconstructionPsnr(file, recon, fit, [h, w]) {
  const out = await pixelsOf(recon);
  const [oh, ow] = [out.height, out.width];
  let ref;
  let top = 0;
  let left = 0;
  let rows = oh;
  let cols = ow;
  let exact = true;
  if (oh === h && ow === w) {
    ref = await pixelsOf(file);
  } else if (fit === "crop") {
    ref = await pixelsOf(file);
    top = Math.floor((h - oh) / 2);
    left = Math.floor((w - ow) / 2);
  } else if (fit === "pad") {
    ref = await pixelsOf(file);
    [rows, cols] = [h, w];
  } else {
    ref = await pixelsOf(file, ow, oh);
    exact = false;
  }
  let sum = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const o = 4 * (i * ow + j);
      const r = 4 * ((i + top) * ref.width + (j + left));
      for (let c = 0; c < 3; c++) sum += (out.data[o + c] - ref.data[r + c]) ** 2;
    }
  }
  const mse = sum / (rows * cols * 3);
  return { psnr: mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse), exact };
}

function applyZoom() {
  const choice = document.getElementById("tryout-zoom").value;
  const row = document.querySelector(".tryout-row");
  // "fit": original and reconstruction side by side beside the 128-px code map, all three in
  // view, never enlarged; 1x/2x/4x show pixels as they are (the row scrolls).
  // On a phone-width row the figures wrap one per line (style.css), each the row's width.
  const narrow = row.clientWidth < 560;
  const room = narrow
    ? row.clientWidth - 4
    : Math.max(64, Math.floor((row.clientWidth - 128 - 2 * 16 - 12) / 2));
  for (const id of ["tryout-input", "tryout-output"]) {
    const img = document.getElementById(id);
    if (!img.naturalWidth) continue;
    const zoom = choice === "fit" ? Math.min(1, room / img.naturalWidth) : Number(choice);
    img.style.width = `${Math.floor(img.naturalWidth * zoom)}px`;
    img.style.height = `${Math.floor(img.naturalHeight * zoom)}px`;
    img.style.imageRendering = zoom < 1 ? "auto" : "";
    img.dataset.zoom = choice === "fit" ? `fit ${zoom.toFixed(3)}` : String(zoom);
  }
}

// A failed try leaves no half-drawn figure behind (a rejected file's broken image).
function clearTryout() {
  for (const id of ["tryout-input", "tryout-output"]) {
    const img = document.getElementById(id);
    img.removeAttribute("src");
    img.removeAttribute("style");
    delete img.dataset.zoom;
  }
  const codes = document.getElementById("tryout-codes");
  codes.width = 0;
  codes.height = 0;
  document.getElementById("tryout-stats").textContent = "";
}

function loaded(img, blob) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not show the image"));
    img.src = URL.createObjectURL(blob);
  });
}

async function runTryout(file) {
  const section = document.getElementById("tryout");
  const message = document.getElementById("tryout-message");
  const stats = document.getElementById("tryout-stats");
  section.dataset.status = "running";
  stats.textContent = "";
  const model = document.getElementById("tryout-model").value;
  const fit = document.getElementById("tryout-fit").value;
  const input = loaded(document.getElementById("tryout-input"), file);
  const form = new FormData();
  form.append("files", file, file.name || "sample.png");
  message.textContent = "tokenizing…";
  const query = `model=${encodeURIComponent(model)}&fit=${encodeURIComponent(fit)}`;
  const tokenized = await fetch(`v1/tokenize?${query}`, { method: "POST", body: form });
  const body = await tokenized.json();
  if (!tokenized.ok) throw new Error(`tokenize failed (${tokenized.status}): ${body.detail}`);
  const result = body.results[0];
  const [gh, gw] = result.grid;
  drawCodes(document.getElementById("tryout-codes"), result.codes);
  document.getElementById("tryout-codes-caption").textContent = `codes (ids as colours)`;
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
  const recon = await decoded.blob();
  const output = await loaded(document.getElementById("tryout-output"), recon);
  await input;
  applyZoom();
  const f = output.naturalHeight / gh;
  const { psnr, exact } = await reconstructionPsnr(file, recon, fit, result.image_size);
  const tokens = gh * gw;
  const bitsPerToken = Math.log2(body.codebook_size);
  const pixels = output.naturalHeight * output.naturalWidth;
  const bpp = (tokens * bitsPerToken) / pixels;
  stats.replaceChildren(
    el("b", {}, `PSNR ${exact ? "" : "≈ "}${psnr === Infinity ? "∞" : psnr.toFixed(2)} dB`),
    ` · ${bpp.toFixed(3)} bits per pixel (${tokens.toLocaleString("en-US")} tokens × ` +
      `${bitsPerToken.toFixed(2)} bits / ${pixels.toLocaleString("en-US")} px) · ` +
      `token grid ${gh}×${gw} (h×w, f = ${f})`,
  );
  stats.dataset.psnr = psnr.toFixed(3);
  stats.dataset.psnrExact = String(exact);
  stats.dataset.bpp = bpp.toFixed(5);
  stats.dataset.grid = `${gh}x${gw}`;
  message.textContent =
    `${result.image_size[0]}×${result.image_size[1]} px (H×W) -> ${tokens} tokens -> ` +
    `${output.naturalHeight}×${output.naturalWidth} px` + (exact ? "" : " (PSNR against the browser's resize)");
  section.dataset.status = "done";
  section.dataset.tokens = String(tokens);
  section.dataset.outputShown = `${output.getBoundingClientRect().width}x${output.naturalWidth}`;
  await Promise.all(state.models.map(refreshUsage));
}

function tryout(getFile) {
  Promise.resolve(getFile())
    .then((file) => {
      if (!file) throw new Error("choose an image first");
      return runTryout(file);
    })
    .catch((error) => {
      clearTryout();
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
document.getElementById("tryout-zoom").addEventListener("change", applyZoom);
window.addEventListener("resize", applyZoom);
refreshLoop().then(() => {
  // Where the tryout ends in the first screenful (tests check it is above the fold).
  const box = document.getElementById("tryout").getBoundingClientRect();
  document.body.dataset.tryoutBottom = String(Math.round(box.bottom));
  document.body.dataset.viewportHeight = String(window.innerHeight);
  // /?tryout=sample runs the tryout on the sample image once the models are listed.
  if (new URLSearchParams(location.search).get("tryout") === "sample") tryout(sampleImage);
});
