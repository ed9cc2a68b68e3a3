"""Accuracy of the text method beside its baselines, measured in one run on the same genes.

    python benchmarks/accuracy.py                      # Baron human -> Baron mouse, MiniLM
    python benchmarks/accuracy.py --model smollm2 --seeds 3 --json results/accuracy.json

Rows: the text method, the same pipeline with random gene vectors (one row per seed), plain
expression kNN and PCA-50 kNN.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from screader_db.evaluation import compare, default_specs, markdown_table
from screader_db.fetch import ensure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="baron_human", help="manifest name or .h5ad path")
    parser.add_argument("--query", default="baron_mouse", help="manifest name or .h5ad path")
    parser.add_argument("--label-key", default="cell_ontology_class")
    parser.add_argument("--truth-key", default="cell_ontology_class")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dim", type=int, default=384, help="dimension of the random twin")
    parser.add_argument("--seeds", type=int, default=3, help="random-twin seeds")
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    def resolve(value: str) -> str:
        return value if Path(value).exists() else str(ensure(value))

    rows = compare(resolve(args.reference), resolve(args.query), label_key=args.label_key, truth_key=args.truth_key,
                   specs=default_specs(args.model, args.dim, args.seeds), k=args.k)
    print(markdown_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
