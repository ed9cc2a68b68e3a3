"""A labelled reference data set, opened for streaming: labels, gene mapping and chunked reads.

Nothing here loads the whole expression matrix of an .h5ad, zarr or 10x .h5 reference: a path is
opened backed or lazily (:func:`screader_db.input_files.open_input`; other formats are read into
memory as sparse matrices) and read in row chunks for the statistics pass and again for the
embedding pass.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.checksums import sha256_path
from screader_db.errors import AtlasError, InputDataError, ScreaderWarning
from screader_db.expression_stream import ExpressionStream
from screader_db.genes import GeneMapping, GeneResolver
from screader_db.input_files import input_name, open_input
from screader_db.inputs import (
    CHUNK,
    ExpressionSource,
    GenePlan,
    input_scale_of,
    map_genes,
    open_expression,
    plan_genes,
)
from screader_db.progress import SILENT, Reporter

# A data set's name is a folder name in the atlas and a word in commands: ASCII letters, digits, '-', '_', '.'.
NAME_RULE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}")
RESERVED_NAMES = (".", "..")


def check_dataset_name(name: str, *, hint: str = "") -> None:
    """Refuse a data set name that is not 1 to 100 letters, digits, '-', '_' or '.' (not starting with '-').

    Parameters
    ----------
    name : str
        The proposed name.
    hint : str
        Appended to the message (how the name came about).

    Raises
    ------
    AtlasError
        The name cannot name a data set.
    """
    if NAME_RULE.fullmatch(name) and name not in RESERVED_NAMES:
        return
    shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
    message = (f"{shown!r} cannot name a data set: use 1 to 100 letters, digits, '-', '_' or '.' (ASCII), "
               f"not starting with '-'{hint}")
    raise AtlasError(message)


@dataclass
class ReferenceSource:
    """A labelled data set: its cells' labels and metadata, and its expression as a chunked source.

    Attributes
    ----------
    name, label_key : str
        The data set's name and the obs column its labels came from.
    labels : numpy.ndarray
        Each cell's label (cells without one were left out).
    source : ExpressionSource
        The chosen matrix, restricted to the labelled cells.
    mapping : GeneMapping
        Its genes as human symbols.
    kind, evidence : str
        The scale of its values and why (:func:`screader_db.inputs.input_scale_of`).
    source_file, source_sha256 : str
        The file read and its sha256 (``<AnnData>`` and empty for an object in memory).
    harmonised, ontology : numpy.ndarray or None
        Harmonised labels and ontology ids, once :meth:`harmonise` ran.
    """

    name: str
    label_key: str
    labels: np.ndarray
    source: ExpressionSource
    mapping: GeneMapping
    kind: str
    source_file: str
    source_sha256: str
    harmonised: np.ndarray | None = None
    ontology: np.ndarray | None = None
    evidence: str = ""

    @property
    def n_cells(self) -> int:
        """Number of (labelled) cells."""
        return self.source.n_cells

    @property
    def obs(self) -> pd.DataFrame:
        """The cells' metadata."""
        return self.source.obs

    def harmonise(self, label_map: pd.DataFrame | None) -> None:
        """Fill the harmonised labels and ontology ids from a label map (identity without one).

        Sets :attr:`harmonised` and :attr:`ontology` (see :func:`screader_db.labelmap.harmonise`).

        Parameters
        ----------
        label_map : pandas.DataFrame or None
            From :func:`screader_db.labelmap.read_label_map`; rows for this data set's name take
            precedence over ``*`` rows. None or empty keeps every label, with empty ontology ids.
        """
        from screader_db.labelmap import harmonise

        self.harmonised, self.ontology = harmonise(self.labels, self.name, label_map)

    def plan(self, target: list[str] | None = None) -> GenePlan:
        """How the data set's genes become ``target`` genes (default: every gene it maps to).

        Parameters
        ----------
        target : list of str or None
            The target genes (columns); None takes every symbol the data set maps to, sorted.

        Returns
        -------
        GenePlan
            See :func:`screader_db.inputs.plan_genes`.
        """
        return plan_genes(self.mapping.symbols, target)

    def stream(self, plan: GenePlan | None = None) -> ExpressionStream:
        """The cells as log-normalised chunks over ``plan``'s genes.

        Parameters
        ----------
        plan : GenePlan or None
            The columns; None takes every gene the data set maps to.

        Returns
        -------
        ExpressionStream
        """
        return ExpressionStream(self.source, self.plan() if plan is None else plan, self.kind, evidence=self.evidence)

    def chunks(self, plan: GenePlan, chunk: int = CHUNK) -> Any:
        """(start, log-normalised block over the plan's genes) for every chunk of cells (:meth:`ExpressionStream.chunks`).

        Parameters
        ----------
        plan : GenePlan
            The columns.
        chunk : int
            Rows per chunk (default :data:`~screader_db.inputs.CHUNK`).

        Returns
        -------
        Iterator of (int, scipy.sparse.csr_matrix)
            Each chunk's first row and its float32 log1p(counts per 10,000) rows; a chunk with NaN,
            infinite or negative values raises :class:`~screader_db.errors.InputDataError` when reached.
        """
        return self.stream(plan).chunks(chunk)

    def embed(self, embedder: Any, *, mean: np.ndarray | None = None, chunk: int = CHUNK,
              reporter: Reporter = SILENT) -> np.ndarray:
        """Vectors of every cell.

        Parameters
        ----------
        embedder : CellEmbedder
            The fitted embedder.
        mean : numpy.ndarray or None
            The centring vector; None centres the data set on itself, the embedder's way (its
            mean or its composition-balanced mean).
        chunk : int
            Rows per chunk.
        reporter : Reporter
            Receives the progress.

        Returns
        -------
        numpy.ndarray
            float32, cells × ``embedder.dim``.
        """
        return self.stream(self.plan(embedder.genes)).embed(embedder, mean=mean, chunk=chunk,
                                                            description=f"Embedding {self.name}", reporter=reporter)


def open_reference(reference: Any, *, label_key: str, name: str | None = None, layer: str | None = None,
                   use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                   resolver: GeneResolver | None = None, input_scale: str | None = None) -> ReferenceSource:
    """Open a reference (a path in any format of :data:`screader_db.input_files.FORMATS`, an .h5ad read in
    backed mode, or an AnnData) and check its labels.

    Parameters
    ----------
    reference : str, Path or AnnData
        The data set.
    label_key : str
        The obs column of labels; cells with an empty label are left out (with a warning).
    name : str or None
        The data set's name; None takes the file or folder name without its suffixes
        (:func:`screader_db.input_files.input_name`; ``reference`` for an AnnData).
    layer, use_raw, gene_key, species, resolver
        Which matrix and gene names are read, and how they map to human symbols
        (:func:`screader_db.inputs.open_expression`, :func:`screader_db.inputs.map_genes`).
    input_scale : str or None
        The scale of the values (:data:`screader_db.inputs.SCALES`); ``auto`` or None tells it from
        the first cells (:func:`screader_db.inputs.input_scale_of`).

    Returns
    -------
    ReferenceSource

    Raises
    ------
    AtlasError
        The name cannot name a data set.
    InputDataError
        The file, the labels, the genes or the values are not usable; the message says why.
    """
    source_file, digest = "<AnnData>", ""
    hint = ""
    if name is None:
        name = input_name(reference) if isinstance(reference, str | Path) else "reference"
        hint = "; the name comes from the file name, so give one"
    check_dataset_name(name, hint=hint)
    unlabelled = ""
    if isinstance(reference, str | Path):
        path = Path(reference)
        opened = open_input(path)
        adata, unlabelled = opened.adata, opened.file.labels_note()
        source_file, digest = str(path.resolve()), sha256_path(path)
    else:
        adata = reference
    if label_key not in adata.obs.columns:
        known = ", ".join(map(str, adata.obs.columns)) or "none"
        message = f"--label-key {label_key!r} is not an obs column of the reference; columns present: {known}{unlabelled}"
        raise InputDataError(message)
    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species)
    labels = adata.obs[label_key].astype("string").fillna("").to_numpy(dtype=object)
    keep = np.array([bool(str(v).strip()) for v in labels])
    if not keep.any():
        message = f"every cell's {label_key!r} is empty; choose another --label-key"
        raise InputDataError(message)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum()):,} of {len(keep):,} cells have no {label_key!r} label (NaN or empty) and "
                      "were left out of the atlas", ScreaderWarning, stacklevel=2)
        source = source.subset(np.flatnonzero(keep))
        labels = labels[keep]
    mapping = map_genes(source, species=species, resolver=resolver)
    scale = input_scale_of(source, input_scale)
    return ReferenceSource(name=name, label_key=label_key, labels=labels.astype(str), source=source,
                           mapping=mapping, kind=scale.scale, source_file=source_file, source_sha256=digest,
                           evidence=scale.evidence)
