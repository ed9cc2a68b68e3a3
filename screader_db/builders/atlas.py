"""Build a reference atlas from a labelled AnnData: genes, gene vectors, cell vectors, index.

Steps: open the reference (backed), map genes to human symbols, read it once in chunks for
statistics (gene moments, per-label sums, a cell sample), pick the highly variable genes, embed
their descriptions (through the gene-embedding cache), fit the cell embedding method, read it
again in chunks to embed every cell, then write a new atlas version (Parquet, DuckDB
catalogue, FAISS index) and switch the atlas to it atomically. The expression matrix is never
loaded whole; memory grows with the cell vectors, not the counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from screader_db import atlas_format, store
from screader_db.builders.reference import ReferenceSource, open_reference
from screader_db.builders.writer import (
    Draft,
    dataset_records,
    drafting,
    finish,
    refuse_existing,
    write_dataset,
    write_expression,
    write_layout,
    write_profiles,
)
from screader_db.calibration import score_calibration
from screader_db.cell_embedding import LEARNED_METHODS, MARKER_METHODS, TEXT_METHODS, CellEmbedder, fit_embedder
from screader_db.checksums import sha256_text
from screader_db.errors import ScreaderError
from screader_db.features import variable_from_moments
from screader_db.gene_vectors import GeneEmbeddings, write_gene_embeddings
from screader_db.genes import GeneResolver
from screader_db.information import detection_floor
from screader_db.inputs import CHUNK
from screader_db.markers import eta_squared, markers_per_label, select_markers
from screader_db.novelty import LabelProfiles, calibrate
from screader_db.progress import SILENT, Reporter
from screader_db.provenance import describe
from screader_db.reference_stats import ReferenceStats, collect
from screader_db.vote import DEFAULT_POWER, DEFAULT_PROPAGATION

BUILDER_VERSION = "atlas-1"
DEFAULT_METHOD = "marker"
TOKEN_GENES = ("hvg", "markers", "markers+hvg")


@dataclass
class BuildSettings:
    """Everything that decides how an atlas's vectors are made (stored as its parameters).

    Parameters
    ----------
    model, method, n_genes, pooling, layer, center, index, layout
        The gene text model, the cell embedding method, the variable genes, how a causal model's
        tokens are pooled and from which hidden layer, how queries are centred by default, the
        FAISS index kind and the reference map (``umap`` or ``none``).
    keep_expression : bool
        Keep the reference expression, so partial-panel queries are answered (builders/panel.py).
    markers_per_label, marker_genes, gene_weights, prototype_weight, panel
        How the marker methods choose and weight genes; ``panel`` restricts the genes.
    k, vote_power, propagation : int, float, float
        The annotation defaults the atlas is calibrated and queried with.
    seed : int
        Every random draw of the build.
    decoder, n_top, epochs, train_cells, learning_rate, loss, prompt, token_genes
        Learned methods (hybrid, adaptor); None takes the method's default (screader_db.hybrid.DEFAULTS).
    """

    model: str = "minilm"
    method: str = DEFAULT_METHOD
    n_genes: int = 3000
    pooling: str = "mean"
    layer: int = -1
    center: str = "auto"
    index: str = "auto"
    layout: str = "umap"
    keep_expression: bool = True  # the reference expression, for partial-panel queries (builders/panel.py)
    markers_per_label: int = 50
    marker_genes: str = "markers"
    gene_weights: str = "none"
    prototype_weight: float | None = None  # γ of the marker methods' class-prototype block (None: cell_embedding.GAMMA)
    panel: list[str] | None = None
    k: int = 15
    vote_power: float = DEFAULT_POWER
    propagation: float = DEFAULT_PROPAGATION
    seed: int = 0
    # Learned methods (hybrid, adaptor); None takes the method's default (screader_db.hybrid.DEFAULTS).
    decoder: str = "smollm2"
    n_top: int | None = None
    epochs: int | None = None
    train_cells: int | None = None
    learning_rate: float | None = None
    loss: str | None = None
    prompt: str | None = None
    token_genes: str = "hvg"

    def learned_params(self) -> dict[str, Any]:
        """What a learned method is trained with (unset values are left to the method's defaults).

        Returns
        -------
        dict
            The set ones of ``n_top``, ``epochs``, ``train_cells``, ``lr`` (:attr:`learning_rate`),
            ``loss`` and ``prompt``, plus ``decoder`` for the hybrid method.
        """
        given = {"n_top": self.n_top, "epochs": self.epochs, "train_cells": self.train_cells, "lr": self.learning_rate,
                 "loss": self.loss, "prompt": self.prompt}
        if self.method == "hybrid":
            given["decoder"] = self.decoder
        return {k: v for k, v in given.items() if v is not None}


def _gene_vectors(genes: list[str], settings: BuildSettings, resolver: GeneResolver, reporter: Reporter,
                  device: str | None) -> GeneEmbeddings:
    from screader_db.builders.gene_embeddings import embed_genes
    from screader_db.encoders import resolve_encoder

    encoder = resolve_encoder(settings.model, pooling=settings.pooling, layer=settings.layer, device=device)
    with reporter.task(f"Embedding gene descriptions ({encoder.model_id})", len(genes), "genes") as advance:
        emb = embed_genes(genes, encoder, resolver=resolver, progress=advance)
    emb.extra["model_spec"] = settings.model
    reporter.message(f"{emb.n_embedded:,} of {len(genes):,} gene descriptions embedded, the rest from the cache")
    return emb


def build_atlas(reference: Any, atlas: str | Path, *, label_key: str, dataset_name: str | None = None,
                layer: str | None = None, use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                settings: BuildSettings | None = None, label_map: str | Path | pd.DataFrame | None = None,
                overwrite: bool = False, device: str | None = None, wait: float = 0.0, chunk: int = CHUNK,
                dask: str | None = None, reporter: Reporter = SILENT) -> store.Atlas:
    """Build an atlas from one labelled reference, or, with ``overwrite``, a new version of it.

    Parameters
    ----------
    reference : AnnData, str or Path
        The labelled reference: an AnnData, or a path in any format of :data:`screader_db.input_files.FORMATS`
        (an .h5ad read backed, in chunks).
    atlas : str or Path
        The atlas folder to create.
    label_key : str
        The obs column of the reference's labels.
    dataset_name : str or None
        The data set's name in the atlas (default: the file name, or ``reference``).
    layer, use_raw, gene_key, species
        Which matrix and gene names are read, and how they map to human symbols.
    settings : BuildSettings or None
        How the vectors are made (stored as the atlas's parameters); None: the defaults.
    label_map : str, Path, pandas.DataFrame or None
        Harmonised labels and ontology ids beside the data set's own (:mod:`screader_db.labelmap`); its
        ontology ids win over matching the labels to the Cell Ontology, which is fetched on first use
        (without it the build warns and the ontology and broad levels repeat the labels).
    overwrite : bool
        Replace an existing atlas with a new version (older versions stay).
    device : str or None
        ``cpu`` or ``cuda`` for language models and learned methods (default: cuda when present).
    wait : float
        Seconds to wait for another writer's lock.
    chunk : int
        Reference cells read and embedded at a time (bounds memory).
    dask : str or None
        ``local`` or a scheduler address: embed the cells on a Dask cluster (the same vectors).
    reporter : Reporter
        Receives progress and stage messages.

    Returns
    -------
    Atlas
        The new version, opened.

    Raises
    ------
    ScreaderError
        The reference, its labels or the settings cannot be used, or the atlas exists (without
        ``overwrite``) or is locked; the message says why.
    """
    from screader_db.labelmap import read_label_map
    from screader_db.ontology import available_ontology

    settings = settings or BuildSettings()
    if dask is not None and not isinstance(reference, str | Path):
        raise ScreaderError("--dask needs the reference as an .h5ad path that every worker can read")
    mapping_table = read_label_map(label_map) if isinstance(label_map, str | Path) else label_map
    root = Path(atlas)
    if not overwrite or not store.is_atlas(root):
        refuse_existing(root)  # early, and again under the writer lock before the version is written
    resolver = GeneResolver()
    ref = open_reference(reference, label_key=label_key, name=dataset_name, layer=layer, use_raw=use_raw,
                         gene_key=gene_key, species=species, resolver=resolver)
    ref.harmonise(mapping_table)
    available_ontology(warn=True)
    reporter.message(f"{ref.n_cells:,} cells, {len(set(ref.labels))} labels, {ref.mapping.n_mapped:,} of "
                     f"{ref.mapping.n_input:,} genes mapped ({ref.kind})")
    plan = ref.plan()
    stats = collect(ref.source, plan, ref.labels, chunk=chunk, seed=settings.seed, kind=ref.kind, reporter=reporter)
    fitted = fit_method(stats, ref.labels, settings, resolver=resolver, reporter=reporter, device=device)
    embedder, emb = fitted.embedder, fitted.emb
    mean = embedder.mean
    profiles = LabelProfiles(stats.labels, stats.genes, stats.class_means(), stats.class_counts,
                             [ref.name] * len(stats.labels))
    calibration = calibrate_reference(fitted, stats, settings, reporter=reporter)
    if dask is None:
        vectors = ref.embed(embedder, mean=mean, chunk=chunk, reporter=reporter)
        return write_version(root, [(ref, vectors)], embedder, emb, settings, reporter=reporter, action="build",
                             wait=wait, chunk=chunk, profiles=(profiles, calibration), new=not overwrite)

    def on_dask(draft: Draft) -> np.ndarray:
        from screader_db.builders.distributed import embed_with_dask

        return embed_with_dask(ref, address=dask, path=str(Path(reference).resolve()), layer=layer, use_raw=use_raw,
                               gene_key=ref.source.gene_key, embedder=embedder, mean=mean, ids=store.cell_ids(1, ref.n_cells),
                               folder=draft.staging, provenance=draft.provenance_json(), chunk=chunk, reporter=reporter)

    return write_version(root, [(ref, on_dask)], embedder, emb, settings, reporter=reporter, action="build", wait=wait,
                         chunk=chunk, profiles=(profiles, calibration), new=not overwrite)


@dataclass
class Fitted:
    """A cell embedding method fitted on reference statistics, with what it was fitted from.

    Parameters
    ----------
    embedder : CellEmbedder
        The fitted method.
    emb : GeneEmbeddings or None
        The gene text vectors (text methods).
    chosen : numpy.ndarray
        The atlas genes, as indices into the statistics' genes.
    genes : list of str
        Their symbols.
    fit : dict
        What the method was fitted with (mean, sample labels, weights, gene vectors, params, seed).
    """

    embedder: CellEmbedder
    emb: GeneEmbeddings | None
    chosen: np.ndarray
    genes: list[str]
    fit: dict[str, Any]


def fit_method(stats: ReferenceStats, labels: np.ndarray, settings: BuildSettings, *, resolver: GeneResolver,
               reporter: Reporter, device: str | None = None) -> Fitted:
    """Choose the atlas genes, embed their text (text methods) and fit (or train) the cell embedding.

    Parameters
    ----------
    stats : ReferenceStats
        The reference's statistics and cell sample.
    labels : numpy.ndarray
        Every reference cell's label.
    settings : BuildSettings
        How the vectors are made.
    resolver : GeneResolver
        Gene descriptions for the text methods.
    reporter : Reporter
        Receives progress and stage messages.
    device : str or None
        ``cpu`` or ``cuda`` for language models and learned methods.

    Returns
    -------
    Fitted
    """
    chosen, weights = choose_genes(stats, settings)
    genes = [stats.genes[i] for i in chosen]
    reporter.message(f"{len(genes):,} genes chosen ({settings.method})")
    emb = _gene_vectors(genes, settings, resolver, reporter, device) if settings.method in TEXT_METHODS else None
    params: dict[str, Any] = {} if settings.center == "auto" else {"center": settings.center}
    if settings.prototype_weight is not None:
        params["gamma"] = float(settings.prototype_weight)
    fit: dict[str, Any] = {"mean": None if settings.method in MARKER_METHODS else stats.mean[chosen],
                           "labels": stats.sample_labels(labels), "weights": weights,
                           "gene_vectors": None if emb is None else emb.vectors, "params": params, "seed": settings.seed}
    if settings.method in LEARNED_METHODS:
        embedder = _train_learned(stats.sample[:, chosen], genes, fit, settings, reporter, device)
    else:
        embedder = fit_embedder(settings.method, stats.sample[:, chosen], genes, **fit)
    return Fitted(embedder=embedder, emb=emb, chosen=chosen, genes=genes, fit=fit)


def calibrate_reference(fitted: Fitted, stats: ReferenceStats, settings: BuildSettings, *,
                        reporter: Reporter = SILENT) -> dict[str, Any]:
    """The novelty and score calibration an atlas stores with its label profiles.

    Parameters
    ----------
    fitted : Fitted
        The fitted method.
    stats : ReferenceStats
        The reference's statistics and cell sample.
    settings : BuildSettings
        The build's settings.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    dict
        :func:`screader_db.novelty.calibrate` of the sample, with :func:`calibrate_scores` under ``scores``.
    """
    with reporter.task("Calibrating novelty and confidence on the reference", 2, "steps") as advance:
        calibration = calibrate(stats.sample, fitted.fit["labels"], seed=settings.seed)
        advance(1)
        calibration["scores"] = calibrate_scores(fitted, stats, settings)
        advance(1)
    return calibration


def calibrate_scores(fitted: Fitted, stats: ReferenceStats, settings: BuildSettings) -> dict[str, Any]:
    """The score calibration an atlas is queried with.

    Parameters
    ----------
    fitted : Fitted
        The fitted method.
    stats : ReferenceStats
        The reference's statistics and cell sample.
    settings : BuildSettings
        The build's settings (``k``, ``vote_power``, ``seed``).

    Returns
    -------
    dict
        The score-to-confidence map and default score cut-off, from a split of the reference sample
        (:func:`screader_db.calibration.score_calibration`, refitting the method the same way), and
        the fewest detected atlas genes a query cell needs to be labelled (:mod:`screader_db.information`).
    """
    floor = detection_floor(stats.sample[:, fitted.chosen])
    if settings.method in LEARNED_METHODS:
        return {"calibrated": False, "min_score": 0.0,
                "reason": "learned methods are not trained twice to calibrate their scores", **floor}

    def refit(X: Any, labels: np.ndarray) -> CellEmbedder:
        return fit_embedder(settings.method, X, fitted.genes, **{**fitted.fit, "labels": labels, "mean": None})

    return {**score_calibration(refit, stats.sample[:, fitted.chosen], fitted.fit["labels"], k=settings.k,
                                power=settings.vote_power, seed=settings.seed), **floor}


def _train_learned(X: Any, genes: list[str], fit: dict[str, Any], settings: BuildSettings, reporter: Reporter,
                   device: str | None) -> CellEmbedder:
    """Train a hybrid or adaptor embedder on the stratified cell sample, with a progress bar."""
    from screader_db.hybrid import method_settings, training_cells

    params = {**fit["params"], **settings.learned_params()}
    rest = {name: value for name, value in fit.items() if name != "params"}
    plan = method_settings(settings.method, params)
    total = int(plan["epochs"]) * training_cells(X.shape[0], plan)
    what = f"{settings.method} over {plan['decoder']}" if settings.method == "hybrid" else settings.method
    with reporter.task(f"Training the {what} ({plan['epochs']} epochs)", total, "cells") as advance:
        embedder = fit_embedder(settings.method, X, genes, **rest, params=params, device=device, progress=advance)
    record = embedder.params
    reporter.message(f"Trained on {record['train_cells']:,} cells per epoch in {record['train_seconds']:.0f} s "
                     f"(final loss {record['train_loss'][-1]:.3f})")
    return embedder


def choose_genes(stats: ReferenceStats, settings: BuildSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """The atlas genes of a build.

    Parameters
    ----------
    stats : ReferenceStats
        The reference's statistics.
    settings : BuildSettings
        The method, gene counts, marker rules and panel.

    Returns
    -------
    tuple of (numpy.ndarray, numpy.ndarray or None)
        The genes, as indices into the statistics' genes, and, for marker methods weighted by
        eta squared, their weights.

    Raises
    ------
    ScreaderError
        Fewer than 10 reference genes are in the panel, or an unknown ``token_genes``.
    """
    allowed = None
    if settings.panel:
        panel = set(settings.panel)
        allowed = np.array([g in panel for g in stats.genes])
        if allowed.sum() < 10:
            message = f"only {int(allowed.sum())} reference genes are in the --panel; check that the panel holds gene symbols"
            raise ScreaderError(message)
    mean, var = stats.linear_moments()
    detected = stats.detected if allowed is None else np.where(allowed, stats.detected, 0)
    if settings.method in MARKER_METHODS:
        per_label = markers_per_label(len(stats.labels), settings.markers_per_label)
        chosen = select_markers(stats, per_label=per_label, allowed=allowed)
        if settings.marker_genes in ("markers+hvg", "hvg"):
            variable = variable_from_moments(mean, var, detected, settings.n_genes)
            chosen = variable if settings.marker_genes == "hvg" else np.concatenate([chosen, np.setdiff1d(variable, chosen)])
        return chosen, eta_squared(stats, chosen) if settings.gene_weights == "eta2" else None
    if settings.method in LEARNED_METHODS and settings.token_genes != "hvg":
        if settings.token_genes not in TOKEN_GENES:
            message = f"token_genes must be one of {', '.join(TOKEN_GENES)}, got {settings.token_genes!r}"
            raise ScreaderError(message)
        per_label = markers_per_label(len(stats.labels), settings.markers_per_label)
        chosen = select_markers(stats, per_label=per_label, allowed=allowed)
        if settings.token_genes == "markers+hvg":
            variable = variable_from_moments(mean, var, detected, settings.n_genes)
            chosen = np.concatenate([chosen, np.setdiff1d(variable, chosen)])
        return chosen, None
    return variable_from_moments(mean, var, detected, settings.n_genes), None


def atlas_provenance(settings: BuildSettings, embedder: CellEmbedder, emb: GeneEmbeddings | None) -> dict[str, Any]:
    """What every file of the atlas records.

    Parameters
    ----------
    settings : BuildSettings
        The build's settings (recorded as ``parameters``).
    embedder : CellEmbedder
        The fitted method.
    emb : GeneEmbeddings or None
        The gene text vectors (text methods).

    Returns
    -------
    dict
        Builder version, model id, spec and sha256, encoder, text hash, method, decoder,
        parameters and the package versions.
    """
    return describe({
        "builder_version": BUILDER_VERSION,
        "model_id": emb.model_id if emb is not None else "none",
        "model_spec": settings.model if emb is not None else "none",
        "model_sha": emb.model_sha if emb is not None else "",
        "encoder_key": emb.key if emb is not None else "",
        "encoder_settings": emb.settings if emb is not None else {},
        "text_sha256": sha256_text("".join(emb.text_sha256)) if emb is not None else "",
        "genes_embedded": emb.n_embedded if emb is not None else 0,
        "method": embedder.method,
        "decoder": {k: embedder.params[k] for k in ("decoder", "decoder_id", "decoder_sha") if k in embedder.params},
        "parameters": asdict(settings),
    })


def write_version(root: Path, refs: list[tuple[ReferenceSource, np.ndarray | Callable[[Draft], np.ndarray]]],
                  embedder: CellEmbedder, emb: GeneEmbeddings | None, settings: BuildSettings, *, reporter: Reporter,
                  action: str, wait: float = 0.0, chunk: int = CHUNK,
                  profiles: tuple[LabelProfiles, dict[str, Any]] | None = None, new: bool = False) -> store.Atlas:
    """Write a complete new version from the given data sets and publish it.

    Parameters
    ----------
    root : Path
        The atlas folder.
    refs : list of (ReferenceSource, vectors or function)
        Each data set with its vectors, or a function that computes them inside the draft and
        writes its cell parts there (the Dask build).
    embedder, emb
        The fitted method and its gene text vectors.
    settings : BuildSettings
        The build's settings.
    reporter : Reporter
        Receives progress and stage messages.
    action : str
        What the version records as its change (``build``, ``add NAME``, ...).
    wait : float
        Seconds to wait for another writer's lock.
    chunk : int
        Rows per Parquet part.
    profiles : tuple of (LabelProfiles, dict) or None
        The label profiles and their calibration, for the novelty check.
    new : bool
        The folder must not hold an atlas yet (checked under the writer lock).

    Returns
    -------
    Atlas
        The new version, opened.
    """
    with drafting(root, action=action, provenance=atlas_provenance(settings, embedder, emb), wait=wait,
                  new=new) as draft:
        provenance = draft.provenance
        reporter.message("Writing the atlas")
        all_ids, all_vectors, cell_frames, dataset_rows = [], [], [], []
        for dataset_id, (ref, given) in enumerate(refs, start=1):
            if callable(given):
                vectors = given(draft)
                ids, frame, row = dataset_records(draft, ref, dataset_id)
            else:
                vectors = given
                ids, frame, row = write_dataset(draft, ref, dataset_id, vectors, part_rows=chunk)
            if settings.keep_expression:
                write_expression(draft, ref, dataset_id, part_rows=chunk)
            all_ids.append(ids)
            all_vectors.append(vectors)
            cell_frames.append(frame)
            dataset_rows.append(row)
        draft.extra.update({"change": "build", "fitted_on": [ref.name for ref, _ in refs]})
        ids = np.concatenate(all_ids)
        vecs = all_vectors[0] if len(all_vectors) == 1 else np.concatenate(all_vectors)
        fitted_tables, index_info = write_fitted(draft, ids, vecs, embedder, emb, settings, profiles=profiles,
                                                 reporter=reporter)
        tables = {"datasets": pd.DataFrame(dataset_rows), "cells": pd.concat(cell_frames, ignore_index=True),
                  **fitted_tables}
        finish(draft, tables, atlas_provenance=provenance, index_info=index_info, datasets=dataset_rows, history=[],
               reporter=reporter)
    reporter.message(f"Atlas version {draft.number} written to {root}")
    return store.open_atlas(root, version=draft.number)


def write_fitted(draft: Draft, ids: np.ndarray, vectors: np.ndarray, embedder: CellEmbedder,
                 emb: GeneEmbeddings | None, settings: BuildSettings, *,
                 profiles: tuple[LabelProfiles, dict[str, Any]] | None,
                 reporter: Reporter) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Write the files a fit decides: genes, gene vectors, embedder, label profiles, map and index.

    Parameters
    ----------
    draft : Draft
        The version being written; its provenance is recorded in every file.
    ids, vectors : numpy.ndarray
        Every cell's id and vector, in the same order.
    embedder, emb
        The fitted method and its gene text vectors.
    settings : BuildSettings
        The layout, index kind and seed.
    profiles : tuple of (LabelProfiles, dict) or None
        The label profiles and their calibration; None writes none.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    tuple of (dict, dict)
        The catalogue's ``genes`` and ``gene_embeddings`` tables, and the index's description.
    """
    from screader_db.index import CellIndex

    genes_frame = pd.DataFrame({"gene": embedder.genes, "position": np.arange(len(embedder.genes)),
                                "reference_mean": embedder.mean,
                                "text_sha256": emb.text_sha256 if emb is not None else [""] * len(embedder.genes),
                                "build_id": draft.build_id})
    draft.write_parquet(pa.Table.from_pandas(genes_frame, preserve_index=False), atlas_format.GENES)
    if emb is not None:
        emb.extra["build_id"] = draft.build_id
        write_gene_embeddings(emb, draft.staging / atlas_format.GENE_EMBEDDINGS)
    embedder.save(draft.staging / atlas_format.EMBEDDER, draft.provenance)
    if profiles is not None:
        write_profiles(draft, *profiles)
    layout = _layout(vectors, settings, reporter)
    if layout is not None:
        write_layout(draft, ids, layout)
    with reporter.task("Building the FAISS index", len(ids), "cells") as advance:
        index = CellIndex.build(vectors, ids, kind=settings.index, seed=settings.seed)
        index.save(draft.staging / atlas_format.INDEX, draft.provenance)
        advance(len(ids))
    return {"genes": genes_frame, "gene_embeddings": _gene_embedding_frame(emb, draft.build_id)}, index.info.to_dict()


def settings_of(opened: store.Atlas) -> BuildSettings:
    """The settings an atlas was built with, from its recorded parameters.

    Parameters are read as recorded (keys this version does not know are left out). An atlas
    recorded without a prototype weight gets the one its embedder was fitted with, whatever
    today's default.

    Parameters
    ----------
    opened : Atlas
        The opened atlas version.

    Returns
    -------
    BuildSettings
    """
    from dataclasses import fields

    stored = opened.provenance.get("parameters", {})
    known = {f.name for f in fields(BuildSettings)}
    settings = BuildSettings(**{k: v for k, v in stored.items() if k in known})
    if settings.prototype_weight is None and "gamma" in opened.embedder.params:
        settings.prototype_weight = float(opened.embedder.params["gamma"])
    return settings


def _layout(vectors: np.ndarray, settings: BuildSettings, reporter: Reporter) -> np.ndarray | None:
    if settings.layout == "none":
        return None
    from screader_db.layout import reference_layout

    with reporter.task("Laying out the reference (UMAP)", len(vectors), "cells") as advance:
        coords = reference_layout(vectors, seed=settings.seed)
        advance(len(vectors))
    return coords


def _gene_embedding_frame(emb: GeneEmbeddings | None, build_id: str) -> pd.DataFrame:
    if emb is None:
        return pd.DataFrame()
    return pd.DataFrame({"gene": emb.genes, "model_id": emb.model_id, "model_sha": emb.model_sha,
                         "text_sha256": emb.text_sha256, "vector": list(emb.vectors.astype(np.float32)),
                         "build_id": build_id})
