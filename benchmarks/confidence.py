"""Confidence on the transfer suite: does it separate right from wrong labels, and is it calibrated?

Every suite task (screader_db.suite) is annotated through the product path with the default
method (its second opinion and marker evidence included). Per task: accuracy of the raw vote,
then AUROC (right vs wrong) and expected calibration error of the vote's own confidence
(calibrated on a split of the reference) and of the shipped ``confidence``
(screader_db.confidence). The combination's constants are refitted here, in each of its forms
(vote confidence and query agreement, with or without the second opinion and the marker
evidence): on every task (the values to ship) and, for each task, on the tasks of the other
families only (a family = one reference -> query pair with its stress variants), so the held-out
figures are those of constants that never saw the task.

    python benchmarks/confidence.py --out results/confidence.md
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_report import arguments, publish

OPTIONAL = ("second_opinion", "evidence", "cluster")  # the inputs a call may lack (screader_db.confidence.FORMS)
TWO = ("agreement",)
ALL = ("agreement", *OPTIONAL)


def collect(workdir: Path) -> pd.DataFrame:
    """One row per scored query cell of every suite task: correct or not and the signals."""
    from screader_db import annotate, confidence
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.suite import LABEL, load_sources, suite_tasks
    from screader_db.vote import query_graph

    sources = load_sources()
    atlases = {}
    frames = []
    for task in suite_tasks(sources):
        if task.reference_key not in atlases:
            root = workdir / re.sub(r"[^A-Za-z0-9]+", "_", task.reference_key)
            atlases[task.reference_key] = build_atlas(task.reference.copy(), root, label_key=LABEL,
                                                      settings=BuildSettings(layout="none", model="none"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = annotate(task.query, atlases[task.reference_key], input_scale=task.input_scale)
        table = result.table
        codes = pd.Categorical(table["raw_label"]).codes
        truth = task.query.obs[LABEL].astype(str).to_numpy()
        frames.append(pd.DataFrame({
            "task": task.name, "family": task.name.split(":")[0], "known": np.isin(truth, result.atlas_labels),
            "correct": table["raw_label"].to_numpy() == truth, "vote_confidence": table["vote_confidence"].to_numpy(),
            "agreement": confidence.agreement(query_graph(result.embeddings), codes),
            "second_opinion": table["second_opinion"].to_numpy(), "evidence": table["marker_evidence"].to_numpy(),
            "cluster": table["cluster_agreement"].to_numpy(),
            "classifier": table["classifier"].to_numpy() if "classifier" in table else np.nan,
            "confidence": table["confidence"].to_numpy()}))
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["known"]].reset_index(drop=True)


def _design(frame: pd.DataFrame, inputs: tuple[str, ...] = TWO) -> np.ndarray:
    """The fit's inputs as the shipped combination takes them: logits of the vote confidence and the second opinion."""
    from screader_db.confidence import logit

    columns = [logit(frame["vote_confidence"].to_numpy())]
    for name in inputs:
        values = frame[name].to_numpy(np.float64)
        columns.append(logit(values) if name == "second_opinion" else values)
    return np.column_stack(columns)


def fit(frame: pd.DataFrame, inputs: tuple[str, ...] = TWO) -> tuple[float, ...]:
    """Logistic fit of correct on (logit vote confidence, *inputs), every task weighted equally; the
    weights, then the intercept."""
    from sklearn.linear_model import LogisticRegression

    sizes = frame.groupby("task")["correct"].transform("size").to_numpy()
    weight = len(frame) / (frame["task"].nunique() * sizes)  # every task counts the same, mean weight 1
    model = LogisticRegression(max_iter=5000).fit(_design(frame, inputs), frame["correct"], sample_weight=weight)
    return (*(float(c) for c in model.coef_[0]), float(model.intercept_[0]))


def predict(frame: pd.DataFrame, constants: tuple[float, ...], inputs: tuple[str, ...] = TWO) -> np.ndarray:
    z = _design(frame, inputs) @ np.asarray(constants[:-1]) + constants[-1]
    return 1.0 / (1.0 + np.exp(-z))


def report(frame: pd.DataFrame) -> str:
    from itertools import combinations

    from screader_db.confidence import combine
    from screader_db.metrics import calibration_error, separation

    two = combine(frame["vote_confidence"].to_numpy(), frame["agreement"].to_numpy())
    rows = []
    for task, part in frame.groupby("task", sort=False):
        others = frame[frame["family"] != part["family"].iloc[0]]
        y = part["correct"].to_numpy()
        row = [task, len(part), y.mean()]
        for signal in (part["vote_confidence"], two[part.index], part["confidence"],
                       predict(part, fit(others, TWO), TWO), predict(part, fit(others, ALL), ALL)):
            row += [separation(signal, y), calibration_error(signal, y)]
        rows.append(tuple(row))
    names = ["vote", "two-input", "confidence", "held-out two-input", "held-out confidence"]
    table = pd.DataFrame(rows, columns=["task", "cells", "accuracy",
                                        *(f"{name} {what}" for name in names for what in ("AUROC", "ECE"))])
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append(f"| {row[0]} | {row[1]:,} | " + " | ".join(f"{v:.3f}" for v in row[2:]) + " |")
    median = table.iloc[:, 2:].median()
    worst = [table[c].min() if "AUROC" in c else table[c].max() for c in table.columns[3:]]
    lines.append("| **median** | | " + " | ".join(f"{v:.3f}" for v in median) + " |")
    lines.append("| **worst** | | | " + " | ".join(f"{v:.3f}" for v in worst) + " |")
    counts = ", ".join(f"{name} {int((table[f'{name} AUROC'] >= 0.85).sum())} and {int((table[f'{name} ECE'] <= 0.05).sum())}"
                       for name in names)
    lines.append(f"\nTasks (of {len(table)}) with AUROC >= 0.85 and with ECE <= 0.05: {counts}.")
    lines.append("\nscreader_db.confidence.FORMS, fitted on every task:\n")
    for size in range(len(OPTIONAL) + 1):
        for optional in combinations(OPTIONAL, size):
            constants = fit(frame, ("agreement", *optional))
            weights = dict(zip(("vote", "agreement", *optional, "intercept"), constants, strict=True))
            lines.append(f"    {optional!r}: {{{', '.join(f'{k!r}: {v:.2f}' for k, v in weights.items())}}},")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--cells", type=Path, default=None,
                        help="Parquet of the per-cell signals: written after a run, read instead of running if it exists.")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.cells is not None and args.cells.is_file():
        frame = pd.read_parquet(args.cells)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            frame = collect(Path(workdir))
        if args.cells is not None:
            frame.to_parquet(args.cells)
    publish(report(frame), start, args.out)


if __name__ == "__main__":
    main()
