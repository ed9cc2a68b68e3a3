"""Blood atlases of one lineage queried with the whole of another study's blood.

The suite's lineage check (``suite.py --lineage-only``) restricts Baron's pancreas to its four
endocrine types. Here pbmc3k and Kang control are each restricted to the lymphoid labels, the T
and NK labels, or the myeloid ones, built with the default settings, and queried with all of the
other study's cells, the Unassigned rules on. Per atlas: how many of the query's cells are of
labels outside the atlas's lineage, the share of them set aside (``Unassigned``), the share of the present
types' right calls set aside, and what the novelty check found.

    python benchmarks/blood_lineages.py --out results/blood_lineages.md
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from markdown_report import measure_in_workdir

LINEAGES = (("lymphoid", ("CD4 T", "CD8 T", "NK", "B", "T")), ("T and NK", ("CD4 T", "CD8 T", "NK", "T")),
            ("myeloid", ("CD14 Monocytes", "FCGR3A Monocytes", "Dendritic")))
DIRECTIONS = (("pbmc3k", "kang_ctrl"), ("kang_ctrl", "pbmc3k"))


def measure(workdir: Path) -> list[dict]:
    """One row per direction and lineage."""
    from screader_db import annotate
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.suite import LABEL, load_sources

    sources = load_sources()
    rows = []
    for ref, qry in DIRECTIONS:
        labels = sources[ref].obs[LABEL].astype(str)
        for name, keep in LINEAGES:
            kept = sorted(set(keep) & set(labels))
            atlas = build_atlas(sources[ref][labels.isin(kept)].copy(), workdir / f"{ref}-{re.sub('[^a-z]', '', name)}",
                                label_key=LABEL, settings=BuildSettings(layout="none", model="none"))
            query = sources[qry]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = annotate(query, atlas)
            truth = query.obs[LABEL].astype(str).to_numpy()
            # Kang's coarse T cells belong to a lineage with CD4 or CD8 T cells
            other = ~np.isin(truth, [*kept, *(["T"] if {"CD4 T", "CD8 T"} & set(kept) else [])])
            unassigned = result.table["label"].to_numpy() == "Unassigned"
            right = (result.table["raw_label"].to_numpy() == truth) & ~other
            novelty = result.info["novelty"]
            rows.append({"task": f"{ref} -> {qry}", "lineage": f"{name} ({', '.join(kept)})", "other": int(other.sum()),
                         "caught": float(unassigned[other].mean()), "lost": float((unassigned & right).sum() / max(right.sum(), 1)),
                         "clusters": f"{novelty.get('novel_clusters', 0)} of {novelty.get('clusters', 0)} "
                                     f"({novelty.get('far_clusters', 0)} far)",
                         "relative": "off" if novelty.get("cutoff") is None else f"cut-off {novelty['cutoff']}"})
    return rows


def report(rows: list[dict]) -> str:
    lines = ["| task | atlas labels | query cells of other lineages | of them Unassigned | present types' right calls set aside | "
             "novel clusters | relative check |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['lineage']} | {r['other']:,} | {r['caught']:.1%} | {r['lost']:.2%} | {r['clusters']} | "
              f"{r['relative']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    measure_in_workdir(__doc__, measure, report)


if __name__ == "__main__":
    main()
