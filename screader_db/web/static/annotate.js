// The annotate page: send a file, follow the job, then show its result (map, tables, downloads).
// Served at /ui/ and at /ui/results/{id}, where it shows that result straight away.
"use strict";

const $ = (id) => document.getElementById(id);

const page = {
  info: null,       // GET /ui/api/info
  result: null,     // GET /ui/api/results/{id}
  colours: null,    // label → colour, shared by the map, its legend and the summary
  run: 0,           // counts jobs followed; a newer one stops the polling of an older one
  plot: null,
  plotted: null,    // id of the result on the map, whose view is kept while only colours change
  summaryTable: null,
  cellsTable: null,
  clock: null,      // timer showing the elapsed time of an upload
};

const DOWNLOADS = [
  { key: "csv", id: "download-csv", name: "Per-cell labels (CSV)" },
  { key: "h5ad", id: "download-h5ad", name: "Annotated cells (.h5ad)" },
  { key: "report", id: "download-report", name: "Report (HTML)" },
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setState(state) {
  document.body.dataset.state = state;
}

/* ---------- Start ---------- */

async function start() {
  setState("idle");
  $("annotate-form").addEventListener("submit", submit);
  $("colour-by").addEventListener("change", drawMap);
  $("reference-by-label").addEventListener("change", drawMap);
  $("truth").addEventListener("change", drawConfusion);
  const match = location.pathname.match(/^\/ui\/results\/([^/]+)\/?$/);
  try {
    page.info = await fetchJson("/ui/api/info");
  } catch (err) {
    fail(err.message);
    return;
  }
  fillHeader(page.info.atlas, page.info.version);
  fillForm(page.info);
  if (match) followJob(decodeURIComponent(match[1]));
}

function fillForm(info) {
  $("file").accept = info.formats.join(",");
  $("file-help").textContent = `Accepted: ${info.formats.join(", ")}; up to ${formatMB(info.max_upload_bytes)}. `
    + "Raw counts are best; normalised values are detected and handled.";
  fillSelect($("datasets"), info.datasets);
  fillSelect($("exclude-labels"), info.labels);
  fillSelect($("level"), info.levels, { selected: ["label"] });
}

/* ---------- Progress and errors ---------- */

function fail(message) {
  page.run += 1;  // stop any polling
  stopClock();
  showLine($("error"), message);
  $("progress").hidden = true;
  $("submit").disabled = false;
  setState("failed");
}

/** Show what is happening now; done/total draw a bar when both are known. */
function showStage(stage, { done = null, total = null, seconds = null, counts = true } = {}) {
  $("progress").hidden = false;
  const counted = done !== null && total !== null && total > 0;
  $("stage").textContent = counted && counts ? `${stage} (${formatInt(done)} of ${formatInt(total)})` : stage;
  $("elapsed").textContent = seconds === null ? "" : formatSeconds(seconds);
  const bar = $("progress-bar");
  bar.hidden = !counted;
  if (counted) bar.value = Math.min(1, done / total);
}

function stopClock() {
  clearInterval(page.clock);
  page.clock = null;
}

/* ---------- Sending the file ---------- */

async function submit(event) {
  event.preventDefault();
  showLine($("error"), "");
  const file = $("file").files[0];
  if (!page.info) {
    fail("The page could not read the server's settings; reload it to try again.");
    return;
  }
  if (!file) {
    fail("Choose a file of cells to annotate first.");
    return;
  }
  const limit = page.info.max_upload_bytes;
  if (file.size > limit) {
    fail(`${file.name} is ${formatMB(file.size)}; this server accepts files up to ${formatMB(limit)}. `
      + "Send fewer cells, or ask whoever runs the server to raise the limit.");
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  for (const option of $("datasets").selectedOptions) form.append("datasets", option.value);
  for (const option of $("exclude-labels").selectedOptions) form.append("exclude_labels", option.value);
  form.append("level", $("level").value);
  form.append("majority_voting", $("majority-voting").checked ? "true" : "false");

  page.run += 1;
  $("result").hidden = true;
  $("submit").disabled = true;
  setState("uploading");
  const began = performance.now();
  let sent = 0;
  let total = file.size;
  const tick = () => showStage(`Uploading ${file.name}: ${formatPercent(total ? sent / total : 0, 0)} of ${formatMB(total)}`,
    { done: sent, total, seconds: (performance.now() - began) / 1000, counts: false });
  tick();
  page.clock = setInterval(tick, 250);
  let job;
  try {
    job = await postForm("/ui/api/jobs", form, {
      onProgress: (loaded, size) => { sent = loaded; total = size || total; tick(); },
    });
  } catch (err) {
    fail(err.message);
    return;
  }
  stopClock();
  history.replaceState(null, "", job.page || `/ui/results/${encodeURIComponent(job.id)}`);
  followJob(job.id);
}

/* ---------- Following the job ---------- */

/**
 * Poll the job: every 400 ms while it is queued or running; once done, show the result and keep
 * polling each second until every download is ready.
 */
async function followJob(id) {
  page.run += 1;
  const run = page.run;
  const statusUrl = `/ui/api/jobs/${encodeURIComponent(id)}`;
  $("submit").disabled = true;
  setState("running");
  showStage("Waiting for the server");
  let shown = false;
  let misses = 0;  // network failures in a row; a brief outage should not end the wait
  while (run === page.run) {
    let job;
    try {
      job = await fetchJson(statusUrl);
      misses = 0;
    } catch (err) {
      if (run !== page.run) return;
      if (err.status === 0 && misses < 5) {
        misses += 1;
        await sleep(1000);
        continue;
      }
      if (shown) markDownloadsGone();
      else fail(err.message);
      return;
    }
    if (run !== page.run) return;
    if (job.state === "failed") {
      fail(job.error || "The annotation failed.");
      return;
    }
    if (job.state !== "done") {
      showStage(job.stage || job.state, { done: job.done, total: job.total, seconds: job.seconds });
      await sleep(400);
      continue;
    }
    if (!shown) {
      showStage("Reading the result", { seconds: job.seconds });
      try {
        page.result = await fetchJson(`/ui/api/results/${encodeURIComponent(id)}`);
      } catch (err) {
        if (run === page.run) fail(err.message);
        return;
      }
      if (run !== page.run) return;
      showResult(page.result, job);
      shown = true;
    }
    updateDownloads(job.downloads || {});
    if (DOWNLOADS.every((d) => job.downloads && job.downloads[d.key])) return;
    await sleep(1000);
  }
}

/* ---------- The result ---------- */

function showResult(result, job) {
  const path = `/ui/results/${encodeURIComponent(result.id)}`;
  history.replaceState(null, "", path);
  const link = $("result-link");
  link.href = path;
  link.textContent = location.origin + path;
  $("result-title").textContent = `Result: ${formatInt(result.n_cells)} cells of ${result.filename}`;
  $("what-was-done").textContent = whatWasDone(result.info || {});
  updateDownloads(job.downloads || {});

  const columns = result.columns;
  page.colours = labelColours(page.info ? page.info.labels : [],
    [...columns.label, ...(result.reference_map ? result.reference_map.label : [])]);
  showSummary();
  showCells();
  fillSelect($("truth"), ["none", ...Object.keys(result.truth_columns || {})], { selected: ["none"] });
  drawConfusion();

  $("result").hidden = false;
  $("progress").hidden = false;
  showStage(`Done: ${formatInt(result.n_cells)} cells annotated`, { seconds: job.seconds });
  $("submit").disabled = false;
  drawMap();  // after the section is shown, so the canvas has a size
  setState("done");
}

/** One line on how the query was read and answered. */
function whatWasDone(info) {
  const parts = [];
  if (info.genes_matched !== undefined) {
    parts.push(`${formatInt(info.genes_matched)} of the atlas's ${formatInt(info.genes_in_atlas)} genes matched`);
  }
  const scale = info.input_scale ?? info.input_kind;
  if (scale) {
    let evidence = String(info.input_scale_evidence || "");
    if (evidence.startsWith(`${scale}:`)) evidence = evidence.slice(scale.length + 1).trim();  // "counts: all ... integers"
    parts.push(`input scale detected: ${scale}${evidence ? ` (${evidence})` : ""}`);
  }
  const panel = info.panel || {};
  parts.push(panel.used
    ? `answered on a panel index of the ${formatInt(panel.shared_genes)} shared genes`
    : "answered on the full index");
  const second = info.second_opinion || {};
  parts.push(second.used
    ? `second opinion: the ${second.method} method's vote weighed into the confidence` +
      (second.classifier ? "; a linear classifier voted with the neighbours" : "")
    : "no second opinion");
  const novelty = info.novelty || {};
  parts.push(novelty.checked
    ? `novelty check: ${formatInt(novelty.novel_clusters)} of ${formatInt(novelty.clusters)} query clusters match no atlas label`
    : "no novelty check");
  const families = (info.parent_labels || {}).families || {};
  const parents = Object.entries(families).map(([parent, below]) => `${parent} (above ${below.join(", ")})`);
  if (parents.length) {
    parts.push(`coarse parent labels: ${parents.join(", ")}, ${formatInt(info.parent_labels.moved)} cells moved to a label below`);
  }
  if (info.seconds !== undefined) parts.push(`took ${formatSeconds(info.seconds)}`);
  return `What was done: ${parts.join("; ")}.`;
}

/** Enable each download link once the server says its file is written. */
function updateDownloads(ready) {
  const hrefs = (page.result && page.result.downloads) || {};
  for (const { key, id, name } of DOWNLOADS) {
    const link = $(id);
    const available = Boolean(ready[key] && hrefs[key]);
    link.classList.toggle("disabled", !available);
    link.setAttribute("aria-disabled", String(!available));
    if (available) {
      link.href = hrefs[key];
      link.textContent = name;
    } else {
      link.removeAttribute("href");
      link.textContent = `${name}: preparing…`;
    }
  }
}

/** The job has expired or the server went away while files were still being written. */
function markDownloadsGone() {
  for (const { id, name } of DOWNLOADS) {
    const link = $(id);
    if (link.hasAttribute("href")) continue;
    link.textContent = `${name}: not available`;
  }
}

function swatchCell(td, label) {
  td.append(el("span", { className: "swatch", style: `background: ${page.colours.get(label) || MISSING_COLOUR}` }), label);
}

function showSummary() {
  const s = () => page.result.summary;
  if (!page.summaryTable) {
    page.summaryTable = new DataTable($("summary"), [
      { label: "label", value: (i) => s()[i].label, render: (td, i) => swatchCell(td, s()[i].label) },
      { label: "cells", value: (i) => s()[i].cells, text: (i) => formatInt(s()[i].cells), numeric: true },
      { label: "share", value: (i) => s()[i].share, text: (i) => formatPercent(s()[i].share), numeric: true },
      { label: "mean score", value: (i) => s()[i].mean_score, text: (i) => formatNumber(s()[i].mean_score), numeric: true },
      { label: "mean confidence", value: (i) => s()[i].mean_confidence, text: (i) => formatNumber(s()[i].mean_confidence), numeric: true },
      { label: "left unassigned", value: (i) => s()[i].unassigned, text: (i) => formatInt(s()[i].unassigned), numeric: true },
    ]);
  }
  page.summaryTable.setRows(s().length);
}

function showCells() {
  const c = () => page.result.columns;
  // With majority voting the query's clusters and their majority labels are columns too; with a
  // second opinion, its share of the cell's label.
  const voting = Boolean(c().majority_label);
  const opinion = Boolean(c().second_opinion);
  const shape = `${voting}/${opinion}`;
  if (!page.cellsTable || page.cellsShape !== shape) {
    const columns = [
      { label: "cell", value: (i) => c().cell[i] },
      { label: "label", value: (i) => c().label[i] },
      { label: "score", value: (i) => c().score[i], text: (i) => formatNumber(c().score[i]), numeric: true },
      { label: "confidence", value: (i) => c().confidence[i], text: (i) => formatNumber(c().confidence[i]), numeric: true },
    ];
    if (opinion) {
      columns.push({ label: "second opinion", value: (i) => c().second_opinion[i],
        text: (i) => formatNumber(c().second_opinion[i]), numeric: true });
    }
    columns.push(
      { label: "margin", value: (i) => c().margin[i], text: (i) => formatNumber(c().margin[i]), numeric: true },
      { label: "second label", value: (i) => c().second_label[i] ?? "" },
      { label: "reason", value: (i) => c().unassigned_reason[i] },
      { label: "call level", value: (i) => c().call_level[i] });
    if (voting) {
      columns.push({ label: "cluster", value: (i) => c().cluster[i] ?? "" },
        { label: "majority label", value: (i) => c().majority_label[i] ?? "" });
    }
    if (page.cellsTable) page.cellsTable.setColumns(columns);
    else page.cellsTable = new DataTable($("cells"), columns,
      { pageSize: 1000, filter: $("cell-filter"), count: $("cell-count"), noun: "cells" });
    page.cellsShape = shape;
  }
  $("cell-filter").value = "";
  page.cellsTable.setRows(c().cell.length);
}

/* ---------- The map ---------- */

function drawMap() {
  const result = page.result;
  if (!result) return;
  const columns = result.columns;
  const ref = result.reference_map;
  const placed = ref && columns.x.some((x) => x !== null);
  $("map-panel").hidden = !placed;
  $("map-note").hidden = Boolean(placed);
  if (!placed) return;
  if (!page.plot) page.plot = new ScatterPlot($("map"), { tooltip: $("tooltip"), legend: $("map-legend") });

  const colourBy = $("colour-by").value;
  const referenceByLabel = $("reference-by-label").checked;
  const colours = queryColours(colourBy, columns);
  const tip = (i) => {
    const lines = [columns.cell[i], `label: ${columns.label[i]}`, `score: ${formatNumber(columns.score[i])}`,
      `confidence: ${formatNumber(columns.confidence[i])}`];
    if (columns.unassigned_reason[i]) lines.push(`reason: ${columns.unassigned_reason[i]}`);
    return lines.join("\n");
  };
  page.plot.setLayers([
    { x: ref.x, y: ref.y, radius: 1.5, alpha: referenceByLabel ? 0.35 : 1,
      colours: referenceByLabel ? ref.label.map((l) => page.colours.get(l) || MISSING_COLOUR) : REFERENCE_GREY },
    { x: columns.x, y: columns.y, radius: 2.5, alpha: 0.9, colours: colours.perCell, tip },
  ], { keepBounds: page.plotted === result.id });
  page.plotted = result.id;

  const groups = [{ heading: colours.heading, items: colours.items }];
  if (referenceByLabel) {
    // Coloured by label, the query's legend already names most reference colours.
    const shown = new Set(colourBy === "label" ? columns.label : []);
    const rest = [...countValues(ref.label)].filter(([label]) => !shown.has(label));
    groups.push({ heading: shown.size ? "Only in the reference (cells on the map)" : "Reference cells by label",
      items: rest.map(([label, count]) => ({ label, count, colour: page.colours.get(label) })) });
  } else {
    groups.push({ items: [{ label: "reference cells", colour: REFERENCE_GREY, count: ref.x.length }] });
  }
  page.plot.setLegend({ ramp: colours.ramp, title: colours.rampTitle, groups });
}

/** Each query cell's colour for the chosen colouring, and the legend entries it needs. */
function queryColours(colourBy, columns) {
  if (colourBy === "confidence") {
    const perCell = columns.confidence.map((v) => (v === null ? MISSING_COLOUR : rampColour(v)));
    const missing = columns.confidence.filter((v) => v === null).length;
    return { perCell, ramp: rampColour, rampTitle: "confidence (query cells)",
      items: missing ? [{ label: "no confidence", colour: MISSING_COLOUR, count: missing }] : [] };
  }
  if (colourBy === "reason") {
    const counts = countValues(columns.unassigned_reason.filter((r) => r));
    const reasonColours = new Map([...counts.keys()].map((reason, k) => [reason, BASE_COLOURS[(k + 3) % BASE_COLOURS.length]]));
    const labelled = "#8da0cb";
    const perCell = columns.unassigned_reason.map((r) => (r ? reasonColours.get(r) : labelled));
    const items = [{ label: "labelled", colour: labelled, count: columns.unassigned_reason.length - [...counts.values()].reduce((a, b) => a + b, 0) },
      ...[...counts].map(([reason, count]) => ({ label: reason, count, colour: reasonColours.get(reason) }))];
    return { perCell, items, heading: "Why cells were left Unassigned" };
  }
  const perCell = columns.label.map((l) => page.colours.get(l) || MISSING_COLOUR);
  const items = [...countValues(columns.label)].map(([label, count]) => ({ label, count, colour: page.colours.get(label) }));
  return { perCell, items, heading: "Query cells by label" };
}

/* ---------- Comparison with known labels ---------- */

function drawConfusion() {
  const key = $("truth").value;
  const result = page.result;
  const hide = !result || key === "none" || !(result.truth_columns || {})[key];
  $("confusion-box").hidden = hide;
  $("truth-accuracy").hidden = hide;
  if (hide) {
    $("confusion").replaceChildren();
    return;
  }
  const truth = result.truth_columns[key].map((t) => (t === null || t === undefined ? "" : String(t)));
  const predicted = result.columns.label;

  const rowLabels = [...new Set(truth)].sort(collator.compare);
  const columnLabels = [...new Set(predicted)].filter((l) => l !== UNASSIGNED).sort(collator.compare);
  if (predicted.includes(UNASSIGNED)) columnLabels.push(UNASSIGNED);
  const rowOf = new Map(rowLabels.map((l, k) => [l, k]));
  const columnOf = new Map(columnLabels.map((l, k) => [l, k]));
  const counts = rowLabels.map(() => new Array(columnLabels.length).fill(0));
  for (let i = 0; i < truth.length; i += 1) counts[rowOf.get(truth[i])][columnOf.get(predicted[i])] += 1;

  const head = el("thead", {}, el("tr", {},
    el("th", { className: "corner", scope: "col" }, `${key} ↓ · predicted →`),
    ...columnLabels.map((l) => el("th", { scope: "col", className: "num" }, l)),
    el("th", { scope: "col", className: "num" }, "total")));
  const body = el("tbody", {}, ...rowLabels.map((label, r) => {
    const total = counts[r].reduce((a, b) => a + b, 0);
    return el("tr", {},
      el("th", { scope: "row" }, label || "(blank)"),
      ...counts[r].map((n) => {
        const share = total ? n / total : 0;
        const td = el("td", { className: "num", title: `${formatInt(n)} of ${formatInt(total)} (${formatPercent(share)})` }, n ? formatInt(n) : "");
        if (n) td.style.background = `rgba(34, 85, 170, ${(0.08 + 0.82 * share).toFixed(3)})`;
        if (share > 0.45) td.style.color = "#fff";
        return td;
      }),
      el("td", { className: "num total" }, formatInt(total)));
  }));
  $("confusion").replaceChildren(head, body);

  // A truth label counts only when the atlas has it; Unassigned is never right.
  const known = new Set(page.info ? page.info.labels : []);
  let scored = 0;
  let right = 0;
  for (let i = 0; i < truth.length; i += 1) {
    if (!known.has(truth[i])) continue;
    scored += 1;
    if (predicted[i] === truth[i] && predicted[i] !== UNASSIGNED) right += 1;
  }
  $("truth-accuracy").textContent = `accuracy on cells whose truth label the atlas knows: `
    + `${scored ? (right / scored).toFixed(3) : DASH} (${scored} cells)`;
}

document.addEventListener("DOMContentLoaded", start);
