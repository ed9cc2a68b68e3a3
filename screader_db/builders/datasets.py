"""Adding and removing data sets of an existing atlas, each change a new version.

A data set is embedded with the atlas's own fitted embedder (same genes, model and
parameters), gets new cell ids, and is added to a copy of the FAISS index; removing one drops
its ids from a copy of the index. Unchanged files are hard-linked from the previous version,
so a change costs about the size of what changed. An addition that brings cell types the
atlas's genes do not separate, or the removal of a data set the embedder was refitted with,
refits the atlas instead (:mod:`screader_db.builders.refit`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import atlas_format, store, stored_expression
from screader_db.builders.refit import (
    REBUILD,
    REFITS,
    SEPARATED_SHARE,
    TOP_MARKERS,
    check_labels,
    fitted_on,
    new_labels,
    no_expression_message,
    write_refit,
)
from screader_db.builders.writer import Draft, drafting, finish, write_dataset, write_expression, write_layout, write_profiles
from screader_db.catalogue import read_tables
from screader_db.errors import AtlasError, OutputExistsError, ScreaderWarning
from screader_db.progress import SILENT, Reporter

SHARED_FILES = (atlas_format.GENES, atlas_format.GENE_EMBEDDINGS, atlas_format.EMBEDDER)  # carried over unchanged


def _carry(draft: Draft, previous: store.Atlas, skip_dataset: str | None = None) -> None:
    """Link the previous version's shared files, cells and expression files (except one data set's), in any layout."""
    for name in SHARED_FILES:
        source = previous.path / name
        if source.is_file():
            draft.link(source, name)
    for part in [*previous.cell_parts(), *stored_expression.parts(previous.path)]:
        relative = part.relative_to(previous.path).as_posix()
        if atlas_format.part_dataset(relative) != skip_dataset:
            draft.link(part, relative)


def _check_name(name: str, existing: list[str]) -> None:
    from screader_db.builders.reference import check_dataset_name

    check_dataset_name(name)
    if name in existing:
        message = (f"the atlas already has a data set named {name!r}; remove it first "
                   f"(`screader-db remove {name}`) or choose another --name")
        raise OutputExistsError(message)


def _refit_reason(previous: store.Atlas, ref: Any, stats: Any, harmonised: dict[str, str], *, refit: bool | None,
                  reporter: Reporter) -> str | None:
    """Why adding ``ref`` refits the atlas, or None for a plain add (``stats``: the data set's, when checked)."""
    if refit is False:
        return None
    kept = stored_expression.has_expression(previous.path)
    if refit:
        if not kept:
            raise AtlasError(no_expression_message(previous, [d["name"] for d in previous.datasets]))
        return "asked for (--refit)"
    if stats is None:
        return None
    missing = [c for c in check_labels(previous, stats, harmonised=harmonised) if not c.separated]
    if not missing:
        return None
    reason = (f"{len(missing)} new label(s) with fewer than {SEPARATED_SHARE:.0%} of their {TOP_MARKERS} best markers "
              f"among the atlas's {len(previous.embedder.genes):,} genes: {'; '.join(c.describe() for c in missing)}")
    if not kept:
        message = (f"{ref.name} brings {reason}. The atlas keeps no reference expression to refit on, so they were "
                   f"embedded over the atlas's genes and may be told apart poorly; to refit, {REBUILD}")
        warnings.warn(message, ScreaderWarning, stacklevel=3)
        return None
    reporter.message(f"Refitting the atlas: {ref.name} brings {reason}")
    return reason


def _placement(previous: store.Atlas, vectors: np.ndarray, k: int = 15) -> np.ndarray | None:
    """New cells placed on the existing reference map from their nearest existing cells."""
    layout = previous.layout()
    if layout is None:
        return None
    from screader_db.layout import place

    sims, ids = previous.index.search(vectors, k)
    positions = layout.reindex(ids.ravel()).to_numpy(dtype=np.float32).reshape(ids.shape[0], ids.shape[1], 2)
    return place(sims, positions)


def add_dataset(atlas: str | Path, reference: Any, *, label_key: str, name: str | None = None, layer: str | None = None,
                use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                label_map: str | Path | pd.DataFrame | None = None, wait: float = 0.0, source_name: str | None = None,
                refit: bool | None = None, device: str | None = None, reporter: Reporter = SILENT) -> store.Atlas:
    """Add a labelled data set (a data file or folder, or an AnnData) to the atlas as a new version.

    The data set is embedded with the atlas's own embedder; its label profiles, stored expression
    and map positions are added when the atlas keeps them, and its cells are added to a copy of
    the index. Unchanged files are hard-linked from the previous version. When it brings a label
    the atlas's genes do not separate (:func:`screader_db.builders.refit.check_labels`), the atlas
    is refitted over every data set instead, in the same new version (``add NAME + refit``).

    Parameters
    ----------
    atlas : str or Path
        The atlas folder.
    reference : str, Path or AnnData
        The data set; a path in any format of :data:`screader_db.input_files.FORMATS` (an .h5ad read backed).
    label_key : str
        The obs column of labels; cells with an empty label are left out (with a warning).
    name : str or None
        The data set's name; None takes the file's stem (``reference`` for an AnnData).
    layer, use_raw, gene_key, species
        Which matrix and gene names are read, and how they map to human symbols
        (:func:`screader_db.builders.reference.open_reference`).
    label_map : str, Path, pandas.DataFrame or None
        A label map CSV (:func:`screader_db.labelmap.read_label_map`) or its table, for the
        harmonised labels and the ontology ids that win over matching the labels to the Cell
        Ontology; None keeps every label as it is.
    wait : float
        Seconds to wait for another writer's lock.
    source_name : str or None
        Recorded as the data set's source file instead of the path read (an uploaded file's own
        name rather than the temporary copy the server read); None records the path.
    refit : bool or None
        True refits the atlas, False never does; None refits when a new label is not separated
        (with a warning instead when the atlas keeps no reference expression to refit on).
    device : str or None
        ``cpu`` or ``cuda`` for a refit's language model or learned method (default: cuda when present).
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    Atlas
        The new version, opened.

    Raises
    ------
    OutputExistsError
        The atlas already has a data set of that name.
    AtlasError
        The atlas is missing or unreadable, the name cannot name a data set, another writer holds
        the lock after ``wait`` seconds, the atlas changed while the data set was embedded, or
        ``refit`` is True and the atlas keeps no reference expression.
    InputDataError
        The data set, its labels, genes or values, or the label map are not usable; the message says why.
    """
    from screader_db.builders.reference import open_reference
    from screader_db.index import CellIndex
    from screader_db.labelmap import read_label_map
    from screader_db.ontology import available_ontology

    root = Path(atlas)
    mapping_table = read_label_map(label_map) if isinstance(label_map, str | Path) else label_map
    reporter.message("Reading the data set")
    with store.writer_lock(root, wait=wait):
        previous = store.open_atlas(root)
    embedder = previous.embedder
    ref = open_reference(reference, label_key=label_key, name=name, layer=layer, use_raw=use_raw, gene_key=gene_key,
                         species=species)
    _check_name(ref.name, [d["name"] for d in previous.datasets])
    if source_name is not None:
        ref.source_file = source_name
    ref.harmonise(mapping_table)
    available_ontology(warn=True)
    found = previous.profiles()
    harmonised = dict(zip(ref.labels, ref.labels if ref.harmonised is None else ref.harmonised, strict=True))
    checked = refit is None and bool(new_labels(previous, ref.labels, harmonised))
    stats = None
    if found is not None or checked:
        from screader_db.reference_stats import collect

        stats = collect(ref.source, ref.plan(), ref.labels, sample_cells=0, kind=ref.kind, reporter=reporter)
    profiles = None
    if found is not None and stats is not None:
        from screader_db.novelty import LabelProfiles

        added = LabelProfiles(stats.labels, stats.genes, stats.class_means(), stats.class_counts,
                              [ref.name] * len(stats.labels))
        profiles = (found[0].extend(added), found[1])
    reason = _refit_reason(previous, ref, stats if checked else None, harmonised, refit=refit, reporter=reporter)
    if reason is not None:
        return write_refit(root, previous, action=f"add {ref.name} + refit", change="add+refit", reason=reason,
                           profiles=None if profiles is None else profiles[0], added=ref, wait=wait, reporter=reporter,
                           device=device)
    vectors = ref.embed(embedder, reporter=reporter)
    with drafting(root, action=f"add {ref.name}", provenance=previous.provenance, wait=wait) as draft:
        if store.current_version(root) != previous.version:
            message = "the atlas changed while the data set was being embedded; run the command again"
            raise AtlasError(message)
        draft.extra.update({"dataset": ref.name, "change": "add"})
        _carry(draft, previous)
        dataset_id = max((int(d["dataset_id"]) for d in previous.datasets), default=0) + 1
        ids, frame, row = write_dataset(draft, ref, dataset_id, vectors)
        if stored_expression.has_expression(previous.path):
            write_expression(draft, ref, dataset_id)
        if profiles is not None:
            write_profiles(draft, *profiles)
        placed = _placement(previous, vectors)
        layout = previous.layout()
        if placed is not None and layout is not None:
            write_layout(draft, np.concatenate([layout.index.to_numpy(), ids]),
                         np.concatenate([layout[["x", "y"]].to_numpy(dtype=np.float32), placed]))
        with reporter.task("Adding to the FAISS index", len(ids), "cells") as advance:
            index = CellIndex.load(previous.path / atlas_format.INDEX)
            index.add(vectors, ids)
            info = index.info.to_dict()
            index.save(draft.staging / atlas_format.INDEX, draft.provenance)
            advance(len(ids))
        tables = read_tables(previous.path / atlas_format.CATALOGUE)
        tables["datasets"] = pd.concat([tables["datasets"], pd.DataFrame([row])], ignore_index=True)
        tables["cells"] = pd.concat([tables["cells"], frame], ignore_index=True)
        finish(draft, tables, atlas_provenance=previous.provenance, index_info=info,
               datasets=[*previous.datasets, row], history=previous.info.get("history", []), reporter=reporter)
    reporter.message(f"Atlas version {draft.number}: added {ref.name} ({ref.n_cells:,} cells)")
    return store.open_atlas(root, version=draft.number)


def remove_dataset(atlas: str | Path, name: str, *, wait: float = 0.0, refit: bool | None = None,
                   device: str | None = None, reporter: Reporter = SILENT) -> store.Atlas:
    """Drop one data set from the atlas as a new version.

    Its cells leave a copy of the index, the catalogue, the label profiles and the map; the other
    files are hard-linked from the previous version. When the embedder's last refit was fitted
    with the data set, the atlas is refitted over the others instead (``remove NAME + refit``),
    so it answers as a fit of them alone does.

    Parameters
    ----------
    atlas : str or Path
        The atlas folder.
    name : str
        The data set to drop.
    wait : float
        Seconds to wait for another writer's lock.
    refit : bool or None
        True refits over the other data sets, False never does; None refits as said above.
    device : str or None
        ``cpu`` or ``cuda`` for a refit's language model or learned method (default: cuda when present).
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    Atlas
        The new version, opened.

    Raises
    ------
    AtlasError
        The atlas has no data set ``name`` or only that one, another writer holds the lock after
        ``wait`` seconds, or the atlas changed meanwhile.
    """
    from screader_db.index import CellIndex

    root = Path(atlas)
    with store.writer_lock(root, wait=wait):
        previous = store.open_atlas(root)
    names = [d["name"] for d in previous.datasets]
    if name not in names:
        message = f"the atlas has no data set named {name!r}; data sets: {', '.join(names)}"
        raise AtlasError(message)
    if len(names) == 1:
        message = f"{name!r} is the atlas's only data set; build a new atlas instead of removing it"
        raise AtlasError(message)
    gone = next(d for d in previous.datasets if d["name"] == name)
    dataset_id = int(gone["dataset_id"])
    found = previous.profiles()
    kept_profiles = None
    if found is not None:
        kept_profiles = found[0].subset(np.array([d != name for d in found[0].datasets], dtype=bool))
    change, fitted = fitted_on(previous)
    if refit or (refit is None and change in REFITS and name in fitted):
        reason = "asked for (--refit)" if refit else f"the embedder's last fit ({change}) included {name}"
        return write_refit(root, previous, action=f"remove {name} + refit", change="remove+refit", reason=reason,
                           profiles=kept_profiles, drop=name, wait=wait, reporter=reporter, device=device)
    with drafting(root, action=f"remove {name}", provenance=previous.provenance, wait=wait) as draft:
        if store.current_version(root) != previous.version:
            raise AtlasError("the atlas changed while preparing the removal; run the command again")
        draft.extra.update({"dataset": name, "change": "remove"})
        _carry(draft, previous, skip_dataset=name)
        with reporter.task("Removing from the FAISS index", int(gone["n_cells"]), "cells") as advance:
            index = CellIndex.load(previous.path / atlas_format.INDEX)
            low = int(store.cell_ids(dataset_id, 1)[0])
            index.remove(low, low + (1 << atlas_format.ID_SHIFT))
            info = index.info.to_dict()
            index.save(draft.staging / atlas_format.INDEX, draft.provenance)
            advance(int(gone["n_cells"]))
        if found is not None and kept_profiles is not None:
            write_profiles(draft, kept_profiles, found[1])
        layout = previous.layout()
        if layout is not None:
            kept = layout[store.dataset_of(layout.index.to_numpy()) != dataset_id]
            write_layout(draft, kept.index.to_numpy(), kept[["x", "y"]].to_numpy(dtype=np.float32))
        tables = read_tables(previous.path / atlas_format.CATALOGUE)
        tables["datasets"] = tables["datasets"][tables["datasets"]["name"] != name]
        tables["cells"] = tables["cells"][tables["cells"]["dataset"] != name]
        remaining = [d for d in previous.datasets if d["name"] != name]
        finish(draft, tables, atlas_provenance=previous.provenance, index_info=info, datasets=remaining,
               history=previous.info.get("history", []), reporter=reporter)
    reporter.message(f"Atlas version {draft.number}: removed {name}")
    return store.open_atlas(root, version=draft.number)
