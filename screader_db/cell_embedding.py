"""Cell embeddings: from log-normalised expression over the atlas genes to one vector per cell.

A fitted :class:`CellEmbedder` holds everything needed to embed a new cell the way the atlas
cells were embedded. Every method is the same pipeline with different parts switched on::

    v = ((x - m) * w) @ P          centre, weight genes, project (each optional)
    u = v / |v|
    z = [u ; γ·sqrt(softmax(u·c_k / τ))]   class-prototype block (optional), then z / |z|

Methods:

- ``marker`` (default): marker genes of every reference label (optionally η²-weighted),
  composition-balanced centring and the class-prototype block (similarities to each label's
  prototype), which keeps rare labels findable.
- ``marker-text``: the same, computed in the space of whitened gene text vectors (P = E).
- ``genept``: expression-weighted sum of whitened gene text vectors (GenePT-w) over variable genes.
- ``expression``: the centred expression of variable genes (a baseline, no language model).
- ``pca``: 50 principal components of the reference (a baseline).
- ``hybrid``: the scReader model: top expressed genes as tokens (text vector × expression), a
  trained projector into a frozen LLaMA-family decoder, its last hidden state (:mod:`screader_db.hybrid`).
- ``adaptor``: the same tokens and projector, pooled and passed through a small MLP, no decoder.

Text methods paired with ``random:DIM`` gene vectors are their random twins.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.errors import ScreaderError

METHODS = ("marker", "marker-text", "genept", "expression", "pca", "hybrid", "adaptor")
TEXT_METHODS = ("marker-text", "genept", "hybrid", "adaptor")
LEARNED_METHODS = ("hybrid", "adaptor")  # trained networks; see screader_db.hybrid
MARKER_METHODS = ("marker", "marker-text")
CENTRES = ("auto", "query", "reference", "balanced")
MIN_CELLS_SELF_CENTRE = 50
FORMAT = "cell-embedder-2"
GAMMA = 0.5  # the prototype block's weight: chosen leave one task out on the transfer suite (README)
TAU = 0.02
_LOCK = threading.Lock()


def l2_normalise(V: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero).

    Parameters
    ----------
    V : numpy.ndarray
        (rows, dim) vectors.

    Returns
    -------
    numpy.ndarray
        float32, the same shape.
    """
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (V / norms).astype(np.float32)


def whiten(E: np.ndarray, *, eps: float = 1e-3) -> np.ndarray:
    """Gene vectors centred across genes and whitened (each direction gets equal variance).

    Parameters
    ----------
    E : numpy.ndarray
        (genes, dim) gene text vectors.
    eps : float
        Directions whose singular value is at most ``eps`` × the largest are dropped.

    Returns
    -------
    numpy.ndarray
        float32, genes × kept directions: the left singular vectors scaled by sqrt(genes).
    """
    centred = E - E.mean(axis=0, keepdims=True)
    U, S, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    keep = eps * S.max() < S
    return (U[:, keep] * np.sqrt(E.shape[0])).astype(np.float32)


@dataclass
class CellEmbedder:
    """A fitted embedding method that embeds any cell whose columns follow ``genes``."""

    method: str
    genes: list[str]
    mean: np.ndarray
    projection: np.ndarray | None = None
    weights: np.ndarray | None = None
    prototypes: np.ndarray | None = None
    prototype_labels: list[str] = field(default_factory=list)
    # Marker methods: each prototype label's mean log expression over ``genes`` (labels × genes), which
    # a query of a few of the labels' types is centred by (:func:`screader_db.centring.matched_centre`).
    label_means: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Learned methods: gene token vectors and trained weights (saved), and the network (not saved).
    state: dict[str, np.ndarray] = field(default_factory=dict)
    _model: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    @property
    def base_dim(self) -> int:
        """Length of a cell vector before the prototype block (genes, projected directions, or the network's ``dim``)."""
        if self.method in LEARNED_METHODS:
            return int(self.params["dim"])
        return len(self.genes) if self.projection is None else int(self.projection.shape[1])

    @property
    def dim(self) -> int:
        """Length of a cell vector: :attr:`base_dim` plus one per prototype label, if any."""
        return self.base_dim + (0 if self.prototypes is None else int(self.prototypes.shape[0]))

    def centre_mode(self, n_cells: int, center: str | None = None) -> str:
        """How a batch of ``n_cells`` is centred: ``query``, ``balanced`` or ``reference``.

        Parameters
        ----------
        n_cells : int
            Cells in the batch; with fewer than :data:`MIN_CELLS_SELF_CENTRE`, ``query`` and
            ``balanced`` fall back to ``reference``.
        center : str or None
            One of :data:`CENTRES`; None takes the embedder's own (``auto`` if it has none);
            ``auto`` means ``query``.

        Returns
        -------
        str
            The centring used.

        Raises
        ------
        ScreaderError
            ``center`` (or the stored one) is not one of :data:`CENTRES`.
        """
        mode = center or self.params.get("center", "auto")
        if mode not in CENTRES:
            message = f"center must be one of {', '.join(CENTRES)}, got {mode!r}"
            raise ScreaderError(message)
        if mode == "auto":
            mode = "query"
        if mode in ("query", "balanced") and n_cells < MIN_CELLS_SELF_CENTRE:
            return "reference"
        return str(mode)

    def centre_of(self, X: sp.spmatrix | np.ndarray, mode: str) -> np.ndarray:
        """The centring vector of a batch (its mean, its balanced mean or the reference's).

        Parameters
        ----------
        X : scipy.sparse matrix or numpy.ndarray
            (cells, genes) log expression, columns following ``genes``.
        mode : str
            ``reference`` (the stored :attr:`mean`), ``balanced``
            (:func:`screader_db.centring.balanced_mean`) or anything else for the batch's plain mean.

        Returns
        -------
        numpy.ndarray
            float32 vector over the genes.
        """
        if mode == "reference":
            return self.mean
        if mode == "balanced":
            from screader_db.centring import matched_centre

            return matched_centre(X, self, seed=int(self.params.get("seed", 0)))
        return np.asarray(X.mean(axis=0)).ravel().astype(np.float32)

    def _unit(self, block: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            block = block * self.weights
        if self.projection is not None:
            block = block @ self.projection
        return l2_normalise(block)

    def transform(self, X: sp.spmatrix, *, center: str | None = None, mean: np.ndarray | None = None,
                  batch: int = 4096) -> np.ndarray:
        """Embed cells; returns unit-length float32 rows.

        ``mean`` is the centring vector to use (chunked queries pass the one of the whole
        query); otherwise it follows ``center`` on this batch.

        Parameters
        ----------
        X : scipy.sparse matrix
            (cells, genes) log-normalised expression, columns following ``genes``.
        center : str or None
            How the batch is centred (:meth:`centre_mode`); None takes the embedder's own.
            Ignored when ``mean`` is given and by the learned methods, which do not centre.
        mean : numpy.ndarray or None
            The centring vector over the genes; None computes it from this batch (learned methods ignore it).
        batch : int
            Rows densified at a time.

        Returns
        -------
        numpy.ndarray
            float32, cells × :attr:`dim`.

        Raises
        ------
        ScreaderError
            ``X`` does not have one column per gene, or ``center`` is unknown.
        """
        if X.shape[1] != len(self.genes):
            message = f"expression has {X.shape[1]} columns, the embedder expects {len(self.genes)} genes"
            raise ScreaderError(message)
        if self.method in LEARNED_METHODS:
            return self.learned().embed(X)
        if mean is None:
            mean = self.centre_of(X, self.centre_mode(X.shape[0], center))
        from threadpoolctl import threadpool_limits

        # OpenBLAS's float32 products differ in the last bit between 1 and 2 threads (measured here on
        # the Dask test: workers run 1 BLAS thread), so one thread keeps a cell's vector the same on
        # every worker and machine.
        with threadpool_limits(limits=1, user_api="blas"):
            return self._transform(X, mean, batch)

    def _transform(self, X: sp.spmatrix, mean: np.ndarray, batch: int) -> np.ndarray:
        out = np.empty((X.shape[0], self.dim), dtype=np.float32)
        gamma, tau = float(self.params.get("gamma", GAMMA)), float(self.params.get("tau", TAU))
        for start in range(0, X.shape[0], batch):
            block = np.asarray(X[start : start + batch].todense(), dtype=np.float32) - mean
            unit = self._unit(block)
            if self.prototypes is None:
                out[start : start + batch] = unit
                continue
            logits = unit @ self.prototypes.T / tau
            logits -= logits.max(axis=1, keepdims=True)
            soft = np.exp(logits)
            soft /= soft.sum(axis=1, keepdims=True)
            out[start : start + batch] = l2_normalise(np.hstack([unit, gamma * np.sqrt(soft)]))
        return out

    def learned(self) -> Any:
        """The trained network of a learned method (rebuilt from ``state`` once, then kept).

        Returns
        -------
        LearnedModel
            See :func:`screader_db.hybrid.restore`.

        Raises
        ------
        ModelMismatchError
            The decoder's files changed since training.
        MissingExtraError
            The ``llm`` extra is not installed.
        """
        with _LOCK:
            if self._model is None:
                from screader_db.hybrid import restore

                weights = {k: v for k, v in self.state.items() if k != "gene_vectors"}
                self._model = restore(self.method, self.state["gene_vectors"], weights, self.params)
            return self._model

    def save(self, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
        """Write as safetensors: arrays as tensors, genes and parameters as JSON metadata.

        Parameters
        ----------
        path : str or Path
            The file written (replaced if it exists).
        provenance : dict or None
            JSON-serialisable build record stored in the metadata; None stores ``{}``.
        """
        tensors = {"mean": self.mean}
        for name in ("projection", "weights", "prototypes", "label_means"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        tensors.update({f"state.{k}": v for k, v in self.state.items()})
        meta = {
            "format": FORMAT,
            "method": self.method,
            "genes": json.dumps(self.genes),
            "prototype_labels": json.dumps(self.prototype_labels),
            "params": json.dumps(self.params, sort_keys=True),
            "provenance": json.dumps(provenance or {}, sort_keys=True),
        }
        from screader_db.atlas_format import write_tensors

        write_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> CellEmbedder:
        """Read an embedder written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
            The safetensors file.

        Returns
        -------
        CellEmbedder
            A learned method's network is rebuilt on first use (:meth:`learned`).

        Raises
        ------
        AtlasError
            The file is unreadable or of another embedder format.
        ModelMismatchError
            A hybrid embedder's decoder cannot be found or its sha256 differs.
        """
        from screader_db.atlas_format import read_tensors

        meta, arrays = read_tensors(path, "cell embedder", FORMAT, "rebuild the atlas")
        params = json.loads(meta["params"])
        if meta["method"] in LEARNED_METHODS:
            from screader_db.hybrid import check_decoder

            check_decoder(params)
        return cls(method=meta["method"], genes=json.loads(meta["genes"]), mean=arrays["mean"],
                   projection=arrays.get("projection"), weights=arrays.get("weights"),
                   prototypes=arrays.get("prototypes"), prototype_labels=json.loads(meta.get("prototype_labels", "[]")),
                   label_means=arrays.get("label_means"), params=params,
                   state={k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")})


def fit_embedder(method: str, X: sp.spmatrix, genes: list[str], *, gene_vectors: np.ndarray | None = None,
                 mean: np.ndarray | None = None, labels: np.ndarray | None = None, weights: np.ndarray | None = None,
                 params: dict[str, Any] | None = None, n_components: int = 50, seed: int = 0,
                 device: str | None = None, progress: Callable[[int], None] | None = None) -> CellEmbedder:
    """Fit ``method`` on reference expression ``X`` (a sample of cells, with their ``labels``, is enough).

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    X : scipy.sparse matrix
        (cells, genes) log-normalised reference expression, columns following ``genes``.
    genes : list of str
        The atlas genes.
    gene_vectors : numpy.ndarray or None
        (genes, dim) gene text vectors; required by :data:`TEXT_METHODS`.
    mean : numpy.ndarray or None
        The reference's centring vector when ``X`` is only a sample; None centres on ``X``
        (balanced mean for the marker methods, plain mean otherwise).
    labels : numpy.ndarray or None
        Label of each row; required by the marker and learned methods.
    weights : numpy.ndarray or None
        Per-gene weights (the marker methods' η²); None weighs genes equally.
    params : dict or None
        Settings stored with the embedder (``center``, ``gamma``, ``tau``, a learned method's
        training settings), over the defaults.
    n_components : int
        Principal components of the ``pca`` method (at most min(cells, genes) - 1).
    seed : int
        Seed of the centring, the components and the training.
    device : str or None
        The torch device learned methods train on; None picks a GPU when there is one.
    progress : callable or None
        Learned methods call it with the cells trained on after each batch.

    Returns
    -------
    CellEmbedder

    Raises
    ------
    ScreaderError
        An unknown method, missing or mismatched gene vectors, missing labels, or (learned
        methods) fewer than 2 labels or an invalid setting.
    MissingExtraError
        A learned method without the ``llm`` extra installed.
    """
    if method not in METHODS:
        message = f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
        raise ScreaderError(message)
    if method in LEARNED_METHODS:
        return _fit_learned(method, X, genes, gene_vectors=gene_vectors, mean=mean, labels=labels, params=params,
                            seed=seed, device=device, progress=progress)
    settings: dict[str, Any] = {"center": "balanced" if method in MARKER_METHODS else "auto", "seed": seed,
                                **(params or {})}
    if mean is None:
        mode = "balanced" if settings["center"] == "balanced" else "query"
        mean = CellEmbedder(method, list(genes), np.zeros(len(genes), np.float32), params=settings).centre_of(X, mode)
    mean = np.asarray(mean, dtype=np.float32)
    if method == "expression":
        return CellEmbedder(method, list(genes), mean, params=settings)
    if method == "pca":
        from sklearn.utils.extmath import randomized_svd

        dense = np.asarray(X.todense(), dtype=np.float32) - mean
        k = max(1, min(n_components, min(dense.shape) - 1))
        _, _, Vt = randomized_svd(dense, n_components=k, random_state=seed)
        settings["n_components"] = k
        return CellEmbedder(method, list(genes), mean, projection=Vt.T.astype(np.float32), params=settings)
    projection = None
    if method in TEXT_METHODS:
        if gene_vectors is None or gene_vectors.shape[0] != len(genes):
            message = f"the {method} method needs one gene vector per atlas gene"
            raise ScreaderError(message)
        projection = whiten(gene_vectors)
    if method == "genept":
        return CellEmbedder(method, list(genes), mean, projection=projection, params=settings)
    if labels is None:
        raise ScreaderError(f"the {method} method needs the labels of the fitted cells")
    embedder = CellEmbedder(method, list(genes), mean, projection=projection, weights=weights,
                            params={"gamma": GAMMA, "tau": TAU, **settings})
    from screader_db.clusters import group_means

    dense = np.asarray(X.todense(), dtype=np.float32)
    unit = embedder._unit(dense - mean)
    names = sorted(set(np.asarray(labels).tolist()))
    codes = np.searchsorted(names, np.asarray(labels))
    embedder.prototypes = l2_normalise(group_means(unit, codes, len(names)))
    embedder.prototype_labels = names
    embedder.label_means = group_means(dense.astype(np.float64), codes, len(names)).astype(np.float32)
    return embedder


def _fit_learned(method: str, X: sp.spmatrix, genes: list[str], *, gene_vectors: np.ndarray | None,
                 mean: np.ndarray | None, labels: np.ndarray | None, params: dict[str, Any] | None, seed: int,
                 device: str | None, progress: Callable[[int], None] | None) -> CellEmbedder:
    """Train a learned method (``hybrid``, ``adaptor``); cells are not centred, so queries need no extra pass."""
    from screader_db.hybrid import prepare_gene_vectors, train

    if gene_vectors is None or gene_vectors.shape[0] != len(genes):
        message = f"the {method} method needs one gene vector per atlas gene"
        raise ScreaderError(message)
    if labels is None:
        raise ScreaderError(f"the {method} method needs the labels of the fitted cells")
    model, settings = train(method, X, labels, gene_vectors, params={**(params or {}), "seed": seed}, device=device,
                            progress=progress)
    centre = np.asarray(X.mean(axis=0)).ravel() if mean is None else mean
    embedder = CellEmbedder(method, list(genes), np.asarray(centre, dtype=np.float32),
                            params={**settings, "center": "reference", "seed": seed},
                            state={"gene_vectors": prepare_gene_vectors(gene_vectors), **model.state()})
    embedder._model = model
    return embedder
