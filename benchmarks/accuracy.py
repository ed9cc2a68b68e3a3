"""Accuracy of the project's methods beside baselines and CellTypist, measured in one run.

    python benchmarks/accuracy.py                                   # Baron human -> Baron mouse
    python benchmarks/accuracy.py --reference pbmc3k --label-key celltype --split 0.2 --seeds 3
    python benchmarks/accuracy.py --out results/accuracy            # also write md, json, png

The same code runs behind `screader-db evaluate`; this script only fixes the defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from screader_db.evaluation import run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="baron_human", help="manifest name or .h5ad path")
    parser.add_argument("--query", default=None, help="manifest name or .h5ad path (default baron_mouse unless --split)")
    parser.add_argument("--label-key", default="cell_ontology_class")
    parser.add_argument("--truth-key", default=None)
    parser.add_argument("--split", type=float, default=0.0, help="evaluate on stratified reference splits of this size")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--methods", default=None, help="comma-separated project methods (default: the default method)")
    parser.add_argument("--no-celltypist", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    query = args.query if args.query or args.split else "baron_mouse"
    _, text = run_evaluation(reference=args.reference, query=query, label_key=args.label_key, truth_key=args.truth_key,
                          split=args.split, seeds=args.seeds, model=args.model, methods=args.methods,
                          celltypist=not args.no_celltypist, out=args.out)
    print(text)


if __name__ == "__main__":
    main()
