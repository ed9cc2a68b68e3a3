"""Every query cluster of the novelty check across the transfer suite, and what the far rule does.

Cases: every suite task with all types present, each reference label hidden in turn, half of them
hidden at once (the suite's draws), the endocrine-only atlases queried with the whole tissue, and
queries of one cell type only against a whole-tissue atlas. The check is forced on at each atlas's
calibrated cut-off, so atlases whose relative check is off still give their clusters. Per cluster:
its size, its best centred correlation and relative score, its best profile correlation and the
query's typical one, the cells of hidden or other-lineage types in it, the present types' right
raw calls in it, whether the far-from-every-label rule (``screader_db.novelty.far_from_labels``)
flags it, and whether the check calls it novel (by either rule, after sparing). The summary counts,
per kind of case, what the far rule alone flags: clusters, the hidden cells in them and the right
calls they would cost.

    python benchmarks/novelty_clusters.py --out results/novelty_clusters
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import annotate, suite
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.errors import ScreaderWarning
from screader_db.novelty import MIN_CLUSTER, far_from_labels, weighted_median

ONE_TYPE = (("pbmc3k", "kang_ctrl", "CD4 T"), ("pbmc3k", "kang_ctrl", "CD14 Monocytes"),
            ("baron_human", "baron_mouse", "type B pancreatic cell"), ("kang_ctrl", "pbmc3k", "CD4 T"),
            ("baron_mouse", "baron_human", "pancreatic A cell"))


def cases(sources: dict[str, Any]) -> list[tuple[str, str, str, Any, Any, list[str], str | None]]:
    """(kind, name, atlas key, reference, query, hidden labels, input scale) of every case."""
    found: list[tuple[str, str, str, Any, Any, list[str], str | None]] = []
    for task in suite.suite_tasks(sources):
        found.append(("present", task.name, task.shared_reference, task.reference, task.query, [], task.input_scale))
    for kind, choose in (("hidden", suite.each_label), ("half", suite.half_draw(0))):
        for _, name, kept, query, group in suite.hidden_tasks(sources, suite.DIRECTIONS, 10, choose):
            found.append((kind, name, name, kept, query, group, None))
    for _, name, kept, query, group in suite.lineage_tasks(sources, suite.LINEAGE_DIRECTIONS):
        found.append(("lineage", name, name, kept, query, group, None))
    for ref, qry, label in ONE_TYPE:
        query = sources[qry]
        only = query[query.obs[suite.LABEL].astype(str) == label].copy()
        found.append(("one type", f"{ref} -> {qry}: {label} only", f"{ref} -> {qry} seed 0", sources[ref], only, [], None))
    return found


def clusters_of(result: Any, truth: np.ndarray, hidden: list[str]) -> pd.DataFrame:
    """One row per usable query cluster of an annotation's novelty check."""
    novelty = result.info["novelty"]
    cluster = result.table["novelty_cluster"].astype(int).to_numpy()
    right = (result.table["raw_label"].astype(str).to_numpy() == truth) & ~np.isin(truth, hidden)
    is_hidden = np.isin(truth, hidden)
    sizes = np.asarray(novelty["cluster_sizes"])
    novel = np.zeros(len(sizes), dtype=bool)
    novel[np.unique(cluster[result.table["novel"].to_numpy(dtype=bool)])] = True
    usable = sizes >= MIN_CLUSTER
    profile = np.asarray(novelty["cluster_profile_correlation"])
    rows = pd.DataFrame({"cluster": np.arange(len(sizes)), "size": sizes, "profile": profile,
                         "typical": weighted_median(profile[usable], sizes[usable]),
                         "far": far_from_labels(profile, sizes, usable), "centred": novelty["cluster_best_correlation"],
                         "score": novelty["cluster_score"], "best": novelty["cluster_best_label"],
                         "hidden_cells": np.bincount(cluster[is_hidden], minlength=len(sizes)),
                         "right_calls": np.bincount(cluster[right], minlength=len(sizes)),
                         "novel": novel})
    return rows[usable]


def summary(frame: pd.DataFrame) -> str:
    """Per kind: clusters, clusters the far rule flags, hidden cells and right calls in them, worst case."""
    lines = ["| kind | cases | clusters | far clusters | hidden or other-lineage cells in them | of all such cells "
             "| right calls in them | worst case's share of its right calls |", "|---|---|---|---|---|---|---|---|"]
    for kind, part in frame.groupby("kind", sort=False):
        far = part[part.far]
        per_case = part.groupby("case").agg(right=("right_calls", "sum"))
        lost = far.groupby("case")["right_calls"].sum().reindex(per_case.index).fillna(0) / per_case.right.clip(lower=1)
        hidden = part.hidden_cells.sum()
        lines.append(f"| {kind} | {part.case.nunique()} | {len(part)} | {len(far)} | {int(far.hidden_cells.sum()):,} | "
                     f"{far.hidden_cells.sum() / max(hidden, 1):.1%} | {int(far.right_calls.sum()):,} | {lost.max():.2%} |")
    return "\n".join(lines)


def main() -> None:
    from screader_db.novelty import FAR_MATCH, FAR_SHARE, FAR_TYPICAL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for clusters.parquet and summary.md")
    args = parser.parse_args()
    started = time.perf_counter()
    sources = suite.load_sources()
    built: dict[str, Any] = {}
    frames = []
    with tempfile.TemporaryDirectory() as work:
        for kind, name, key, reference, query, hidden, scale in cases(sources):
            if key not in built:
                built[key] = build_atlas(reference, Path(work) / f"atlas-{len(built)}", label_key=suite.LABEL,
                                         dataset_name="reference",
                                         settings=BuildSettings(layout="none", n_genes=3000, seed=0))
            atlas = built[key]
            cutoff = float(atlas.profiles()[1].get("cutoff", -3.0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ScreaderWarning)
                result = annotate(query, atlas, novelty_cutoff=cutoff, input_scale=scale)
            if "novelty_cluster" not in result.table:
                print(f"{kind:9s} {name}: not clustered ({result.info['novelty'].get('reason', 'too few cells')})")
                continue
            truth = query.obs[suite.LABEL].astype(str).to_numpy()
            frames.append(clusters_of(result, truth, hidden).assign(kind=kind, case=name))
            print(f"{time.perf_counter() - started:6.0f} s  {kind:9s} {name}", flush=True)
    frame = pd.concat(frames, ignore_index=True)
    text = (f"{summary(frame)}\n\nFar from every label: profile correlation below "
            f"{FAR_MATCH} and below {FAR_SHARE} of the typical cluster's, where that reaches {FAR_TYPICAL}. "
            f"{time.perf_counter() - started:.0f} s in all.\n")
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(args.out / "clusters.parquet")
        (args.out / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
