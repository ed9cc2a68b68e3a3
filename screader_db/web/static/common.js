// Shared by the annotate and atlas pages: talking to the server, the header, number formats,
// colours, a sortable and filterable table, and a canvas scatter plot.
"use strict";

/* ---------- Talking to the server ---------- */

const NETWORK_MESSAGE = "Could not reach the server; check your connection and that the server is running, then try again.";

/** An error whose message is the one line to show to the person using the page. */
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** The line to show for a failed response: the server's {"error"} when it sent one. */
function errorLine(status, statusText, body) {
  if (body && typeof body.error === "string" && body.error) return body.error;
  return `The server answered ${status}${statusText ? " " + statusText : ""}.`;
}

/** fetch() a JSON answer; throws ApiError carrying the server's one-line error. */
async function fetchJson(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, ...init });
  } catch {
    throw new ApiError(NETWORK_MESSAGE, 0);
  }
  let text = "";
  try {
    text = await response.text();
  } catch {
    throw new ApiError(NETWORK_MESSAGE, 0);
  }
  const body = parseJson(text);
  if (!response.ok) throw new ApiError(errorLine(response.status, response.statusText, body), response.status);
  if (body === null) throw new ApiError(`The server sent an answer that is not JSON (from ${url}).`, response.status);
  return body;
}

/**
 * POST a FormData with XMLHttpRequest, which (unlike fetch) reports upload progress.
 * onProgress(sentBytes, totalBytes or null) is called while the body is sent.
 */
function postForm(url, form, { headers = {}, onProgress = null } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    if (onProgress) {
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : null));
    }
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300 && body !== null) resolve(body);
      else if (xhr.status >= 200 && xhr.status < 300) reject(new ApiError(`The server sent an answer that is not JSON (from ${url}).`, xhr.status));
      else reject(new ApiError(errorLine(xhr.status, xhr.statusText, body), xhr.status));
    });
    xhr.addEventListener("error", () => reject(new ApiError(NETWORK_MESSAGE, 0)));
    xhr.addEventListener("abort", () => reject(new ApiError("The upload was stopped before it finished.", 0)));
    xhr.send(form);
  });
}

/** Show a one-line message in a box that is hidden while empty. */
function showLine(element, text) {
  element.textContent = text || "";
  element.hidden = !text;
}

/* ---------- Header ---------- */

/** Fill the header's atlas name and version, and mark the link of the page being shown. */
function fillHeader(atlas, version) {
  const name = document.getElementById("atlas-name");
  if (name) name.textContent = `${atlas} · version ${version}`;
}

function markCurrentLink() {
  const atlasPage = location.pathname.replace(/\/+$/, "") === "/ui/atlas";
  for (const link of document.querySelectorAll(".topbar nav a")) {
    const isAtlas = link.getAttribute("href") === "/ui/atlas";
    if (isAtlas === atlasPage) link.setAttribute("aria-current", "page");
  }
}
document.addEventListener("DOMContentLoaded", markCurrentLink);

/* ---------- Numbers ---------- */

const DASH = "–";

function formatInt(n) {
  return n === null || n === undefined || Number.isNaN(n) ? DASH : Number(n).toLocaleString("en-US");
}

function formatNumber(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? DASH : Number(x).toFixed(digits);
}

/** A share in 0..1 as a percentage. */
function formatPercent(share, digits = 1) {
  return share === null || share === undefined || Number.isNaN(share) ? DASH : `${(share * 100).toFixed(digits)} %`;
}

/** A size as the server writes its limits: decimal megabytes, or bytes when under 0.1 MB. */
function formatMB(bytes) {
  if (bytes < 100000) return `${formatInt(bytes)} bytes`;
  return `${(bytes / 1e6).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 })} MB`;
}

/** An ISO time as "2026-11-30 12:23" (the full value belongs in a title). */
function formatWhen(iso) {
  const found = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?$/.exec(iso || "");
  if (!found) return iso || "";
  const zone = !found[5] ? "" : /^(Z|[+-]00:?00)$/.test(found[5]) ? " UTC" : ` ${found[5]}`;
  return `${found[1]} ${found[2]}${zone}`;
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return DASH;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
}

/* ---------- Colours ---------- */

const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

// Hand-picked to stay apart from each other and from the greys used for the reference and for
// Unassigned; past these, hues step by the golden angle.
const BASE_COLOURS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
  "#bcbd22", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
  "#f7b6d2", "#9edae5", "#dbdb8d", "#637939", "#843c39", "#7b4173", "#e7ba52", "#3182bd",
];

/** n distinct colours. */
function palette(n) {
  const colours = BASE_COLOURS.slice(0, n);
  for (let i = colours.length; i < n; i += 1) {
    const hue = (i * 137.508) % 360;
    const lightness = [42, 58, 34, 68][i % 4];
    colours.push(`hsl(${hue.toFixed(1)}, 62%, ${lightness}%)`);
  }
  return colours;
}

const UNASSIGNED = "Unassigned";
const UNASSIGNED_COLOUR = "#4a4a4a";
const REFERENCE_GREY = "#dcdcdc";
const MISSING_COLOUR = "#b8b8b8";

/**
 * label → colour: the atlas's labels first (sorted, so both pages give a label the same colour),
 * then any others seen (sorted).
 */
function labelColours(atlasLabels, others = []) {
  const sorted = (values) => [...new Set(values)].filter((l) => l !== UNASSIGNED).sort(collator.compare);
  const first = sorted(atlasLabels);
  const known = new Set(first);
  const names = [...first, ...sorted(others).filter((l) => !known.has(l))];
  const colours = palette(names.length);
  const map = new Map(names.map((name, i) => [name, colours[i]]));
  map.set(UNASSIGNED, UNASSIGNED_COLOUR);
  return map;
}

// Viridis at five stops: readable on white and for most colour-blind readers.
const RAMP_STOPS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const RAMP_RGB = RAMP_STOPS.map((hex) => [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16)));

/** Colour of a value in 0..1 on the continuous ramp. */
function rampColour(t) {
  const clamped = Math.min(1, Math.max(0, t));
  const position = clamped * (RAMP_RGB.length - 1);
  const k = Math.min(RAMP_RGB.length - 2, Math.floor(position));
  const f = position - k;
  const rgb = RAMP_RGB[k].map((v, j) => Math.round(v + f * (RAMP_RGB[k + 1][j] - v)));
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

/** Count each value of an array: Map value → count, most frequent first. */
function countValues(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
  return new Map([...counts].sort((a, b) => b[1] - a[1] || collator.compare(String(a[0]), String(b[0]))));
}

/* ---------- Small DOM helpers ---------- */

/** Create an element with properties and children: el("td", {className: "num"}, "12"). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function fillSelect(select, values, { selected = [] } = {}) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: selected.includes(v) }, v)));
}


/* ---------- Sortable, filterable, paged table ---------- */

/**
 * A table over rows 0..n-1 of columnar data. Each column is
 *   { label, value: (i) => sortable value, text?: (i) => shown text, numeric?: bool, render?: (td, i) => void }.
 * Header cells sort (click again to reverse); an optional filter input keeps rows whose text
 * contains what was typed; at most pageSize rows are in the DOM, with prev/next beneath.
 * rowClass(i) may name a class for a row (to mark one, say).
 */
class DataTable {
  constructor(table, columns, { pageSize = Infinity, filter = null, count = null, noun = "rows", rowClass = null } = {}) {
    this.table = table;
    this.columns = columns;
    this.pageSize = pageSize;
    this.filterInput = filter;
    this.countElement = count;
    this.noun = noun;
    this.rowClass = rowClass;
    this.n = 0;
    this.sortColumn = null;
    this.descending = false;
    this.page = 0;
    this.searchText = null;  // lower-case text of each row, built when first filtered
    this.buildHead();
    this.body = table.tBodies[0] || table.appendChild(document.createElement("tbody"));
    this.pager = Number.isFinite(pageSize) ? this.buildPager() : null;
    if (this.filterInput) this.filterInput.addEventListener("input", () => { this.page = 0; this.render(); });
  }

  buildHead() {
    const row = el("tr");
    this.headers = this.columns.map((column, c) => {
      const th = el("th", { scope: "col", tabIndex: 0, className: column.numeric ? "num sortable" : "sortable",
        title: "Sort by this column" }, column.label, el("span", { className: "arrow", "aria-hidden": "true" }));
      const sort = () => this.sortBy(c);
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
      row.append(th);
      return th;
    });
    const head = this.table.tHead || this.table.createTHead();
    head.replaceChildren(row);
  }

  buildPager() {
    const prev = el("button", { type: "button", className: "small" }, "‹ prev");
    const next = el("button", { type: "button", className: "small" }, "next ›");
    const where = el("span", { className: "muted" });
    prev.addEventListener("click", () => { this.page -= 1; this.render(); });
    next.addEventListener("click", () => { this.page += 1; this.render(); });
    const pager = el("div", { className: "pager", hidden: true }, prev, where, next);
    (this.table.closest(".table-box") || this.table).after(pager);
    return { element: pager, prev, next, where };
  }

  /** Show other columns (the rows stay; sorting starts over). */
  setColumns(columns) {
    this.columns = columns;
    this.sortColumn = null;
    this.descending = false;
    this.searchText = null;
    this.buildHead();
  }

  /** Show rows 0..n-1 (the data behind the column accessors has changed). */
  setRows(n) {
    this.n = n;
    this.page = 0;
    this.searchText = null;
    this.render();
  }

  sortBy(c) {
    this.descending = this.sortColumn === c ? !this.descending : false;
    this.sortColumn = c;
    this.headers.forEach((th, k) => {
      th.setAttribute("aria-sort", k === c ? (this.descending ? "descending" : "ascending") : "none");
      th.querySelector(".arrow").textContent = k === c ? (this.descending ? " ▼" : " ▲") : "";
    });
    this.page = 0;
    this.render();
  }

  cellText(column, i) {
    return column.text ? column.text(i) : String(column.value(i) ?? "");
  }

  /** The rows to show, filtered then sorted. */
  visibleRows() {
    let rows = Array.from({ length: this.n }, (_, i) => i);
    const needle = this.filterInput ? this.filterInput.value.trim().toLowerCase() : "";
    if (needle) {
      if (!this.searchText) {
        this.searchText = rows.map((i) => this.columns.map((col) => this.cellText(col, i)).join("\t").toLowerCase());
      }
      rows = rows.filter((i) => this.searchText[i].includes(needle));
    }
    if (this.sortColumn !== null) {
      const value = this.columns[this.sortColumn].value;
      const sign = this.descending ? -1 : 1;
      const keyed = rows.map((i) => [value(i), i]);
      keyed.sort((a, b) => {
        const missingA = a[0] === null || a[0] === undefined || a[0] === "" || Number.isNaN(a[0]);
        const missingB = b[0] === null || b[0] === undefined || b[0] === "" || Number.isNaN(b[0]);
        if (missingA || missingB) return missingA === missingB ? a[1] - b[1] : missingA ? 1 : -1;  // blanks last
        const order = typeof a[0] === "number" && typeof b[0] === "number" ? a[0] - b[0] : collator.compare(String(a[0]), String(b[0]));
        return sign * order || a[1] - b[1];
      });
      rows = keyed.map((pair) => pair[1]);
    }
    return rows;
  }

  render() {
    const rows = this.visibleRows();
    const pages = Math.max(1, Math.ceil(rows.length / this.pageSize));
    this.page = Math.min(Math.max(0, this.page), pages - 1);
    const start = this.page === 0 ? 0 : this.page * this.pageSize;  // (0 * Infinity is NaN)
    const shown = rows.slice(start, start + this.pageSize);
    const fragment = document.createDocumentFragment();
    for (const i of shown) {
      const tr = document.createElement("tr");
      if (this.rowClass) tr.className = this.rowClass(i) || "";
      for (const column of this.columns) {
        const td = document.createElement("td");
        if (column.numeric) td.className = "num";
        if (column.render) column.render(td, i);
        else td.textContent = this.cellText(column, i);
        tr.append(td);
      }
      fragment.append(tr);
    }
    this.body.replaceChildren(fragment);
    if (this.countElement) this.countElement.textContent = `${formatInt(rows.length)} of ${formatInt(this.n)} ${this.noun}`;
    if (!this.pager) return;
    const { element, prev, next, where } = this.pager;
    element.hidden = rows.length <= this.pageSize;
    prev.disabled = this.page === 0;
    next.disabled = this.page >= pages - 1;
    where.textContent = `rows ${formatInt(start + 1)}–${formatInt(start + shown.length)} of ${formatInt(rows.length)}`;
  }
}

/* ---------- Legend ---------- */

/**
 * Draw a legend into a container. spec is either
 *   { items: [{ colour, label, count }], heading? } (categories), or
 *   { ramp: (t) => colour, title } (a colour bar from 0 to 1), optionally with items beneath.
 */
function renderLegend(container, spec) {
  const parts = [];
  if (spec.ramp) {
    const stops = Array.from({ length: 11 }, (_, k) => `${spec.ramp(k / 10)} ${k * 10}%`).join(", ");
    parts.push(el("div", { className: "colour-bar" },
      el("div", { className: "colour-bar-title" }, spec.title || ""),
      el("div", { className: "colour-bar-ramp", style: `background: linear-gradient(to right, ${stops})` }),
      el("div", { className: "colour-bar-ticks" }, el("span", {}, "0"), el("span", {}, "0.5"), el("span", {}, "1"))));
  }
  for (const group of spec.groups || [{ heading: spec.heading, items: spec.items || [] }]) {
    if (!group.items.length) continue;
    if (group.heading) parts.push(el("div", { className: "legend-heading" }, group.heading));
    parts.push(el("ul", { className: "legend-items" }, ...group.items.map((item) => el("li", {},
      el("span", { className: "swatch", style: `background: ${item.colour}` }),
      el("span", { className: "legend-label", title: item.label }, item.label),
      item.count === undefined ? null : el("span", { className: "legend-count" }, formatInt(item.count))))));
  }
  container.replaceChildren(...parts);
}

/* ---------- Scatter plot ---------- */

/**
 * A 2-D scatter plot on a canvas that fills its parent (which must be position: relative and
 * sized by CSS). Layers are drawn in order, later ones on top:
 *   { x: [number|null], y: [number|null], colours: [string|null] | string, radius, alpha,
 *     tip?: (i) => string }  — a null colour leaves the point out; tip makes the layer hoverable.
 * Both axes share one scale, so distances on the map are not stretched.
 */
class ScatterPlot {
  constructor(canvas, { tooltip = null, legend = null } = {}) {
    this.canvas = canvas;
    this.box = canvas.parentElement;
    this.tooltip = tooltip;
    this.legend = legend;
    this.layers = [];
    this.bounds = null;
    this.hits = null;  // screen-space grid of hoverable points, rebuilt on each draw
    new ResizeObserver(() => this.draw()).observe(this.box);
    window.addEventListener("resize", () => this.draw());  // devicePixelRatio changes with zoom
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => this.hideTip());
  }

  /** Replace the layers; keepBounds keeps the current view when only the colours change. */
  setLayers(layers, { keepBounds = false } = {}) {
    this.layers = layers.map((layer) => ({ radius: 2, alpha: 1, ...layer, groups: groupByColour(layer) }));
    if (!keepBounds || !this.bounds) this.bounds = boundsOf(this.layers);
    this.draw();
  }

  setLegend(spec) {
    if (this.legend) renderLegend(this.legend, spec);
  }

  /** Map data coordinates to CSS pixels. */
  transform(width, height) {
    const pad = 10;
    const { minX, maxX, minY, maxY } = this.bounds;
    const scale = Math.min((width - 2 * pad) / (maxX - minX || 1), (height - 2 * pad) / (maxY - minY || 1));
    const offsetX = (width - scale * (maxX - minX)) / 2;
    const offsetY = (height - scale * (maxY - minY)) / 2;
    return { px: (x) => offsetX + (x - minX) * scale, py: (y) => height - offsetY - (y - minY) * scale };
  }

  draw() {
    const width = this.box.clientWidth;
    const height = this.box.clientHeight;
    if (!width || !height) return;  // hidden: drawn again when the box is shown
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.hits = null;
    if (!this.bounds) return;
    const { px, py } = this.transform(width, height);
    const cell = 8;
    const grid = new Map();
    this.layers.forEach((layer, l) => {
      ctx.globalAlpha = layer.alpha;
      for (const [colour, indices] of layer.groups) {
        ctx.fillStyle = colour;
        ctx.beginPath();
        for (const i of indices) {
          const sx = px(layer.x[i]);
          const sy = py(layer.y[i]);
          ctx.moveTo(sx + layer.radius, sy);
          ctx.arc(sx, sy, layer.radius, 0, 2 * Math.PI);
          if (layer.tip) {
            const key = `${Math.floor(sx / cell)},${Math.floor(sy / cell)}`;
            if (!grid.has(key)) grid.set(key, []);
            grid.get(key).push([l, i, sx, sy]);
          }
        }
        ctx.fill();
      }
    });
    ctx.globalAlpha = 1;
    this.hits = { grid, cell };
  }

  /** The hoverable point nearest to (x, y) within a few pixels, preferring the top layer. */
  pointAt(x, y) {
    if (!this.hits) return null;
    const { grid, cell } = this.hits;
    const reach = 6;
    let best = null;
    for (let gx = Math.floor((x - reach) / cell); gx <= Math.floor((x + reach) / cell); gx += 1) {
      for (let gy = Math.floor((y - reach) / cell); gy <= Math.floor((y + reach) / cell); gy += 1) {
        for (const hit of grid.get(`${gx},${gy}`) || []) {
          const d = (hit[2] - x) ** 2 + (hit[3] - y) ** 2;
          if (d > reach * reach) continue;
          if (!best || hit[0] > best.layer || (hit[0] === best.layer && d < best.d)) best = { layer: hit[0], i: hit[1], d, sx: hit[2], sy: hit[3] };
        }
      }
    }
    return best;
  }

  hover(event) {
    if (!this.tooltip) return;
    const rect = this.canvas.getBoundingClientRect();
    const found = this.pointAt(event.clientX - rect.left, event.clientY - rect.top);
    if (!found) { this.hideTip(); return; }
    this.tooltip.textContent = this.layers[found.layer].tip(found.i);
    this.tooltip.hidden = false;
    // Beside the point, flipped to the other side near the right or bottom edge.
    const gap = 12;
    const tipWidth = this.tooltip.offsetWidth;
    const tipHeight = this.tooltip.offsetHeight;
    const left = found.sx + gap + tipWidth > this.box.clientWidth ? found.sx - gap - tipWidth : found.sx + gap;
    const top = found.sy + gap + tipHeight > this.box.clientHeight ? found.sy - gap - tipHeight : found.sy + gap;
    this.tooltip.style.left = `${Math.max(0, left)}px`;
    this.tooltip.style.top = `${Math.max(0, top)}px`;
  }

  hideTip() {
    if (this.tooltip) this.tooltip.hidden = true;
  }
}

/** Points with coordinates, grouped by colour so each colour is filled once. */
function groupByColour(layer) {
  const groups = new Map();
  for (let i = 0; i < layer.x.length; i += 1) {
    const colour = typeof layer.colours === "string" ? layer.colours : layer.colours[i];
    if (!colour || !Number.isFinite(layer.x[i]) || !Number.isFinite(layer.y[i])) continue;
    if (!groups.has(colour)) groups.set(colour, []);
    groups.get(colour).push(i);
  }
  return groups;
}

function boundsOf(layers) {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (const layer of layers) {
    for (let i = 0; i < layer.x.length; i += 1) {
      const x = layer.x[i], y = layer.y[i];
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    }
  }
  return minX <= maxX ? { minX, maxX, minY, maxY } : null;
}
