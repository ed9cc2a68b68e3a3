"""Where a partial gene panel stops carrying labels: accuracy against the number of shared genes.

Queries of two suite tasks (pbmc3k -> Kang control, Baron human -> Baron mouse) are cut to N
genes drawn at random from the reference's 3,000 most variable genes (3 seeds each) and
annotated through the panel index, beside expression kNN on the same genes. The floor of
``screader_db.query_input.MIN_PANEL_GENES`` is the smallest N at which every task's accuracy is
clearly above labelling every cell with the reference's most common label.

    python benchmarks/panel_floor.py --out results/panel_floor.md
"""

from __future__ import annotations

import time

from markdown_report import arguments, publish

from screader_db import query_input
from screader_db.evaluation import MethodSpec, Task, evaluate
from screader_db.suite import LABEL, _panel, _variable_symbols, load_sources

SIZES = (10, 20, 30, 50, 75, 100, 200)
BASES = (("pbmc3k", "kang_ctrl"), ("baron_human", "baron_mouse"))


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    query_input.MIN_PANEL_GENES = 1  # measure below today's floor too: the floor is what this chooses
    sources = load_sources()
    tasks, chance = [], {}
    for ref, qry in BASES:
        reference, query = sources[ref], sources[qry]
        variable = _variable_symbols(reference)
        known = set(reference.obs[LABEL])
        truth = query.obs[LABEL].astype(str)
        scored = truth[truth.isin(known)]
        common = reference.obs[LABEL].astype(str).value_counts().index[0]
        chance[f"{ref} -> {qry}"] = float((scored == common).mean())
        for n in sizes:
            for seed in range(args.seeds):
                tasks.append(Task(f"{ref} -> {qry} | {n} | {seed}", reference, _panel(query, n, seed, variable), LABEL,
                                  LABEL, 0, reference_key=ref))
    specs = [MethodSpec("marker (default)", model="none", method="marker"),
             MethodSpec("expression kNN", model="none", method="expression", options=(("power", 1.0),))]
    start = time.perf_counter()
    frame = evaluate(tasks, specs).frame()
    parts = frame["task"].str.split(" | ", regex=False, expand=True)
    frame["base"], frame["genes"] = parts[0], parts[1].astype(int)
    table = frame.groupby(["base", "genes", "row"])["accuracy"].agg(["mean", "min"]).unstack("row")
    lines = ["| task | genes | marker accuracy (mean, worst seed) | expression kNN (mean, worst) | most common label |",
             "|---|---|---|---|---|"]
    for (base, genes), row in table.iterrows():
        lines.append(f"| {base} | {genes} | {row[('mean', 'marker (default)')]:.3f}, {row[('min', 'marker (default)')]:.3f} | "
                     f"{row[('mean', 'expression kNN')]:.3f}, {row[('min', 'expression kNN')]:.3f} | {chance[base]:.3f} |")
    publish("\n".join(lines), start, args.out, note=f", {args.seeds} seeds per size")


if __name__ == "__main__":
    main()
