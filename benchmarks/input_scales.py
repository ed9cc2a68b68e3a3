"""Queries given on log scales the data cannot show outright: what they are read as, and what it costs.

Every direction of the transfer suite, the reference built with the default settings, the query
given as its counts and four ways that have neither integer ratios nor equal totals: ln, log2 and
log10 of 1 + RPKM (reads per kilobase per million, gene lengths drawn log-normally around 2 kb, as
Smart-seq studies publish them) and ln(1+CP10k) of ambient-corrected counts (each value scaled by
0.7-1.0) with 40% of the genes then dropped (set to zero). Per way: the scale read (``guessed``
when it is the likeliest log base, which a scale shown outright never is; such input was refused
before), the accuracy of the raw labels on the labels both sides have with the true scale given
(``--input-scale``) and as read, and the share of labels equal to those from the counts.

    python benchmarks/input_scales.py --out results/input_scales.md
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from markdown_report import measure_in_workdir


def _rpkm(query: Any, log: Callable[[np.ndarray], np.ndarray]) -> sp.csr_matrix:
    from screader_db.suite import _rpkm as rpkm

    out = rpkm(query.X)
    out.data = log(out.data)
    return out


def _ambient_ln(query: Any) -> sp.csr_matrix:
    """Ambient-corrected counts, ln(1+CP10k), then 60% of the genes kept (the rest left at zero, so
    the query keeps its gene names)."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(query.X, dtype=np.float64, copy=True)
    X.data *= rng.uniform(0.7, 1.0, X.data.size)
    out = sp.csr_matrix(sp.diags(1e4 / np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1e-9)) @ X)
    out.data = np.log1p(out.data)
    return sp.csr_matrix(out @ sp.diags((rng.random(X.shape[1]) < 0.6).astype(np.float64)))


# each way and its true scale
WAYS: dict[str, tuple[Callable[[Any], sp.csr_matrix], str]] = {
    "ln(1+RPKM)": (lambda q: _rpkm(q, np.log1p), "ln"),
    "log2(1+RPKM)": (lambda q: _rpkm(q, lambda v: np.log2(1 + v)), "log2"),
    "log10(1+RPKM)": (lambda q: _rpkm(q, lambda v: np.log10(1 + v)), "log10"),
    "ln(1+CP10k) of ambient-corrected counts, 60% of the genes": (_ambient_ln, "ln"),
}


def measure(workdir: Path) -> list[dict]:
    """One row per direction and way."""
    from screader_db import annotate
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.suite import DIRECTIONS, LABEL, _with_matrix, load_sources

    sources = load_sources()
    atlases = {}
    rows = []
    for ref, qry in DIRECTIONS:
        if ref not in atlases:
            atlases[ref] = build_atlas(sources[ref], workdir / ref, label_key=LABEL, settings=BuildSettings(layout="none"))
        query = sources[qry]
        truth = query.obs[LABEL].astype(str).to_numpy()
        scored = np.isin(truth, sorted(set(sources[ref].obs[LABEL].astype(str))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts = annotate(query, atlases[ref]).table["raw_label"].astype(str).to_numpy()
            for way, (change, scale) in WAYS.items():
                changed = _with_matrix(query, sp.csr_matrix(change(query), dtype=np.float32))
                result = annotate(changed, atlases[ref])
                labels = result.table["raw_label"].astype(str).to_numpy()
                given = annotate(changed, atlases[ref], input_scale=scale).table["raw_label"].astype(str).to_numpy()
                rows.append({"task": f"{ref} -> {qry}", "way": way, "read": result.info["input_kind"],
                             "guessed": "(likeliest)" in result.info["input_scale_evidence"],
                             "counts": float((counts[scored] == truth[scored]).mean()),
                             "given": float((given[scored] == truth[scored]).mean()),
                             "accuracy": float((labels[scored] == truth[scored]).mean()),
                             "same": float((labels == counts).mean())})
    return rows


def report(rows: list[dict]) -> str:
    lines = ["| task | query given as | read as | guessed (refused before) | accuracy from counts | accuracy, scale "
             "given | accuracy | labels as from counts |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['way']} | {r['read']} | {'yes' if r['guessed'] else 'no'} | {r['counts']:.3f} | "
              f"{r['given']:.3f} | {r['accuracy']:.3f} | {r['same']:.1%} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    measure_in_workdir(__doc__, measure, report)


if __name__ == "__main__":
    main()
