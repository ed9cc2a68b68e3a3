"""A query as scanpy's own example leaves it: 700 cells of the 68k PBMC study (pbmc68k_reduced).

Its `.raw` is log-normalised over 765 variable genes (no counts anywhere; `.X` is scaled), its cells
come from another study, donor and 10x chemistry than any suite reference, and its 10 labels were
given by correlation to sorted bulk profiles. They are mapped to the suite's: the CD4 and CD8
subsets to `CD4 T` and `CD8 T`, `CD19+ B` to `B`, `CD56+ NK` to `NK`, `CD14+ Monocyte` to
`CD14 Monocytes`; `CD34+` has no counterpart and is not scored. Each PBMC reference of the suite
answers it, with the suite's protocol (the default with and without its Unassigned rules, the two
kNN baselines, CellTypist and SingleR), then the default's `confidence` is scored against the
vote's on the same cells: AUROC of right against wrong and expected calibration error (10 bins),
on every scored cell and without the `CD14+ Monocyte` ones; this transfer took no part in fitting
the confidence's constants. Last, the share of the query's `CD14+ Monocyte` cells each method calls
`FCGR3A Monocytes`, the default's largest groups of wrong calls (by the query's own label) with
their mean confidence, and the mean log-normalised expression of a few marker genes in each of the
query's labels (as its `.raw` holds it).

    python benchmarks/pbmc68k.py --out results/pbmc68k.md
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_report import measure_in_workdir

TO_SUITE = {"CD14+ Monocyte": "CD14 Monocytes", "CD19+ B": "B", "CD56+ NK": "NK", "Dendritic": "Dendritic",
            "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
            "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "CD34+": "CD34+"}
REFERENCES = ("pbmc3k", "kang_ctrl", "kang_stim")
MARKERS = ("FCGR3A", "LST1", "S100A9", "LYZ", "FCER1A", "CLEC10A", "CD8A", "CD8B", "CD3E")


def _query() -> tuple[object, np.ndarray, pd.DataFrame]:
    """The query (its `.raw`, with the suite's label of each cell as ``truth``), each cell's own label,
    and the mean of each of :data:`MARKERS` per own label."""
    import anndata as ad

    from screader_db.fetch import resolve_dataset
    from screader_db.inputs import read_h5ad

    adata = read_h5ad(resolve_dataset("pbmc68k_reduced"))
    query = ad.AnnData(X=adata.raw.X.copy(), obs=adata.obs[[]].copy(), var=pd.DataFrame(index=adata.raw.var_names))
    bulk = adata.obs["bulk_labels"].astype(str).to_numpy()
    query.obs["truth"] = [TO_SUITE[label] for label in bulk]
    columns = [list(adata.raw.var_names).index(gene) for gene in MARKERS]
    values = pd.DataFrame(np.asarray(adata.raw.X[:, columns].todense() if hasattr(adata.raw.X, "todense")
                                     else adata.raw.X[:, columns]), columns=list(MARKERS))
    return query, bulk, values.groupby(bulk).mean()


def measure(workdir: Path) -> dict:
    """Accuracy and macro-F1 per method and reference; the default's confidence figures; CD14 calls."""
    from screader_db import annotate
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.evaluation import Task, evaluate, standard_specs
    from screader_db.metrics import calibration_error, separation
    from screader_db.suite import LABEL, load_sources

    sources = load_sources()
    query, own, markers = _query()
    truth = query.obs["truth"].to_numpy()
    tasks = [Task(name=f"{ref} -> pbmc68k_reduced", reference=sources[ref], query=query, label_key=LABEL,
                  truth_key="truth", reference_key=ref) for ref in REFERENCES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tasks, standard_specs(methods=("marker",), singler=True), workdir=workdir)
        trust, wrong = [], []
        for ref in REFERENCES:
            atlas = build_atlas(sources[ref], workdir / ref, label_key=LABEL, settings=BuildSettings(layout="none"))
            table = annotate(query, atlas).table
            known = np.isin(truth, sorted(set(sources[ref].obs[LABEL].astype(str))))
            called = table["raw_label"].astype(str).to_numpy()
            right = called == truth
            groups = pd.DataFrame({"own": own, "called": called, "confidence": table["confidence"].to_numpy()})
            groups = groups[~right & (truth != "CD34+")].groupby(["own", "called"])["confidence"].agg(["size", "mean"])
            wrong += [{"task": f"{ref} -> pbmc68k_reduced", "own": own_label, "called": label, "cells": int(row["size"]),
                       "confidence": float(row["mean"])}
                      for (own_label, label), row in groups.sort_values("size", ascending=False).head(4).iterrows()]
            for cells, scored in (("every scored cell", known), ("without CD14+ Monocyte", known & (truth != "CD14 Monocytes"))):
                trust.append({"task": f"{ref} -> pbmc68k_reduced", "cells": cells, "count": int(scored.sum()),
                              "accuracy": float(right[scored].mean()),
                              **{f"{name} {kind}": metric(table[name].to_numpy()[scored], right[scored])
                                 for name in ("vote_confidence", "confidence")
                                 for kind, metric in (("AUROC", separation), ("ECE", calibration_error))}})
    rows = pd.DataFrame(result.rows)
    monocytes = truth == "CD14 Monocytes"
    called = {key: float((np.asarray(labels).astype(str)[monocytes] == "FCGR3A Monocytes").mean())
              for key, labels in result.predictions.items()}
    return {"rows": rows, "trust": pd.DataFrame(trust), "called": called, "markers": markers, "wrong": wrong}


def report(found: dict) -> str:
    rows, trust, called = found["rows"], found["trust"], found["called"]
    methods = list(dict.fromkeys(rows["method"]))
    lines = []
    for metric in ("accuracy", "macro_f1"):
        table = rows.pivot(index="task", columns="method", values=metric)[methods]
        lines += [f"{metric.replace('_', '-')}:", "", "| task | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]
        for task, values in table.iterrows():
            best = values.max()
            lines.append(f"| {task} | " + " | ".join(f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in values) + " |")
        lines.append("")
    lines += ["The default's confidence on the same cells (raw labels, no cell set aside):", "",
              "| task | cells | count | accuracy | vote AUROC | vote ECE | confidence AUROC | confidence ECE |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['cells']} | {r['count']:,} | {r['accuracy']:.3f} | {r['vote_confidence AUROC']:.3f} | "
              f"{r['vote_confidence ECE']:.3f} | {r['confidence AUROC']:.3f} | {r['confidence ECE']:.3f} |"
              for _, r in trust.iterrows()]
    lines += ["", "Share of the `CD14+ Monocyte` cells called `FCGR3A Monocytes`:", "", "| task | method | share |", "|---|---|---|"]
    lines += [f"| {task} | {method} | {share:.1%} |" for (task, method), share in called.items()]
    lines += ["", "The default's largest groups of wrong calls:", "", "| task | query's label | called | cells | mean confidence |",
              "|---|---|---|---|---|"]
    lines += [f"| {w['task']} | {w['own']} | {w['called']} | {w['cells']} | {w['confidence']:.3f} |" for w in found["wrong"]]
    markers = found["markers"]
    lines += ["", "Mean log-normalised expression per label of the query (its `.raw`):", "",
              "| label | " + " | ".join(markers.columns) + " |", "|---|" + "---|" * len(markers.columns)]
    lines += [f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for label, values in markers.iterrows()]
    return "\n".join(lines)


def main() -> None:
    measure_in_workdir(__doc__, measure, report)


if __name__ == "__main__":
    main()
