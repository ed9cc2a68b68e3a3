"""Choose the default method and annotation settings on reference data alone.

Every candidate is scored on reference-only tasks: stratified 5-fold splits of Baron human and
of pbmc3k, and leave-one-donor-out on Baron human (4 donors). Each held-out part is annotated
as one query batch. The criterion is the mean of accuracy and macro-F1 over those tasks. The
cross-data-set transfers (Baron human -> mouse, pbmc3k -> Kang) are printed beside as tests,
never used to choose.

    python benchmarks/select_defaults.py --out results/selection.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from screader_db.evaluation import MethodSpec, Task, evaluate
from screader_db.fetch import ensure
from screader_db.inputs import read_h5ad

KANG_NAMES = {"CD14+ Monocytes": "CD14 Monocytes", "CD4+ T cells": "CD4 T", "CD8+ T cells": "CD8 T", "B": "B",
              "CD16+ Monocytes": "FCGR3A Monocytes", "NK cells": "NK", "DC": "Dendritic"}


def folds(adata: Any, label_key: str, name: str, n_folds: int = 5, seed: int = 0) -> list[Task]:
    from sklearn.model_selection import StratifiedKFold

    labels = adata.obs[label_key].astype(str).to_numpy()
    counts = {label: int((labels == label).sum()) for label in set(labels)}
    ok = np.array([counts[label] >= n_folds for label in labels])
    positions = np.flatnonzero(ok)
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    tasks = []
    for i, (train, test) in enumerate(splitter.split(positions, labels[positions])):
        keep = np.sort(np.concatenate([positions[train], np.flatnonzero(~ok)]))
        tasks.append(Task(f"{name} fold {i}", adata[keep].copy(), adata[np.sort(positions[test])].copy(), label_key,
                          label_key, seed))
    return tasks


def donors(adata: Any, label_key: str, donor_key: str, name: str) -> list[Task]:
    values = adata.obs[donor_key].astype(str).to_numpy()
    return [Task(f"{name} without {d}", adata[values != d].copy(), adata[values == d].copy(), label_key, label_key)
            for d in sorted(set(values))]


def candidates() -> list[MethodSpec]:
    """Every setting compared; the default is the one with the best criterion."""
    none = "none"
    flat = (("propagation", 0.0),)
    return [
        MethodSpec("expression, power 1", model=none, method="expression", options=(("power", 1.0), *flat)),
        MethodSpec("expression, power 4", model=none, method="expression", options=(("power", 4.0), *flat)),
        MethodSpec("expression, power 4, balanced centre", model=none, method="expression",
                   options=(("power", 4.0), ("center", "balanced"), *flat)),
        MethodSpec("expression, power 4, propagation 0.5", model=none, method="expression",
                   options=(("power", 4.0), ("propagation", 0.5))),
        MethodSpec("pca, power 4", model=none, method="pca", options=(("power", 4.0), *flat)),
        MethodSpec("marker, eta2 weights", model=none, method="marker",
                   options=(("power", 4.0), ("gene_weights", "eta2"), *flat)),
        MethodSpec("marker, eta2 weights, propagation 0.5", model=none, method="marker",
                   options=(("power", 4.0), ("gene_weights", "eta2"), ("propagation", 0.5))),
        MethodSpec("marker, unweighted", model=none, method="marker",
                   options=(("power", 4.0), ("gene_weights", "none"), *flat)),
        MethodSpec("marker+hvg, eta2 weights", model=none, method="marker",
                   options=(("power", 4.0), ("marker_genes", "markers+hvg"), ("gene_weights", "eta2"), *flat)),
        MethodSpec("hvg + prototypes, unweighted", model=none, method="marker",
                   options=(("power", 4.0), ("marker_genes", "hvg"), ("gene_weights", "none"), *flat)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--transfers", action="store_true", help="also run the transfer tests")
    args = parser.parse_args()
    baron = read_h5ad(ensure("baron_human"))
    pbmc = read_h5ad(ensure("pbmc3k"))
    selection = [*folds(baron, "cell_ontology_class", "baron CV"), *donors(baron, "cell_ontology_class", "donor", "baron"),
                 *folds(pbmc, "celltype", "pbmc3k CV")]
    specs = candidates()
    result = evaluate(selection, specs)
    frame = result.frame()
    frame["group"] = frame["task"].str.extract(r"^(baron CV|baron without|pbmc3k CV)")[0]
    table = frame.groupby(["method", "group"], sort=False)[["accuracy", "macro_f1"]].mean().unstack("group")
    table["criterion"] = frame.groupby("method", sort=False)[["accuracy", "macro_f1"]].mean().mean(axis=1)
    print(table.round(3).to_string())
    report: dict[str, Any] = {"selection": frame.drop(columns=["per_class_f1", "labels"]).to_dict("records")}
    if args.transfers:
        mouse = read_h5ad(ensure("baron_mouse"))
        kang = read_h5ad(ensure("kang"))
        kang.obs["celltype"] = kang.obs["cell_type"].astype(str).map(KANG_NAMES).fillna("(not in pbmc3k)")
        transfers = [Task("baron human -> mouse", baron, mouse, "cell_ontology_class", "cell_ontology_class"),
                     Task("pbmc3k -> kang ctrl", pbmc, kang[kang.obs["stim"] == "CTRL"].copy(), "celltype", "celltype"),
                     Task("pbmc3k -> kang stim", pbmc, kang[kang.obs["stim"] == "STIM"].copy(), "celltype", "celltype")]
        tested = evaluate(transfers, specs).frame()
        print(tested.pivot_table(index="method", columns="task", values=["accuracy", "macro_f1"], sort=False).round(3)
              .to_string())
        report["transfers"] = tested.drop(columns=["per_class_f1", "labels"]).to_dict("records")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
