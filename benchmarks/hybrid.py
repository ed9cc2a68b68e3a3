"""The learned methods (hybrid over a frozen decoder, the light adaptor) beside their random twins.

    python benchmarks/hybrid.py --methods adaptor                       # Baron human -> Baron mouse, 3 random seeds
    python benchmarks/hybrid.py --methods hybrid --reference-cells 300 --query-cells 500 --n-top 32 --epochs 2
    python benchmarks/hybrid.py --methods adaptor --split-by donor      # leave-one-donor-out splits of the reference

Every row is measured in the same run on the same cells. ``--reference-cells`` / ``--query-cells``
take stratified subsamples (every label kept, small labels whole) so the hybrid fits a CPU; only
query cells whose label the reference has are kept. ``--split-by`` tunes on the reference alone
(hold out each value of an obs column in turn), never on the query's labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _subsample(adata: Any, key: str, n: int, seed: int) -> Any:
    from screader_db.reference_stats import stratified_sample

    if not n or n >= adata.n_obs:
        return adata
    codes = adata.obs[key].astype(str).astype("category").cat.codes.to_numpy()
    return adata[stratified_sample(codes, n, seed=seed)].copy()


def main() -> None:
    from screader_db.evaluation import MethodSpec, Task, evaluate
    from screader_db.fetch import resolve_dataset
    from screader_db.inputs import read_h5ad

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="baron_human")
    parser.add_argument("--query", default="baron_mouse")
    parser.add_argument("--label-key", default="cell_ontology_class")
    parser.add_argument("--methods", default="adaptor", help="comma-separated: adaptor, hybrid")
    parser.add_argument("--model", default="minilm", help="gene text model (random twins get its width)")
    parser.add_argument("--random-seeds", type=int, default=3, help="random-vector twins per method (0: none)")
    parser.add_argument("--baselines", default="marker,genept", help="comma-separated non-learned methods beside them")
    parser.add_argument("--decoder", default="smollm2")
    parser.add_argument("--n-top", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-cells", type=int, default=None)
    parser.add_argument("--token-genes", default="hvg")
    parser.add_argument("--loss", default=None)
    parser.add_argument("--reference-cells", type=int, default=0, help="stratified subsample of the reference (0: all)")
    parser.add_argument("--query-cells", type=int, default=0, help="stratified subsample of the scored query cells (0: all)")
    parser.add_argument("--split-by", default=None, help="obs column: leave each value out of the reference in turn")
    parser.add_argument("--folds", type=int, default=0, help="with --split-by: only the first N held-out values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    key = args.label_key
    reference = read_h5ad(resolve_dataset(args.reference))
    if args.split_by:
        values = sorted(reference.obs[args.split_by].astype(str).unique())
        values = values[: args.folds] if args.folds else values
        tasks = []
        for value in values:
            held = (reference.obs[args.split_by].astype(str) == value).to_numpy()
            tasks.append(Task(f"{args.reference} without {value}",
                              _subsample(reference[~held].copy(), key, args.reference_cells, args.seed),
                              _subsample(reference[held].copy(), key, args.query_cells, args.seed), key, key, args.seed))
        title = f"{args.reference}: leave one {args.split_by} out ({', '.join(values)})"
    else:
        query = read_h5ad(resolve_dataset(args.query))
        reference = _subsample(reference, key, args.reference_cells, args.seed)
        shared = query[query.obs[key].astype(str).isin(set(reference.obs[key].astype(str))).to_numpy()].copy()
        query = _subsample(shared, key, args.query_cells, args.seed)
        tasks = [Task(f"{args.reference} -> {args.query}", reference, query, key, key, args.seed)]
        title = f"{tasks[0].name}: {reference.n_obs} reference cells, {query.n_obs} query cells"
    learned = {"decoder": args.decoder, "n_top": args.n_top, "epochs": args.epochs, "train_cells": args.train_cells,
               "token_genes": args.token_genes, "loss": args.loss}
    options = tuple((k, v) for k, v in learned.items() if v is not None)
    width = {"minilm": 384, "smollm2": 576}.get(args.model, 384)
    specs = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        specs.append(MethodSpec(f"{method} ({args.model})", model=args.model, method=method, options=options))
        specs += [MethodSpec(f"{method} (random:{s})", model=f"random:{width}:{s}", method=method, options=options,
                             group=f"{method} (random vectors)") for s in range(args.random_seeds)]
    specs += [MethodSpec(f"{m} ({args.model})", model=args.model, method=m) for m in args.baselines.split(",") if m]
    result = evaluate(tasks, specs)
    print(result.markdown(title))
    for row in result.rows:
        trained = f", training {row['train_seconds']:.0f} s" if row.get("train_seconds") else ""
        print(f"{row['task']} | {row['method']}: accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}, "
              f"{row['seconds']:.0f} s in all{trained}")
    if args.out is not None:
        result.write(args.out, title=title)


if __name__ == "__main__":
    main()
