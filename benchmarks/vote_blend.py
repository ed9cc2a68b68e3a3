"""The default's vote beside the ``expression`` method's over every transfer-suite task: the two
votes blended into one label, and the expression vote as a signal of which calls are wrong.

    python benchmarks/suite.py --out results/suite          # the baselines, once
    python benchmarks/vote_blend.py --suite results/suite/evaluation.json --out results/vote_blend.json

For each suite task, atlases of ``marker`` (the default) and ``expression`` are built on the
reference and the query annotated with each (Unassigned rules off, as the suite's rows).

Blends: each cell's label is the argmax of ``w · marker scores + (1 − w) · expression scores``
over the atlas labels, for each weight ``w``. Printed per weight: mean and worst accuracy, mean
macro-F1 and the tasks more than 0.02 below the best baseline (expression kNN, PCA-50 kNN,
CellTypist, SingleR) of the suite run given; also the same with ``w`` = 1 on queries answered
through a panel index. The ``w`` = 1 row reproduces the suite's default row, which shows the two
runs agree.

Signals, per task, on the default's labels: how often the two methods agree and the accuracy
where they do and do not; AUROC of right against wrong calls for the shipped ``confidence``, for
the expression vote's share of the default's label, and for their plain sum (nothing fitted).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.0)
BASELINES = ("expression kNN", "PCA-50 kNN", "CellTypist", "SingleR")


def suite_votes() -> list[dict[str, Any]]:
    """Per suite task and weight, the blend's accuracy and macro-F1; per task, the signals (``w`` None)."""
    from sklearn.metrics import roc_auc_score

    from screader_db.annotation import annotate
    from screader_db.errors import ScreaderWarning
    from screader_db.evaluation import FORCED, MethodSpec, _atlas_for
    from screader_db.metrics import agreement
    from screader_db.progress import SILENT
    from screader_db.suite import load_sources, suite_tasks

    specs = (MethodSpec("marker (default)", model="none", method="marker"),
             MethodSpec("expression, power-4 vote", model="none", method="expression"))
    rows: list[dict[str, Any]] = []
    built: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in suite_tasks(load_sources()):
            truth = task.query.obs[task.truth_key].astype(str).to_numpy()
            known = sorted(set(task.reference.obs[task.label_key].astype(str)))
            results = []
            for spec in specs:
                atlas, _ = _atlas_for(task, spec, n_genes=3000, workdir=Path(tmp), built=built, reporter=SILENT)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ScreaderWarning)
                    results.append(annotate(task.query, atlas, input_scale=task.input_scale, k=15, **FORCED))
            labels = sorted(set(results[0].score_labels) | set(results[1].score_labels))
            marker, expression = (r.label_scores.reindex(columns=labels, fill_value=0).to_numpy() for r in results)
            panel = bool(results[0].info.get("panel", {}).get("used", False))
            for w in WEIGHTS:
                predicted = np.asarray(labels)[np.argmax(w * marker + (1 - w) * expression, axis=1)]
                agree = agreement(predicted, truth, known=known)
                rows.append({"task": task.name, "w": w, "panel": panel, "accuracy": agree.accuracy,
                             "macro_f1": agree.macro_f1})
            scored = np.isin(truth, known)
            called = results[0].table["raw_label"].astype(str).to_numpy()
            right = (called == truth)[scored]
            same = (called == results[1].table["raw_label"].astype(str).to_numpy())[scored]
            share = expression[np.arange(len(called)), np.searchsorted(labels, called)][scored]
            confidence = results[0].table["confidence"].to_numpy(dtype=float)[scored]
            rows.append({"task": task.name, "w": None, "accuracy": float(right.mean()), "agree": float(same.mean()),
                         "accuracy_agreeing": float(right[same].mean()),
                         "accuracy_disagreeing": float(right[~same].mean()) if (~same).any() else None,
                         **{f"auroc_{name}": float(roc_auc_score(right, values)) if 0 < right.mean() < 1 else None
                            for name, values in (("confidence", confidence), ("share", share),
                                                 ("sum", confidence + share))}})
    return rows


def summary(rows: list[dict[str, Any]], suite: dict[str, Any]) -> str:
    """The Markdown tables: the weights against the suite run's baselines, then the signals."""
    best: dict[str, float] = collections.defaultdict(float)
    for run in suite["runs"]:
        if run["row"] in BASELINES:
            best[run["task"]] = max(best[run["task"]], run["accuracy"])
    by_weight: dict[float, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for row in rows:
        if row["w"] is not None:
            by_weight[row["w"]][row["task"]] = row
    tasks = list(by_weight[1.0])
    picks = [(f"w = {w}", {t: by_weight[w][t] for t in tasks}) for w in WEIGHTS]
    picks += [(f"w = {w}, 1 on panel-index queries", {t: by_weight[1.0 if by_weight[w][t]["panel"] else w][t]
                                                      for t in tasks}) for w in (0.5, 0.4, 0.3)]
    lines = ["| blend | mean accuracy | worst accuracy | mean macro-F1 | tasks > 0.02 below the best baseline |",
             "|---|---|---|---|---|"]
    for name, chosen in picks:
        accuracy = [chosen[t]["accuracy"] for t in tasks]
        below = [f"{t} ({chosen[t]['accuracy']:.3f} vs {best[t]:.3f})" for t in tasks
                 if chosen[t]["accuracy"] < best[t] - 0.02]
        lines.append(f"| {name} | {np.mean(accuracy):.3f} | {min(accuracy):.3f} | "
                     f"{np.mean([chosen[t]['macro_f1'] for t in tasks]):.3f} | {len(below)}: {'; '.join(below)} |")
    signals = [row for row in rows if row["w"] is None]
    lines += ["", "| task | accuracy | methods agree | accuracy where they agree | where they do not | AUROC confidence | "
                  "AUROC expression share | AUROC sum |", "|---|---|---|---|---|---|---|---|"]
    shown = ("accuracy", "agree", "accuracy_agreeing", "accuracy_disagreeing", "auroc_confidence", "auroc_share", "auroc_sum")
    for row in signals:
        lines.append(f"| {row['task']} | " + " | ".join("" if row[c] is None else f"{row[c]:.3f}" for c in shown) + " |")
    for name in ("confidence", "share", "sum"):
        values = [row[f"auroc_{name}"] for row in signals if row[f"auroc_{name}"] is not None]
        lines.append(f"\nAUROC {name}: median {np.median(values):.3f}, at least 0.85 on {sum(v >= 0.85 for v in values)} "
                     f"of {len(values)} tasks")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True, help="evaluation.json of a suite run (the baselines)")
    parser.add_argument("--out", type=Path, help="write every row as JSON")
    args = parser.parse_args()
    rows = suite_votes()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(summary(rows, json.loads(args.suite.read_text())))


if __name__ == "__main__":
    main()
