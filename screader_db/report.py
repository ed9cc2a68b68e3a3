"""One self-contained HTML report of an annotation: what was called, what was left Unassigned and
why, which query populations the atlas lacks, how well each query cluster mapped, and the scores.

Everything is inline (the style sheet, and the figures as base64 PNG data URIs): the file opens
offline, can be mailed or kept beside the results, and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db import __version__
from screader_db.expression_stream import ExpressionStream
from screader_db.inputs import map_genes, open_expression, plan_genes
from screader_db.label_families import describe as describe_parents
from screader_db.metrics import UNASSIGNED
from screader_db.novelty import describe as describe_novelty
from screader_db.outputs import atomic_write, refuse_existing
from screader_db.plots import bar_figure, cluster_quality_figure, confusion_figure, map_figure, png_bytes, scores_figure
from screader_db.results import EMPTY, LOW_MARGIN, LOW_SCORE, NOVEL_POPULATION, AnnotationResult
from screader_db.second_opinion import describe as describe_second_opinion

TOP_GENES = 10
SECTIONS = {"summary": "Summary", "unassigned": "Unassigned by reason", "novel-clusters": "Novel clusters",
            "mapping-quality": "Mapping quality per cluster", "label-scores": "Label scores"}
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1120px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 4px; padding-top: 12px; border-top: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta { color: #666; margin: 0 0 10px; }
p.how { color: #555; margin: 2px 0 12px; max-width: 880px; }
nav a { margin-right: 14px; color: #2255aa; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 14px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flag td { background: #fdecea; }
img { display: block; max-width: 100%; height: auto; margin: 8px 0 16px; }
code { background: #f3f4f6; padding: 0 3px; border-radius: 3px; }
"""


def write_report(result: AnnotationResult, adata: Any, path: str | Path, *, truth: Any = None, overwrite: bool = False,
                 layer: str | None = None, use_raw: bool | None = None, gene_key: str | None = None) -> Path:
    """Write the report of an annotation as one self-contained HTML file.

    Parameters
    ----------
    result
        The annotation of ``adata``.
    adata
        The query; read again (in chunks) only for the top genes of novel clusters.
    path
        The HTML file.
    truth
        True labels of the query: adds the agreement and a confusion matrix.
    overwrite
        Replace an existing file.
    layer, use_raw, gene_key
        Where the query's expression is read (default: what the annotation read).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OutputExistsError
        When the file exists and ``overwrite`` is False.
    """
    target = Path(path)
    refuse_existing(target, overwrite=overwrite)
    text = render_report(result, adata, truth=truth, layer=layer, use_raw=use_raw, gene_key=gene_key)
    with atomic_write(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def render_report(result: AnnotationResult, adata: Any, *, truth: Any = None, layer: str | None = None,
                  use_raw: bool | None = None, gene_key: str | None = None) -> str:
    """The report of :func:`write_report` as one HTML string.

    Parameters
    ----------
    result
        The annotation of ``adata``.
    adata
        The query.
    truth
        True labels of the query: adds the agreement and a confusion matrix.
    layer, use_raw, gene_key
        Where the query's expression is read (default: what the annotation read).

    Returns
    -------
    str
        The HTML page.
    """
    info = result.info
    title = f"{len(result.table):,} cells annotated against {Path(str(info.get('atlas', 'an atlas'))).name}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name in SECTIONS.items())
    clusters = _cluster_column(result.table)
    body = [
        _section("summary", "How many cells got which label, and what the annotation read and used.",
                 _summary(result, truth)),
        _section("unassigned", "A cell is Unassigned for the first rule that applies: it detects too few of the "
                 "atlas's genes, or has the same value on all of them (empty), its query cluster matches no "
                 "atlas label (novel population), its score is below the cut-off (low score), or its lead over the "
                 "runner-up label is below the margin cut-off (low margin). The best label is what such cells would "
                 "have been called.", _unassigned(result)),
        _section("novel-clusters", "Query clusters whose mean expression matches no atlas label profile nearly as well "
                 "as the query's other clusters do. The match score is in robust standard deviations from the query's "
                 "typical cluster (more negative = worse). Genes shared with its voted label: how many of the genes "
                 "that most set the cluster apart also set its cells' voted label apart in the atlas (from half on, a "
                 "cluster is spared: it differs as its label does). The top genes are those whose mean log expression "
                 "in the cluster most exceeds the rest of the query, a first hint of what the population is.",
                 _novel(result, adata, layer=layer, use_raw=use_raw, gene_key=gene_key)),
        _section("mapping-quality", "One row per query cluster" + ("" if clusters == "novelty_cluster" else
                 " (here: per predicted label, as the novelty check did not cluster this query)") + ". Well mapped "
                 "clusters have a high mean score and similarity and few Unassigned cells; a cluster low on both, "
                 "or red in the plot, is where to look first.", _quality(result, clusters)),
        _section("label-scores", "The score is the label's share of the neighbour vote, or the linear classifier's probability of it "
                 "where that is higher; the dashed line is "
                 "the cut-off below which a cell is Unassigned." + ("" if result.umap is None else " The map shows "
                 "the reference in the left panel and the query placed among its nearest reference cells in the "
                 "right."), _scores(result, truth)),
    ]
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f'<p class="meta">screader-db {__version__}, {when}</p>\n<nav>{nav}</nav>\n'
            + "\n".join(body) + "\n</body>\n</html>\n")


def _section(key: str, how: str, content: str) -> str:
    return (f'<section>\n<h2 id="{key}">{html.escape(SECTIONS[key])}</h2>\n<p class="how">{html.escape(how)}</p>\n'
            f"{content}\n</section>")


def _cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | np.integer):
        return f'<td class="num">{int(value):,}</td>'
    if isinstance(value, float | np.floating):
        return f'<td class="num">{"–" if np.isnan(value) else f"{float(value):.3f}"}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(frame: pd.DataFrame, *, flag: str | None = None) -> str:
    """An HTML table of ``frame`` (numbers right-aligned); rows where column ``flag`` is true are tinted."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        tint = ' class="flag"' if flag is not None and bool(row[flag]) else ""
        rows.append(f"<tr{tint}>" + "".join(_cell(row[c]) for c in frame.columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(fig: Any, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _text(value: str) -> str:
    return f"<p>{html.escape(value)}</p>"


def _summary(result: AnnotationResult, truth: Any) -> str:
    info, table = result.info, result.table
    n = max(len(table), 1)
    called = sorted(set(table["label"].astype(str)) - {UNASSIGNED})
    panel = info.get("panel") or {}
    panel_text = "not used: the query has (nearly) all of the atlas's genes"
    if isinstance(panel, dict) and panel.get("used"):
        panel_text = (f"answered on the {int(panel['shared_genes']):,} genes the query shares with the atlas (panel "
                      f"index {panel['key']}, {'reused' if panel.get('reused') else 'fitted for this query and kept'})")
    rows = [
        ("Cells", f"{len(table):,}"),
        ("Labels called", f"{len(called)} of the atlas's {len(result.atlas_labels)}"),
        ("Unassigned", f"{result.n_unassigned:,} ({result.n_unassigned / n:.1%})"),
        ("Mean score / confidence", f"{table['score'].mean():.3f} / {table['confidence'].mean():.3f}"
         if "confidence" in table else f"{table['score'].mean():.3f}"),
        ("Atlas", f"{info.get('atlas', '')}, version {info.get('atlas_version', '')}"),
        ("Method", _method_text(info)),
        ("Input scale", str(info.get("input_scale_evidence") or info.get("input_kind", ""))),
        ("Genes matched", f"{int(info.get('genes_matched', 0)):,} of the atlas's {int(info.get('genes_in_atlas', 0)):,}"),
        ("Gene panel", panel_text),
        ("Second opinion", describe_second_opinion(info.get("second_opinion") or {})),
        ("Novelty check", describe_novelty(info.get("novelty") or {})),
        ("Coarse parent labels", describe_parents(info.get("parent_labels") or {})),
        ("Unassigned rules", f"score below {float(info.get('min_score', 0)):.3f}, margin below "
                             f"{float(info.get('min_margin', 0)):.3f}, a novel population, or empty (fewer than "
                             f"{int(info.get('min_detected_genes', 0))} atlas genes detected, or constant values)"),
    ]
    if truth is not None:
        agree = result.agreement(truth)
        rows.append(("Agreement with the given labels", f"accuracy {agree.accuracy:.3f}, macro-F1 {agree.macro_f1:.3f} "
                                                        f"on {agree.n_scored:,} cells whose label the atlas knows"))
    facts = pd.DataFrame(rows, columns=["", "value"])
    labels = result.summary().rename_axis("label").reset_index()
    labels.columns = ["label", "cells", "share", "mean score", "left Unassigned (best label)"]
    return (_table(facts) + "<h3>Cells per label</h3>"
            + _text("Left Unassigned: cells whose best label this was that the rules set aside.") + _table(labels))


def _method_text(info: dict[str, Any]) -> str:
    model = str(info.get("model_id", ""))
    text = f"{info.get('method', '')}, {model if model not in ('', 'none') else 'no gene text model'}"
    return text + f"; the {info.get('k', '')} nearest reference cells vote"


def _unassigned(result: AnnotationResult) -> str:
    table = result.table
    left = table[table["label"] == UNASSIGNED]
    reasons = left["unassigned_reason"].astype(str) if "unassigned_reason" in left else pd.Series("", index=left.index)
    rows = []
    for reason in (EMPTY, NOVEL_POPULATION, LOW_SCORE, LOW_MARGIN):
        chosen = left[reasons == reason]
        best = chosen["raw_label"].astype(str).value_counts().head(3)
        rows.append({"reason": reason, "cells": len(chosen), "share of all cells": len(chosen) / max(len(table), 1),
                     "best labels": ", ".join(f"{label} ({count:,})" for label, count in best.items()) or "–"})
    frame = pd.DataFrame(rows)
    if left.empty:
        return _table(frame) + _text("No cell was left Unassigned.")
    counts = frame.set_index("reason")["cells"]
    return _table(frame) + _figure(_bars(counts, "Unassigned cells"), "Unassigned cells by reason")


def _bars(counts: pd.Series, xlabel: str) -> Any:
    return bar_figure(counts, xlabel=xlabel)


def _novel(result: AnnotationResult, adata: Any, *, layer: str | None, use_raw: bool | None,
           gene_key: str | None) -> str:
    novelty = result.info.get("novelty") or {}
    if not novelty.get("checked") or "novelty_cluster" not in result.table:
        return _text(f"None to show: the novelty check was {describe_novelty(novelty)}.")
    table = result.table
    codes = table["novelty_cluster"].astype(str).astype(int).to_numpy()
    flagged = sorted(set(codes[table["novel"].to_numpy(dtype=bool)].tolist()))
    if not flagged:
        return _text(f"None: {describe_novelty(novelty)}.")
    genes = cluster_top_genes(adata, codes, flagged, info=result.info, layer=layer, use_raw=use_raw, gene_key=gene_key)
    best = novelty.get("cluster_best_label", [])
    shared = novelty.get("cluster_explained", [])
    match = table["cluster_match"].to_numpy(dtype=np.float64)
    rows = [{"cluster": str(c), "cells": int((codes == c).sum()),
             "best atlas label": str(best[c]) if c < len(best) else "",
             "match score": float(match[codes == c].mean()),
             "genes shared with its voted label": f"{shared[c]:.0%}" if c < len(shared) and shared[c] >= 0 else "",
             "top genes": ", ".join(genes.get(c, []))}
            for c in flagged]
    return _table(pd.DataFrame(rows))


def cluster_top_genes(adata: Any, clusters: np.ndarray, wanted: list[int], *, info: dict[str, Any],
                      layer: str | None = None, use_raw: bool | None = None, gene_key: str | None = None,
                      n: int = TOP_GENES) -> dict[int, list[str]]:
    """The genes that set some query clusters apart from the rest of the query.

    Parameters
    ----------
    adata
        The query, read in chunks on the scale the annotation detected.
    clusters
        One cluster number (from 0) per cell.
    wanted
        The clusters to describe.
    info
        The annotation's info (species, input scale, the layer, raw and gene column it read).
    layer, use_raw, gene_key
        Override what the annotation read.
    n
        Most genes per cluster.

    Returns
    -------
    dict of int to list of str
        Per wanted cluster, the ``n`` genes (symbols) whose mean log1p CP10k in the cluster most
        exceeds their mean over the rest of the query; only genes with a positive lead.

    Raises
    ------
    InputDataError
        The matrix, its genes or its values are not usable (as the annotation would have refused them).
    """
    source = open_expression(adata, layer=layer if layer is not None else (str(info.get("layer") or "") or None),
                             use_raw=bool(info.get("use_raw", False)) if use_raw is None else use_raw,
                             gene_key=gene_key if gene_key is not None else (str(info.get("gene_key") or "") or None))
    mapping = map_genes(source, species=str(info.get("species", "auto")))
    stream = ExpressionStream(source, plan_genes(mapping.symbols), str(info.get("input_kind", "counts")))
    k = int(clusters.max()) + 1
    sums = np.zeros((k, len(stream.genes)))
    for start, X in stream.chunks():
        part = clusters[start : start + X.shape[0]]
        onehot = sp.csr_matrix((np.ones(len(part)), (part, np.arange(len(part)))), shape=(k, len(part)))
        sums += np.asarray((onehot @ X).todense())
    sizes = np.bincount(clusters, minlength=k).astype(np.float64)
    total, n_cells = sums.sum(axis=0), float(len(clusters))
    found = {}
    for c in wanted:
        inside = sums[c] / max(sizes[c], 1.0)
        rest = (total - sums[c]) / max(n_cells - sizes[c], 1.0)
        lead = inside - rest
        found[c] = [stream.genes[j] for j in np.argsort(-lead, kind="stable")[:n] if lead[j] > 0]
    return found


def _cluster_column(table: pd.DataFrame) -> str:
    return "novelty_cluster" if "novelty_cluster" in table else "raw_label"


def cluster_quality(result: AnnotationResult, column: str = "novelty_cluster") -> pd.DataFrame:
    """How well each query cluster mapped onto the atlas.

    Parameters
    ----------
    result
        An annotation.
    column
        The table column that groups the cells (the novelty check's clusters by default).

    Returns
    -------
    pandas.DataFrame
        One row per group, in numeric order: cells, majority_label, mean_score, mean_confidence,
        mean_similarity, share_unassigned, match_score and novel.
    """
    table = result.table
    grouped = table.groupby(table[column].astype(str), observed=True)
    frame = pd.DataFrame({
        "cells": grouped.size(),
        "majority_label": grouped["label"].agg(lambda v: v.astype(str).value_counts().index[0]),
        "mean_score": grouped["score"].mean(),
        "mean_confidence": grouped["confidence"].mean() if "confidence" in table else np.nan,
        "mean_similarity": grouped["mean_similarity"].mean(),
        "share_unassigned": grouped["label"].agg(lambda v: float((v.astype(str) == UNASSIGNED).mean())),
        "match_score": grouped["cluster_match"].mean() if "cluster_match" in table else np.nan,
        "novel": grouped["novel"].any() if "novel" in table else False,
    })
    order = sorted(frame.index, key=lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v)))
    return frame.loc[order]


def _quality(result: AnnotationResult, column: str) -> str:
    frame = cluster_quality(result, column)
    shown = frame.rename_axis("cluster" if column == "novelty_cluster" else "predicted label").reset_index()
    shown.columns = pd.Index([shown.columns[0], "cells", "majority label", "mean score", "mean confidence",
                              "mean similarity", "share Unassigned", "match score", "novel"])
    return (_table(shown, flag="novel") + _figure(cluster_quality_figure(frame), "Mean score against mean similarity "
                                                                                  "per query cluster"))


def _scores(result: AnnotationResult, truth: Any) -> str:
    parts = [_figure(scores_figure(result), "Histograms of the per-cell scores")]
    placed = map_figure(result, size=(11, 4.8))
    if placed is not None:
        parts.append("<h3>The query on the reference map</h3>" + _figure(placed, "Query cells placed on the reference map"))
    if truth is not None:
        parts.append("<h3>Predicted against given labels</h3>"
                     + _text("Each row is a given label; the shares of its cells by predicted label.")
                     + _figure(confusion_figure(result.table["label"], truth), "Confusion matrix"))
    return "\n".join(parts)
