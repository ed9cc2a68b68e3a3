"""The transfer suite's directions scored at the broad Cell Ontology level.

For each direction: the default method's atlas and the expression kNN baseline's atlas are built
on the reference's own labels (as the suite builds them) and queried twice: voting at the broad
level (``level="broad"``), and voting at the label level with the labels then mapped to their
broad class. Truth labels are mapped to broad classes the same way (Cell Ontology match, then
nearest listed class). Scored on the broad classes the reference has.

    python benchmarks/broad_levels.py --out results/broad
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from screader_db import annotate
from screader_db.builders.atlas import DEFAULT_METHOD, BuildSettings, build_atlas
from screader_db.errors import ScreaderWarning
from screader_db.evaluation import FORCED, PROTOCOL
from screader_db.metrics import agreement
from screader_db.ontology import load_ontology
from screader_db.suite import LABEL, load_sources, suite_tasks

METHODS = ((f"{DEFAULT_METHOD} (default)", DEFAULT_METHOD, ()), ("expression kNN", "expression", PROTOCOL))


def main(out: Path) -> None:
    start = time.perf_counter()
    cl = load_ontology()

    def broad(labels: np.ndarray) -> np.ndarray:
        names = {}
        for label in set(labels):
            term = cl.match(label).id
            names[label] = cl.name(cl.broad(term)) or cl.name(term) or label
        return np.array([names[label] for label in labels], dtype=object)

    sources = load_sources()
    tasks = suite_tasks(sources, stress=False)
    rows, built = [], {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", ScreaderWarning)
        for task in tasks:
            truth = task.query.obs[LABEL].astype(str).to_numpy()
            reference = task.reference.obs[LABEL].astype(str).to_numpy()
            known_fine, known_broad = sorted(set(reference)), sorted(set(broad(reference)))
            for row, method, options in METHODS:
                key = (task.shared_reference, method)
                if key not in built:
                    t0 = time.perf_counter()
                    settings = BuildSettings(model="minilm", method=method, n_genes=3000, layout="none", seed=task.seed)
                    built[key] = build_atlas(task.reference, Path(tmp) / f"{len(built)}", label_key=LABEL,
                                             dataset_name="reference", settings=settings)
                    print(f"built {key} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                query_options = {**FORCED, **dict(options), "k": 15, "input_scale": task.input_scale}
                fine = annotate(task.query, built[key], **query_options).labels.astype(str).to_numpy()
                at_broad = annotate(task.query, built[key], level="broad", **query_options).labels.astype(str).to_numpy()
                rows.append({"task": task.name, "method": row,
                             "fine accuracy": agreement(fine, truth, known=known_fine).accuracy,
                             "broad vote accuracy": agreement(at_broad, broad(truth), known=known_broad).accuracy,
                             "fine mapped to broad accuracy": agreement(broad(fine), broad(truth), known=known_broad).accuracy,
                             "broad vote macro-F1": agreement(at_broad, broad(truth), known=known_broad).macro_f1,
                             "scored cells (broad)": agreement(at_broad, broad(truth), known=known_broad).n_scored})
                print(rows[-1], file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "broad_suite.csv", index=False)
    seconds = time.perf_counter() - start
    text = frame.round(3).to_string()
    means = frame.groupby("method", sort=False)[["fine accuracy", "broad vote accuracy", "fine mapped to broad accuracy",
                                                 "broad vote macro-F1"]].mean()
    (out / "broad_suite.txt").write_text(f"{frame.to_string()}\n\n{means.to_string()}\n\n{seconds:.0f} s in all\n")
    print(text)
    print(means)
    print(f"{seconds:.0f} s in all")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for broad_suite.csv and broad_suite.txt")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.out)
