"""Refitting an atlas: its genes, embedder and every cell vector fitted again over all its data sets.

``add`` embeds a data set with the embedder the atlas was fitted with, over the genes chosen on
the data sets it was fitted on. A cell type that arrives only with an added data set may have
none of its markers among those genes, and is then embedded over genes that cannot tell it
apart. A refit reads the reference expression the atlas keeps (``expression/<dataset>/``, one
part at a time), collects the statistics of every data set's cells as one reference, chooses the
genes and fits the method again with the atlas's recorded build settings, embeds every cell
again, and writes the index, the map, the calibration and the catalogue as a new version, staged
and published like a build. Cell ids, data set names, labels and metadata stay; every data set's
cells are centred as a build centres its reference, on the refitted embedder's reference mean.
The novelty check is calibrated on each data set's cells and kept on only where it is on for
all of them, at the lowest cut-off (a query is usually of one tissue; calibrated on the cells of
two tissues at once it was switched on and left 5.7% of Kang's cells Unassigned on a
``--datasets pbmc3k`` query that pbmc3k alone leaves at 0.2%).

When a version is refitted (its history's ``change``):

* ``add+refit``: ``add`` brings a label the atlas has under no name (label or harmonised label)
  of whose :data:`TOP_MARKERS` best markers (ranked as a build ranks them, against the atlas's
  label profiles and the data set's other labels) fewer than :data:`SEPARATED_SHARE` are atlas
  genes (:func:`check_labels`). Known labels never trigger it, so more cells of known types stay
  a cheap add. Measured on Baron human (built on donors 1 and 2 without one type, donor 3 added,
  donor 4 queried), recall of the held-out type after a plain add / after a refit, by the share
  of its 10 best markers among the atlas genes: alpha 0.9: 1.00 / 1.00; delta 0.9: 1.00 / 1.00;
  beta 0.7: 0.92 / 0.93; ductal 0.6: 0.69 / 0.70; PP 0.6: 0.31 / 1.00; stellate 0.5: 0.00 / 1.00.
  pbmc3k added to Baron human (every label at 0.7 or less; Kang control queried on the atlas's
  own genes): NK 0.0: 0.10 / 0.97, dendritic 0.4: 0.14 / 0.76, CD8 T 0.4: 0.33 / 0.54, B 0.2:
  0.90 / 0.99. Half of a build's 46 markers per label, the first rule tried, missed PP (0.57).
* ``remove+refit``: ``remove`` drops a data set that the embedder's last refit was fitted with,
  so the atlas returns to what a fit of the remaining data sets gives; a refit over the data
  sets of a build gives that build's vectors (Baron human: the same genes, vectors within 5e-7).
  Returning to an earlier version's embedder instead would be right only when no data set was
  added since. The embedder of a build stays when its own data set is removed, as before.
* ``refit``: on demand (``screader-db refit``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from screader_db import atlas_format, store, stored_expression
from screader_db.errors import AtlasError
from screader_db.progress import SILENT, Reporter

SEPARATED_SHARE = 0.7  # of a new label's best markers among the atlas genes; fewer: not separated (measured, above)
TOP_MARKERS = 10
REFITS = ("refit", "add+refit", "remove+refit")
REBUILD = ("rebuild it with the expression kept (`screader-db build ... --keep-expression --overwrite`, then "
           "`screader-db add` each other data set)")


@dataclass(frozen=True)
class LabelCheck:
    """Whether the atlas's genes separate one label a data set brings.

    Parameters
    ----------
    label : str
        The label.
    markers : int
        Its top markers looked at.
    in_panel : int
        How many of them are atlas genes.
    """

    label: str
    markers: int
    in_panel: int

    @property
    def separated(self) -> bool:
        """At least :data:`SEPARATED_SHARE` of its markers are atlas genes (true for a label without markers)."""
        return self.in_panel >= SEPARATED_SHARE * self.markers

    def describe(self) -> str:
        """The label and its missing markers, for messages and the version history.

        Returns
        -------
        str
            ``LABEL (M of N markers missing)``.
        """
        return f"{self.label} ({self.markers - self.in_panel} of {self.markers} markers missing)"


def new_labels(previous: store.Atlas, labels: Any, harmonised: dict[str, str] | None = None) -> list[str]:
    """The labels the atlas has under no name: neither as a label nor as a harmonised label.

    Parameters
    ----------
    previous : Atlas
        The opened atlas.
    labels : iterable of str
        A data set's labels (repeats allowed).
    harmonised : dict or None
        Each label's harmonised label; a label known under either name is known.

    Returns
    -------
    list of str
        Sorted, without repeats.
    """
    cells = previous.cells(["label", "label_harmonised"])
    known = set(cells["label"]) | set(cells["label_harmonised"])
    names = harmonised or {}
    return sorted({str(label) for label in labels if label not in known and names.get(label, label) not in known})


def check_labels(previous: store.Atlas, stats: Any, *, harmonised: dict[str, str] | None = None) -> list[LabelCheck]:
    """Check each label of a data set that the atlas does not have against the atlas's genes.

    A label's markers are ranked as a build ranks them (:func:`screader_db.markers.select_markers`),
    inside the label against every other cell: the data set's other labels and the atlas's cells,
    from its label profiles (genes a profile lacks count as 0; without profiles, the data set's
    labels alone). Its :data:`TOP_MARKERS` best are looked at, from the atlas's ``--panel`` when
    it has one.

    Parameters
    ----------
    previous : Atlas
        The opened atlas.
    stats : ReferenceStats
        The data set's statistics over every gene it maps to.
    harmonised : dict or None
        Each of its labels' harmonised label; a label known under either name is not checked.

    Returns
    -------
    list of LabelCheck
        One per new label, in the statistics' label order (empty when every label is known).
    """
    from screader_db.builders.atlas import settings_of
    from screader_db.markers import select_markers

    unknown = set(new_labels(previous, stats.labels, harmonised))
    new = [c for c, label in enumerate(stats.labels) if label in unknown]
    if not new:
        return []
    settings = settings_of(previous)
    total, n_cells = np.array(stats.log_sum, dtype=np.float64), stats.n_cells
    found = previous.profiles()
    if found is not None:
        profiles = found[0]
        column = {g: i for i, g in enumerate(profiles.genes)}
        pairs = np.array([(j, column[g]) for j, g in enumerate(stats.genes) if g in column], dtype=np.int64).reshape(-1, 2)
        sums = np.asarray(profiles.counts, dtype=np.float64) @ np.asarray(profiles.means, dtype=np.float64)
        total[pairs[:, 0]] += sums[pairs[:, 1]]
        n_cells += int(np.sum(profiles.counts))
    allowed = None if not settings.panel else np.isin(stats.genes, settings.panel)
    atlas_genes = set(previous.embedder.genes)
    checks = []
    for c in new:
        one = replace(stats, labels=[stats.labels[c]], n_cells=n_cells, log_sum=total,
                      class_counts=stats.class_counts[c : c + 1], class_log_sum=stats.class_log_sum[c : c + 1],
                      class_log_sumsq=stats.class_log_sumsq[c : c + 1], class_detected=stats.class_detected[c : c + 1])
        top = select_markers(one, per_label=TOP_MARKERS, allowed=allowed)
        checks.append(LabelCheck(stats.labels[c], len(top), sum(stats.genes[i] in atlas_genes for i in top)))
    return checks


def fitted_on(opened: store.Atlas) -> tuple[str, list[str]]:
    """The change that fitted the version's embedder and the data sets it was fitted on.

    Parameters
    ----------
    opened : Atlas
        The opened atlas version.

    Returns
    -------
    tuple of (str, list of str)
        ``build`` or one of :data:`REFITS`, and the data sets (empty when the history, written
        before it was recorded, does not say).
    """
    for step in reversed(opened.info.get("history", [])):
        change = store.change_of(step)
        if change == "build" or change in REFITS:
            return change, list(step.get("fitted_on", []))
    return "build", []


def refit_atlas(atlas: str | Path, *, device: str | None = None, wait: float = 0.0,
                reporter: Reporter = SILENT) -> store.Atlas:
    """Fit the atlas again over every data set it holds, as a new version.

    Parameters
    ----------
    atlas : str or Path
        The atlas folder.
    device : str or None
        ``cpu`` or ``cuda`` for language models and learned methods (default: cuda when present).
    wait : float
        Seconds to wait for another writer's lock.
    reporter : Reporter
        Receives progress and stage messages.

    Returns
    -------
    Atlas
        The new version, opened.

    Raises
    ------
    AtlasError
        The atlas is missing or keeps no reference expression, or another writer holds the lock
        after ``wait`` seconds.
    """
    root = Path(atlas)
    with store.writer_lock(root, wait=wait):
        previous = store.open_atlas(root)
    found = previous.profiles()
    return write_refit(root, previous, action="refit", change="refit", reason="asked for",
                       profiles=None if found is None else found[0], wait=wait, reporter=reporter, device=device)


def write_refit(root: Path, previous: store.Atlas, *, action: str, change: str, reason: str, profiles: Any,
                added: Any = None, drop: str | None = None, wait: float = 0.0, reporter: Reporter = SILENT,
                device: str | None = None) -> store.Atlas:
    """Write the next version with the atlas refitted, after adding or dropping one data set.

    Parameters
    ----------
    root : Path
        The atlas folder.
    previous : Atlas
        The version the change starts from; the lock is held from the start and the change is
        refused if another version appeared meanwhile.
    action, change, reason : str
        The history's step: its description (``add NAME + refit``), its kind (one of
        :data:`REFITS`) and why the atlas was refitted.
    profiles : LabelProfiles or None
        The label profiles of the new version; their calibration is computed again. None writes none.
    added : ReferenceSource or None
        A data set to add (harmonised), stored and fitted with the others.
    drop : str or None
        A data set to leave out.
    wait : float
        Seconds to wait for another writer's lock.
    reporter : Reporter
        Receives progress and stage messages.
    device : str or None
        ``cpu`` or ``cuda`` for language models and learned methods.

    Returns
    -------
    Atlas
        The new version, opened.

    Raises
    ------
    AtlasError
        The atlas keeps no reference expression for a data set, or changed meanwhile.
    """
    from screader_db.builders.writer import dataset_records, drafting, finish, write_dataset, write_expression
    from screader_db.catalogue import read_tables

    kept = [d for d in previous.datasets if d["name"] != drop]
    _check_expression(previous, [d["name"] for d in kept])
    with drafting(root, action=action, provenance=previous.provenance, wait=wait) as draft:
        if store.current_version(root) != previous.version:
            raise AtlasError("the atlas changed while the refit was prepared; run the command again")
        labels = previous.cells(["label"])["label"]
        labels = labels[store.dataset_of(labels.index.to_numpy()) != _dataset_id(previous, drop)]
        for part in stored_expression.parts(previous.path, [d["name"] for d in kept]):
            draft.link(part, part.relative_to(previous.path).as_posix())
        rows = list(kept)
        new_cells = None
        if added is not None:
            dataset_id = max((int(d["dataset_id"]) for d in previous.datasets), default=0) + 1
            write_expression(draft, added, dataset_id)
            new_ids, new_cells, row = dataset_records(draft, added, dataset_id)
            labels = pd.concat([labels, pd.Series(added.labels, index=new_ids)])
            rows.append(row)
        names = [d["name"] for d in rows]
        draft.extra.update({"change": change, "reason": reason, "fitted_on": names})
        if drop is not None or added is not None:
            draft.extra["dataset"] = drop if drop is not None else added.name
        fit = _fit(draft.staging, [(d["name"], int(d["dataset_id"])) for d in rows], labels, previous,
                   reporter=reporter, device=device)
        draft.provenance = {**fit.provenance, "build_id": draft.build_id, "created_at": draft.provenance["created_at"]}
        all_ids, all_vectors = [], []
        for d in rows:
            ids, vectors = _embed(draft.staging, d["name"], fit.embedder, reporter=reporter)
            if added is not None and d["name"] == added.name:
                position = pd.Index(ids).get_indexer(new_ids)
                write_dataset(draft, added, int(d["dataset_id"]), vectors[position])
            else:
                _rewrite_cells(draft, previous, d["name"], ids, vectors)
            all_ids.append(ids)
            all_vectors.append(vectors)
        from screader_db.builders.atlas import write_fitted

        reporter.message("Writing the atlas")
        written = None if profiles is None else (profiles, fit.calibration)
        fitted_tables, index_info = write_fitted(draft, np.concatenate(all_ids), np.concatenate(all_vectors),
                                                 fit.embedder, fit.emb, fit.settings, profiles=written,
                                                 reporter=reporter)
        tables = {**read_tables(previous.path / atlas_format.CATALOGUE), **fitted_tables}
        tables["datasets"] = tables["datasets"][tables["datasets"]["name"].isin(names)]
        tables["cells"] = tables["cells"][tables["cells"]["dataset"].isin(names)]
        if added is not None:
            tables["datasets"] = pd.concat([tables["datasets"], pd.DataFrame([rows[-1]])], ignore_index=True)
            tables["cells"] = pd.concat([tables["cells"], new_cells], ignore_index=True)
        finish(draft, tables, atlas_provenance=draft.provenance, index_info=index_info, datasets=rows,
               history=previous.info.get("history", []), reporter=reporter)
    reporter.message(f"Atlas version {draft.number}: {action}, {len(fit.embedder.genes):,} genes")
    return store.open_atlas(root, version=draft.number)


def no_expression_message(previous: store.Atlas, missing: list[str]) -> str:
    """Why an atlas cannot be refitted, and how to rebuild it so it can.

    Parameters
    ----------
    previous : Atlas
        The opened atlas.
    missing : list of str
        Its data sets without stored expression.

    Returns
    -------
    str
    """
    which = "keeps no reference expression" if len(missing) == len(previous.datasets) else \
        f"keeps no reference expression for {', '.join(missing)}"
    return f"the atlas at {previous.root} {which}, which a refit reads; {REBUILD}"


def _check_expression(previous: store.Atlas, names: list[str]) -> None:
    stored = {atlas_format.part_dataset(p.relative_to(previous.path).as_posix()) for p in stored_expression.parts(previous.path)}
    missing = [name for name in names if name not in stored]
    if missing:
        raise AtlasError(no_expression_message(previous, missing))


def _dataset_id(previous: store.Atlas, name: str | None) -> int:
    return next((int(d["dataset_id"]) for d in previous.datasets if d["name"] == name), -1)


class _WholeCells:
    """Stored expression rows over some genes, plus one column holding the rest of each cell's 10,000.

    The stored values are counts per 10,000 of every gene the cell was measured with, mapped or
    not. The extra column (an unmapped gene to the reader) brings each row back to 10,000, so
    normalising gives back the stored values instead of re-scaling them to the stored genes.
    """

    def __init__(self, stored: Any, genes: list[str]) -> None:
        from screader_db.stored_expression import StoredMatrix

        self.rows = StoredMatrix(stored, genes)
        self.shape = (self.rows.shape[0], self.rows.shape[1] + 1)

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        from screader_db.inputs import TARGET_SUM

        block = self.rows[rows]
        rest = np.maximum(TARGET_SUM - np.asarray(block.sum(axis=1, dtype=np.float64)).ravel(), 0.0)
        return sp.csr_matrix(sp.hstack([block, sp.csr_matrix(rest.astype(np.float32)[:, None])]), dtype=np.float32)


def _source(version: Path, names: list[str], genes: list[str] | None = None) -> tuple[np.ndarray, Any, list[str]]:
    """(cell ids, a chunked linear source, its genes) of the stored expression of ``names``."""
    from screader_db.inputs import ExpressionSource
    from screader_db.stored_expression import StoredExpression

    stored = StoredExpression(version, datasets=names)
    genes = stored.genes() if genes is None else genes
    ids = stored.ids()
    source = ExpressionSource(matrix=_WholeCells(stored, genes), names=[*genes, ""], obs=pd.DataFrame(index=ids.astype(str)))
    return ids, source, genes


@dataclass
class _Fit:
    embedder: Any
    emb: Any
    settings: Any
    calibration: dict[str, Any]
    provenance: dict[str, Any]


def _fit(version: Path, datasets: list[tuple[str, int]], labels: pd.Series, previous: store.Atlas, *,
         reporter: Reporter, device: str | None) -> _Fit:
    """Statistics of every stored cell as one reference, then genes, method and calibration, as a build."""
    from screader_db.builders.atlas import atlas_provenance, calibrate_reference, fit_method, settings_of
    from screader_db.genes import GeneResolver
    from screader_db.inputs import CHUNK, plan_genes
    from screader_db.reference_stats import collect

    settings = settings_of(previous)
    names = [name for name, _ in datasets]
    ids, source, genes = _source(version, names)
    cell_labels = labels.reindex(ids)
    if cell_labels.isna().any():
        message = (f"{int(cell_labels.isna().sum()):,} stored cells have no row in the atlas's cells; the atlas is "
                   "damaged: rebuild it")
        raise AtlasError(message)
    reporter.message(f"Refitting on {len(ids):,} cells of {len(names)} data set(s), {len(genes):,} genes")
    stats = collect(source, plan_genes([*genes, ""], genes), cell_labels.astype(str).to_numpy(), chunk=CHUNK,
                    seed=settings.seed, kind="linear", reporter=reporter)
    fitted = fit_method(stats, cell_labels.astype(str).to_numpy(), settings, resolver=GeneResolver(), reporter=reporter,
                        device=device)
    if len(names) == 1:
        calibration = calibrate_reference(fitted, stats, settings, reporter=reporter)
    else:
        owner = store.dataset_of(ids[stats.sample_rows])
        calibration = _calibrate_each(fitted, stats, settings, [(name, owner == number) for name, number in datasets],
                                      reporter=reporter)
    return _Fit(embedder=fitted.embedder, emb=fitted.emb, settings=settings, calibration=calibration,
                provenance=atlas_provenance(settings, fitted.embedder, fitted.emb))


def _calibrate_each(fitted: Any, stats: Any, settings: Any, groups: list[tuple[str, np.ndarray]], *,
                    reporter: Reporter) -> dict[str, Any]:
    """The score calibration of all the cells, and the novelty check calibrated on each data set's cells.

    The check is kept on only when it is on for every data set that could be calibrated, at the
    lowest of their cut-offs, so it costs no data set's known cells more than an atlas of that
    data set alone would (a query is usually of one tissue). Each data set's calibration is kept
    under ``datasets``.
    """
    from screader_db.builders.atlas import calibrate_scores
    from screader_db.novelty import calibrate

    labels = np.asarray(fitted.fit["labels"])
    each: dict[str, dict[str, Any]] = {}
    with reporter.task("Calibrating novelty and confidence on each data set", len(groups) + 1, "steps") as advance:
        for name, rows in groups:
            each[name] = calibrate(stats.sample[np.flatnonzero(rows)], labels[rows], seed=settings.seed)
            advance(1)
        scores = calibrate_scores(fitted, stats, settings)
        advance(1)
    done = {name: c for name, c in each.items() if c.get("calibrated")}
    if not done:
        return {**next(iter(each.values())), "scores": scores, "datasets": each}
    weakest = min(done.values(), key=lambda c: float(c.get("hidden_caught", 1.0)))
    return {"cutoff": min(float(c["cutoff"]) for c in done.values()), "calibrated": True,
            "enabled": all(bool(c.get("enabled", True)) for c in done.values()),
            "known_unassigned": max(float(c.get("known_unassigned", 0.0)) for c in done.values()),
            "hidden_caught": float(weakest.get("hidden_caught", 0.0)), "combined": "per data set", "datasets": each,
            "scores": scores}


def _embed(version: Path, name: str, embedder: Any, *, reporter: Reporter) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, vectors) of one data set's stored cells, centred on the embedder's reference mean."""
    from screader_db.expression_stream import ExpressionStream
    from screader_db.inputs import plan_genes

    genes = list(embedder.genes)
    ids, source, _ = _source(version, [name], genes)
    stream = ExpressionStream(source, plan_genes([*genes, ""], genes), "linear")
    return ids, stream.embed(embedder, mean=embedder.mean, description=f"Embedding {name}", reporter=reporter)


def _rewrite_cells(draft: Any, previous: store.Atlas, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    """The data set's cell parts of the previous version with the new vectors: other columns, the
    format version and metadata stay as they were; the provenance is the refit's."""
    from screader_db.integrity import reading

    position = pd.Index(ids)
    for part in previous.cell_parts():
        relative = part.relative_to(previous.path).as_posix()
        if atlas_format.part_dataset(relative) != name:
            continue
        with reading(part, "cells"):
            table = pq.read_table(part)
        rows = position.get_indexer(table.column("cell_id").to_numpy())
        at = table.schema.get_field_index("embedding")
        if (rows < 0).any() or at < 0:
            message = f"{part} does not hold the stored cells' vectors; the atlas is damaged or too old to refit: rebuild it"
            raise AtlasError(message)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel(), pa.float32()), vectors.shape[1])
        meta = {**(table.schema.metadata or {}), atlas_format.PROVENANCE_KEY: draft.provenance_json().encode()}
        table = table.set_column(at, pa.field("embedding", column.type), column).replace_schema_metadata(meta)
        target = draft.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target, compression="zstd")
