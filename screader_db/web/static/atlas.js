// The atlas page: its data sets, versions, labels per data set and reference map, and the forms
// that add or remove a data set (with the server's token).
"use strict";

const $ = (id) => document.getElementById(id);

const atlas = {
  data: null,  // GET /ui/api/atlas
  plot: null,
  plotted: false,  // whether the map shows the current data (its view is kept when only colours change)
};

async function start() {
  $("atlas-colour-by").addEventListener("change", drawAtlasMap);
  $("add-form").addEventListener("submit", addDataset);
  $("remove-form").addEventListener("submit", removeDataset);
  await load();
}

/** Read the atlas and draw everything from it; false when the server refused. */
async function load() {
  let data;
  try {
    data = await fetchJson("/ui/api/atlas");
  } catch (err) {
    showLine($("error"), err.message);
    return false;
  }
  showLine($("error"), "");
  atlas.data = data;
  atlas.plotted = false;
  fillHeader(data.atlas, data.version);
  const cells = data.datasets.reduce((sum, d) => sum + d.n_cells, 0);
  $("atlas-summary").textContent = `Version ${data.version}: ${formatInt(cells)} cells in ${formatInt(data.datasets.length)} `
    + `data sets, ${formatInt(data.label_counts.rows.length)} labels.`;
  showDatasets(data.datasets);
  showVersions(data.versions);
  showLabelCounts(data.label_counts);
  drawAtlasMap();
  $("writing-disabled").hidden = data.writing;
  const names = data.datasets.map((d) => d.name);
  fillSelect($("remove-name"), names);
  $("remove-submit").disabled = names.length === 0;
  return true;
}

/* ---------- Tables ---------- */

function showDatasets(rows) {
  const text = (key) => (i) => rows[i][key] ?? "";
  new DataTable($("datasets"), [
    { label: "name", value: text("name") },
    { label: "cells", value: (i) => rows[i].n_cells, text: (i) => formatInt(rows[i].n_cells), numeric: true },
    { label: "labels", value: (i) => rows[i].n_labels, text: (i) => formatInt(rows[i].n_labels), numeric: true },
    { label: "species", value: text("species") },
    { label: "added by", value: text("added_by") },
    { label: "added at", value: text("added_at"), render: (td, i) => whenCell(td, rows[i].added_at) },
    { label: "source file", value: text("source_file") },
    { label: "sha256", value: text("source_sha256"), render: (td, i) => {
      const sha = rows[i].source_sha256 || "";
      td.append(el("code", { title: sha }, sha.slice(0, 12)));
    } },
  ]).setRows(rows.length);
}

function showVersions(rows) {
  new DataTable($("versions"), [
    { label: "version", value: (i) => rows[i].version, numeric: true, render: (td, i) => {
      td.append(String(rows[i].version));
      if (rows[i].current) td.append(" ", el("span", { className: "badge" }, "current"));
    } },
    { label: "when", value: (i) => rows[i].created_at, render: (td, i) => whenCell(td, rows[i].created_at) },
    { label: "change", value: (i) => rows[i].change || rows[i].action, render: (td, i) => {
      td.append(rows[i].change || rows[i].action || "");
      if (rows[i].reason) td.append(el("div", { className: "muted" }, rows[i].reason));
    } },
    { label: "data sets", value: (i) => namesOrCount(rows[i].datasets) },
    { label: "cells", value: (i) => rows[i].n_cells, text: (i) => formatInt(rows[i].n_cells), numeric: true },
  ], { rowClass: (i) => (rows[i].current ? "current" : "") }).setRows(rows.length);
}

function whenCell(td, iso) {
  td.textContent = formatWhen(iso);
  td.title = iso || "";
}

/** A version's data sets: their names, or how many when only the count is known. */
function namesOrCount(datasets) {
  return Array.isArray(datasets) ? datasets.join(", ") : formatInt(datasets);
}

function showLabelCounts(counts) {
  const rows = counts.rows;
  const totals = rows.map((r) => r.counts.reduce((a, b) => a + b, 0));
  const number = (value) => ({ value, text: (i) => formatInt(value(i)), numeric: true });
  new DataTable($("label-counts"), [
    { label: "label", value: (i) => rows[i].label },
    ...counts.datasets.map((name, d) => ({ label: name, ...number((i) => rows[i].counts[d]) })),
    { label: "total", ...number((i) => totals[i]) },
  ]).setRows(rows.length);
}

/* ---------- The map ---------- */

function drawAtlasMap() {
  const map = atlas.data && atlas.data.reference_map;
  $("atlas-map-panel").hidden = !map;
  $("atlas-map-note").hidden = Boolean(map);
  if (!map) return;
  if (!atlas.plot) atlas.plot = new ScatterPlot($("atlas-map"), { tooltip: $("atlas-tooltip"), legend: $("atlas-legend") });
  const values = $("atlas-colour-by").value === "dataset" ? map.dataset : map.label;
  const byDataset = $("atlas-colour-by").value === "dataset";
  const colours = byDataset ? labelColours(values) : labelColours(atlas.data.label_counts.rows.map((r) => r.label), values);
  atlas.plot.setLayers([{
    x: map.x, y: map.y, radius: 2, alpha: 0.8,
    colours: values.map((v) => colours.get(v)),
    tip: (i) => `label: ${map.label[i]}\ndata set: ${map.dataset[i]}`,
  }], { keepBounds: atlas.plotted });
  atlas.plotted = true;
  atlas.plot.setLegend({
    heading: `Cells on the map (a sample of the atlas) by ${$("atlas-colour-by").value === "dataset" ? "data set" : "label"}`,
    items: [...countValues(values)].map(([label, count]) => ({ label, count, colour: colours.get(label) })),
  });
}

/* ---------- Changing the atlas ---------- */

/** Read the atlas until it shows the version a change made (the server may take a moment to switch). */
async function loadVersion(version) {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    if (!(await load()) || atlas.data.version >= version) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** The Authorization header for the typed token; none when empty, so the server says what is missing. */
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * Run one change with its button showing "working…"; report the server's answer in the admin
 * section and read the atlas again after a success.
 */
async function change(button, send, describe) {
  showLine($("admin-message"), "");
  showLine($("admin-error"), "");
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "working…";
  try {
    const answer = await send();
    showLine($("admin-message"), describe(answer));
    await loadVersion(answer.version);
    return true;
  } catch (err) {
    showLine($("admin-error"), err.message);
    return false;
  } finally {
    button.textContent = label;
    button.disabled = false;
    if (atlas.data) $("remove-submit").disabled = atlas.data.datasets.length === 0;
  }
}

async function addDataset(event) {
  event.preventDefault();
  // Whatever is missing is left to the server, whose refusal then names it.
  const form = new FormData();
  const file = $("add-file").files[0];
  if (file) form.append("file", file, file.name);
  form.append("name", $("add-name").value.trim());
  form.append("label_key", $("add-label-key").value.trim());
  const added = await change($("add-submit"), () => postForm("/datasets", form, { headers: authHeaders() }),
    (answer) => `Added ${answer.dataset}: the atlas is now version ${answer.version} with ${formatInt(answer.cells)} cells.`);
  if (added) {
    $("add-file").value = "";
    $("add-name").value = "";
  }
}

async function removeDataset(event) {
  event.preventDefault();
  const name = $("remove-name").value;
  if (!name) return;
  if (!window.confirm(`Remove the data set ${name} from the atlas? Its cells leave the atlas in a new version.`)) return;
  await change($("remove-submit"),
    () => fetchJson(`/datasets/${encodeURIComponent(name)}`, { method: "DELETE", headers: { Accept: "application/json", ...authHeaders() } }),
    (answer) => `Removed ${answer.removed}: the atlas is now version ${answer.version} with ${formatInt(answer.cells)} cells.`);
}

document.addEventListener("DOMContentLoaded", start);
