"""Accuracy comparisons run in one go on the same genes: text models beside their baselines.

Each method builds a real atlas (same reference, same genes, same k) and annotates the same
query, so every figure in a table was measured in the same run under the same conditions.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from screader_db.progress import SILENT, Reporter


@dataclass(frozen=True)
class MethodSpec:
    """One row of a comparison: a display name, the gene model and the cell embedding method."""

    name: str
    model: str
    method: str


def default_specs(model: str = "minilm", dim: int = 384, seeds: int = 1) -> list[MethodSpec]:
    """The text method, its random-vector twin(s) and the expression baselines."""
    specs = [MethodSpec(f"genept ({model})", model, "genept")]
    specs += [MethodSpec(f"genept (random:{dim}:{s})", f"random:{dim}:{s}", "genept") for s in range(seeds)]
    specs += [MethodSpec("expression kNN", "none", "expression"), MethodSpec("PCA-50 kNN", "none", "pca")]
    return specs


def compare(reference: Any, query: Any, *, label_key: str, truth_key: str, specs: list[MethodSpec], k: int = 15,
            n_genes: int = 3000, workdir: str | Path | None = None, reporter: Reporter = SILENT) -> list[dict[str, Any]]:
    """Build one atlas per spec from ``reference`` and score each on ``query``'s ``truth_key``."""
    from screader_db.annotation import annotate
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.inputs import read_h5ad

    ref = read_h5ad(reference) if isinstance(reference, str | Path) else reference
    qry = read_h5ad(query) if isinstance(query, str | Path) else query
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, spec in enumerate(specs):
            reporter.message(f"{spec.name}: building")
            start = time.perf_counter()
            settings = BuildSettings(model=spec.model if spec.model != "none" else "minilm", method=spec.method,
                                     n_genes=n_genes, layout="none")
            atlas = build_atlas(ref, Path(tmp) / f"atlas{i}", label_key=label_key, dataset_name="reference",
                                settings=settings, reporter=reporter)
            built = time.perf_counter() - start
            result = annotate(qry, atlas, k=k)
            agree = result.agreement(qry.obs[truth_key])
            rows.append({"method": spec.name, "model": atlas.model_id, "cell_method": spec.method,
                         "accuracy": agree.accuracy, "macro_f1": agree.macro_f1, "n_scored": agree.n_scored,
                         "per_class_f1": agree.per_class_f1, "build_seconds": built})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`compare` as a Markdown table."""
    lines = ["| method | accuracy | macro-F1 | cells scored |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | {row['n_scored']:,} |")
    return "\n".join(lines)


def mean_of(rows: list[dict[str, Any]], prefix: str, key: str) -> float:
    values = [r[key] for r in rows if r["method"].startswith(prefix)]
    return float(np.mean(values)) if values else float("nan")
