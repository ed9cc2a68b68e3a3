"""Queries of several batches: one centre for the whole query, or each batch centred on its own.

Two data sets of the suite (screader_db.suite) are queried together, as one file, against the
atlas of a third: Kang's control and interferon-stimulated cells against pbmc3k, pbmc3k with one
Kang condition against the other. Each combination is annotated pooled (one balanced mean for
every cell) and with ``batch_key`` naming each cell's data set (each centred on its own, as if
queried alone); accuracy of the raw vote over the labels the atlas has, in all and per batch, for
three seeded draws of the Kang cells.

    python benchmarks/batches.py --out results/batches.md
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from markdown_report import measure_in_workdir

CASES = (("pbmc3k", ("kang_ctrl", "kang_stim")), ("kang_ctrl", ("pbmc3k", "kang_stim")),
         ("kang_stim", ("pbmc3k", "kang_ctrl")))
SEEDS = (0, 1, 2)
BATCH = "batch"


def measure(workdir: Path) -> list[tuple[int, str, str, list[float], list[float]]]:
    """(seed, atlas, batches, pooled accuracies, batched accuracies) per case and seed; accuracies in all,
    then per batch."""
    import anndata as ad

    from screader_db import annotate
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.suite import LABEL, load_sources

    rows = []
    for seed in SEEDS:
        sources = load_sources(seed=seed)
        for reference, parts in CASES:
            atlas = build_atlas(sources[reference].copy(), workdir / f"{reference}-{seed}", label_key=LABEL,
                                settings=BuildSettings(layout="none", model="none"))
            query = ad.concat([sources[p] for p in parts], label=BATCH, keys=list(parts), index_unique="-")
            truth = query.obs[LABEL].astype(str).to_numpy()
            known = np.isin(truth, sources[reference].obs[LABEL].astype(str).unique())
            batch = query.obs[BATCH].to_numpy()
            found = []
            for key in (None, BATCH):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    right = annotate(query, atlas, batch_key=key).table["raw_label"].to_numpy() == truth
                found.append([float(right[known].mean())] + [float(right[known & (batch == p)].mean()) for p in parts])
            rows.append((seed, reference, " + ".join(parts), found[0], found[1]))
    return rows


def report(rows: list[tuple[int, str, str, list[float], list[float]]]) -> str:
    lines = ["| seed | atlas | query batches | pooled: all | pooled: each batch | by batch: all | by batch: each batch | change |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, reference, parts, pooled, batched in rows:
        lines.append(f"| {seed} | {reference} | {parts} | {pooled[0]:.3f} | {' / '.join(f'{v:.3f}' for v in pooled[1:])} | "
                     f"{batched[0]:.3f} | {' / '.join(f'{v:.3f}' for v in batched[1:])} | {batched[0] - pooled[0]:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    measure_in_workdir(__doc__, measure, report)


if __name__ == "__main__":
    main()
