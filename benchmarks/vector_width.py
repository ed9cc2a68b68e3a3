"""How narrow can the cell vectors be? Accuracy on the transfer suite against vector width.

Every suite task (screader_db.suite) is annotated through the product path with the default
method; the reference vectors of the index that answered it (the atlas's own, or the panel index
of a partial-panel query) and the query's vectors are then projected onto the top ``w``
right-singular vectors of the reference vectors (no centring, so inner products are what is
kept; a width at or above the vectors' own counts as the full vectors), normalised again, and
every query cell voted on by its 15 nearest reference cells (exact search, power-4 weights, as
the atlas votes). Per width: accuracy of that vote, the share of cells whose label is the
full-width vote's, and recall@10 of the full-width neighbours. The full-width row repeats the
product's own vote (its "same as product" share is the check).

    python benchmarks/vector_width.py --out results/vector_width.md
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markdown_report import measure_in_workdir

WIDTHS = (16, 32, 64, 128, 256)
K = 15
RECALL_K = 10


def _reference_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The stored unit vectors and ids of an exact (flat) index."""
    return np.array(index.stored_vectors()), index.ids()


def _neighbours(queries: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ reference.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    rows = np.arange(len(queries))[:, None]
    order = np.argsort(-sims[rows, top], axis=1, kind="stable")
    top = top[rows, order]
    return sims[rows, top], top


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure(workdir: Path) -> pd.DataFrame:
    """One row per (task, width): accuracy, labels as at full width, recall@10 of the full-width neighbours."""
    from screader_db import annotate, store
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.suite import LABEL, load_sources, suite_tasks
    from screader_db.vote import tally

    sources = load_sources()
    atlases: dict[str, Any] = {}
    rows = []
    for task in suite_tasks(sources):
        if task.reference_key not in atlases:
            root = workdir / re.sub(r"[^A-Za-z0-9]+", "_", task.reference_key)
            build_atlas(task.reference.copy(), root, label_key=LABEL, settings=BuildSettings(layout="none", model="none"))
            atlases[task.reference_key] = store.open_atlas(root)
        opened = atlases[task.reference_key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = annotate(task.query, opened, input_scale=task.input_scale, second_opinion=False)
        panel = result.info["panel"]
        index = opened.index
        if panel.get("used"):
            index = next(p.index for p in opened.panels.values() if p.key == panel["key"])
        reference, ids = _reference_vectors(index)
        labels = opened.cells(["label"])["label"].reindex(ids).astype(str).to_numpy()
        vocabulary = sorted(set(labels))
        codes = pd.Categorical(labels, categories=vocabulary).codes.astype(np.int64)
        informative = np.linalg.norm(result.embeddings, axis=1) > 0
        queries = result.embeddings[informative]
        truth = task.query.obs[LABEL].astype(str).to_numpy()[informative]
        known = np.isin(truth, vocabulary)
        product = result.table["raw_label"].to_numpy()[informative]
        full_sims, full_top = _neighbours(queries, reference, K)
        basis = np.linalg.svd(reference, full_matrices=False)[2]
        power = opened.annotation_defaults()["power"]
        called: dict[str, np.ndarray] = {}
        recall: dict[str, float] = {}
        for width in WIDTHS:
            if width >= reference.shape[1]:  # nothing to narrow: the full vectors
                continue
            projection = basis[:width].T
            sims, top = _neighbours(_unit(queries @ projection), _unit(reference @ projection), K)
            shares = tally(sims, codes[top], len(vocabulary), power=power)
            called[str(width)] = np.asarray(vocabulary, dtype=object)[shares.argmax(axis=1)]
            recall[str(width)] = float(np.mean([len(set(a[:RECALL_K]) & set(b[:RECALL_K])) / RECALL_K
                                                for a, b in zip(top, full_top, strict=True)]))
        shares = tally(full_sims, codes[full_top], len(vocabulary), power=power)
        called["full"], recall["full"] = np.asarray(vocabulary, dtype=object)[shares.argmax(axis=1)], 1.0
        for width in (str(w) for w in WIDTHS if w >= reference.shape[1]):
            called[width], recall[width] = called["full"], 1.0
        for width, labels_called in called.items():
            rows.append({"task": task.name, "width": width, "dim": reference.shape[1],
                         "accuracy": float((labels_called[known] == truth[known]).mean()),
                         "same as full": float((labels_called == called["full"]).mean()), "recall@10": recall[width],
                         "same as product": float((labels_called == product).mean()) if width == "full" else np.nan})
    return pd.DataFrame(rows)


def report(frame: pd.DataFrame) -> str:
    order = [str(w) for w in WIDTHS] + ["full"]
    accuracy = frame.pivot(index="task", columns="width", values="accuracy").reindex(columns=order)
    tasks = list(dict.fromkeys(frame["task"]))
    accuracy = accuracy.reindex(tasks)
    lines = ["| task | dim | " + " | ".join(f"accuracy at {w}" for w in order) + " |", "|---|---|" + "---|" * len(order)]
    dims = frame.groupby("task")["dim"].first()
    for task, row in accuracy.iterrows():
        lines.append(f"| {task} | {dims[task]} | " + " | ".join("" if np.isnan(v) else f"{v:.3f}" for v in row) + " |")
    lines.append("| **mean** | | " + " | ".join(f"{v:.3f}" for v in accuracy.mean()) + " |")
    lines.append("| **worst** | | " + " | ".join(f"{v:.3f}" for v in accuracy.min()) + " |")
    drop = accuracy[order[:-1]].sub(accuracy["full"], axis=0)
    lines.append("| **largest drop against full** | | " + " | ".join(f"{v:.3f}" for v in drop.min()) + " | |")
    lines.append("")
    summary = frame.groupby("width")[["same as full", "recall@10"]].agg(["mean", "min"]).reindex(order)
    lines.append("| width | labels as at full width, mean | worst task | recall@10 of the full-width neighbours, mean | worst task |")
    lines.append("|---|---|---|---|---|")
    for width, row in summary.iterrows():
        lines.append(f"| {width} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    check = frame["same as product"].dropna()
    lines.append(f"\nThe full-width vote repeats the product's raw label on {check.mean():.4f} of cells (worst task {check.min():.4f}).")
    return "\n".join(lines)


def main() -> None:
    measure_in_workdir(__doc__, measure, report)


if __name__ == "__main__":
    main()
