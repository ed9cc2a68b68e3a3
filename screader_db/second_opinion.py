"""A second opinion on every call: how much of another method's neighbour vote goes to the label given.

On the transfer suite the default method's wrong calls were mostly cells where plain expression
kNN (the ``expression`` method: centred log expression of variable genes, no gene text) voted
for something else: where the two agreed the default was right 88-99% of the time, where they
disagreed 31-75%. The share of the expression method's vote that goes to a cell's label is the
third input of its ``confidence`` (:mod:`screader_db.confidence`).

The expression method is fitted on the reference expression the atlas keeps, the same way and
in the same place as a partial-panel index (:mod:`screader_db.builders.panel`, keyed by its
genes and method): once, by the first query, then reused. It is skipped, and ``confidence``
falls back to its two-input form, when the atlas keeps no expression, when its own method is
the expression method, or when the atlas is larger than :data:`MAX_CELLS` (the fit would read
every reference cell's expression once more).

Beside it, on the same genes and cells, a linear classifier is fitted and kept
(:mod:`screader_db.classifier`); its label probabilities are blended into the vote itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from screader_db import store
from screader_db.inputs import CHUNK
from screader_db.progress import SILENT, Reporter
from screader_db.query_input import MIN_PANEL_GENES, PANEL_SHARE, PreparedQuery, embed_query

METHOD = "expression"
MAX_CELLS = 200_000


@dataclass(frozen=True)
class SecondOpinion:
    """The second method's neighbours of every informative query cell, and what was used.

    Attributes
    ----------
    similarities, ids : numpy.ndarray or None
        Cells × k cosine similarities and atlas cell ids; None when it was skipped.
    info : dict
        ``used``, and the method, genes and whether the index was reused; or the reason it was skipped.
    probabilities : numpy.ndarray or None
        Cells × ``classes``: the linear classifier's label probabilities (:mod:`screader_db.classifier`),
        fitted beside the second method; None when skipped or when the reference has one label.
    classes : list of str
        The classifier's labels.
    """

    similarities: np.ndarray | None
    ids: np.ndarray | None
    info: dict[str, Any]
    probabilities: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)


def _skipped(reason: str) -> SecondOpinion:
    return SecondOpinion(None, None, {"used": False, "reason": reason})


def seek(opened: store.Atlas, query: PreparedQuery, k: int, *, allowed: np.ndarray | None = None,
         datasets: list[str] | None = None, chunk: int = CHUNK, reporter: Reporter = SILENT) -> SecondOpinion:
    """Every query cell's ``k`` nearest atlas cells by the :data:`METHOD` method.

    The method is fitted on all the genes the atlas keeps expression for when the query has at least
    :data:`~screader_db.query_input.PANEL_SHARE` of them (the genes it lacks read as zero, as on the
    atlas's own index), else on the genes both share.

    Parameters
    ----------
    opened : Atlas
        The opened atlas; the fitted index is kept in ``opened.panels``.
    query : PreparedQuery
        The cells to search (the informative ones), mapped onto any atlas genes.
    k : int
        Neighbours per cell.
    allowed : numpy.ndarray or None
        The atlas cell ids that may be found; None: all.
    datasets : list of str or None
        Fit on these data sets' cells only; None: every data set.
    chunk : int
        Rows per chunk.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    SecondOpinion
        The neighbours, or the reason none were sought.

    Raises
    ------
    AtlasError
        A kept index is unreadable or of another format.
    """
    from screader_db.builders.panel import open_panel


    if opened.embedder.method == METHOD:
        return _skipped(f"the atlas's own method is the {METHOD} method")
    stored = opened.expression_genes(datasets)
    if not stored:
        return _skipped("the atlas keeps no reference expression")
    n_cells = opened.index.ntotal
    if n_cells > MAX_CELLS:
        return _skipped(f"the atlas has {n_cells:,} cells, more than the {MAX_CELLS:,} a second method is fitted on")
    shared = sorted(set(query.mapping.symbols) & set(stored))
    if len(shared) < MIN_PANEL_GENES:
        return _skipped(f"the query shares {len(shared)} genes with the atlas's reference")
    whole = len(shared) >= PANEL_SHARE * len(stored)
    genes = stored if whole else shared
    key = ("method:", METHOD, "classifier", *genes, "datasets:", *(sorted(datasets) if datasets else ["all"]))
    panel = opened.panels.get(key)
    reused = panel is not None
    if panel is None:
        try:
            panel = open_panel(opened, genes, datasets=datasets, method=METHOD, classifier=True, reporter=reporter)
        except OSError as error:  # a shared atlas the user may read but not write
            return _skipped(f"its index could not be kept in {opened.path}: {error}; run one query as a user who may "
                            "write there, or pass --no-second-opinion")
        reused = panel.reused
        opened.panels[key] = panel
    mapped = query.onto(panel.embedder.genes, None if whole else shared)
    passes = mapped.stream.replayable(chunk)  # read once for the embedding and the classifier when small
    vectors = embed_query(mapped, panel.embedder, chunk=chunk, reporter=reporter, passes=passes)
    with reporter.task(f"Searching the atlas by the {METHOD} method", len(vectors), "cells") as advance:
        # its vectors are 3,000 wide: a large query against a large atlas is searched by lists (CellIndex.search_checked)
        sims, ids, checked = panel.index.search_checked(vectors, k, allowed=allowed)
        advance(len(vectors))
    info = {"used": True, "method": METHOD, "key": panel.key, "genes": len(genes), "reused": bool(reused),
            "classifier": panel.classifier is not None}
    if checked:
        info["search_probes"] = checked
    if panel.classifier is None:
        return SecondOpinion(sims, ids, info)
    probabilities = np.vstack([panel.classifier.probabilities(block) for _, block in passes()])
    return SecondOpinion(sims, ids, info, probabilities, list(panel.classifier.classes))


def describe(info: dict[str, Any]) -> str:
    """One line on the second opinion of a result's ``info["second_opinion"]`` entry.

    Parameters
    ----------
    info : dict
        The entry (empty for results made before it existed).

    Returns
    -------
    str
    """
    if not info:
        return "not sought"
    if not info.get("used"):
        return f"not used: {info.get('reason', '')}"
    how = "reused" if info.get("reused") else "fitted for this query and kept"
    classifier = "; a linear classifier on the same genes voted with the neighbours" if info.get("classifier") else ""
    from screader_db.index import describe_search

    searched = describe_search(info.get("search_probes") or {})
    searched = f", searched {searched}" if searched else ""
    return (f"the {info['method']} method's neighbour vote for each label, on {int(info['genes']):,} genes "
            f"(index {info['key']}, {how}{searched}), weighed into the confidence{classifier}")
