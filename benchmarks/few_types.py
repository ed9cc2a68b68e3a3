"""Queries of a few of the reference's types: sorted cells, one lineage, one cluster of a study.

Every direction of the transfer suite, each query label with at least ``--min-cells`` cells as a
query of its own, and one lineage per direction (PBMC lymphocytes: CD4 T, CD8 T, NK and B cells;
pancreatic endocrine cells: A, B, D and PP cells), in one run, annotated by: the default as shipped
(every cell labelled; and with the Unassigned rules on, a cell set aside counting as wrong), the
default with the query centred on its balanced mean alone (as before the matched centring), the
default with the query centred on the reference's centre, and expression kNN (each side centred
on its own mean). Accuracy is the share of the query's cells given its label.

    python benchmarks/few_types.py --out results/few_types.md
"""

from __future__ import annotations

import time

import pandas as pd
from markdown_report import arguments, publish

from screader_db import centring
from screader_db.evaluation import ABSTENTION, MethodSpec, Task, evaluate, standard_specs
from screader_db.suite import DIRECTIONS, ENDOCRINE, LABEL, load_sources

LYMPHOCYTES = ("CD4 T", "CD8 T", "NK", "B")
DEFAULT = "marker (default)"
RULES = "marker (default), Unassigned rules on"
BALANCED = "marker, balanced mean alone"
REFERENCE = "marker, reference centre"
EXPRESSION = "expression kNN"


def few_type_tasks(sources: dict, min_cells: int) -> list[Task]:
    """One task per (direction, query label) with enough cells, and one lineage task per direction."""
    tasks = []
    for ref, qry in DIRECTIONS:
        reference, query = sources[ref], sources[qry]
        known = set(reference.obs[LABEL].astype(str))
        labels = query.obs[LABEL].astype(str)
        for label in sorted(set(labels) & known):
            if (labels == label).sum() >= min_cells:
                tasks.append(Task(f"{ref} -> {qry}: {label}", reference, query[(labels == label).to_numpy()].copy(),
                                  LABEL, LABEL, reference_key=ref))
        lineage = ENDOCRINE if ref.startswith("baron") else LYMPHOCYTES
        chosen = labels.isin(lineage).to_numpy()
        name = "endocrine cells" if ref.startswith("baron") else "lymphocytes"
        tasks.append(Task(f"{ref} -> {qry}: {name}", reference, query[chosen].copy(), LABEL, LABEL, reference_key=ref))
    return tasks


def run(min_cells: int) -> pd.DataFrame:
    tasks = few_type_tasks(load_sources(), min_cells)
    expression = next(s for s in standard_specs(methods=("marker",), random_seeds=0, celltypist=False, abstention=False)
                      if s.name == EXPRESSION)
    specs = [MethodSpec(DEFAULT, model="none", method="marker"),
             MethodSpec(RULES, model="none", method="marker", options=ABSTENTION),
             MethodSpec(REFERENCE, model="none", method="marker", options=(("center", "reference"),)), expression]
    frames = [evaluate(tasks, specs).frame()]
    margin = centring.MATCH_MARGIN
    centring.MATCH_MARGIN = float("inf")  # the balanced mean, never the matched offset
    try:
        frames.append(evaluate(tasks, [MethodSpec(BALANCED, model="none", method="marker")]).frame())
    finally:
        centring.MATCH_MARGIN = margin
    frame = pd.concat(frames)
    cells = {t.name: t.query.n_obs for t in tasks}
    table = frame.pivot(index="task", columns="method", values="accuracy")[[DEFAULT, RULES, BALANCED, REFERENCE, EXPRESSION]]
    table.insert(0, "cells", [cells[name] for name in table.index])
    return table.loc[[t.name for t in tasks]]


def markdown(table: pd.DataFrame) -> str:
    columns = list(table.columns[1:])
    lines = ["| query | cells | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, row in table.iterrows():
        lines.append(f"| {name} | {int(row['cells']):,} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    single = table[~table.index.str.endswith(("lymphocytes", "endocrine cells"))]
    for what, values in (("median, one type", single.median()), ("worst, one type", single.min()),
                         ("queries of one type under 0.9", (single < 0.9).sum())):
        cells = [f"{values[c]:.3f}" if "queries" not in what else f"{int(values[c])} of {len(single)}" for c in columns]
        lines.append(f"| **{what}** | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__, out_required=True)
    parser.add_argument("--min-cells", type=int, default=30)
    args = parser.parse_args()
    start = time.perf_counter()
    publish(markdown(run(args.min_cells)), start, args.out, note=" in all")


if __name__ == "__main__":
    main()
