"""Confidence on the transfer suite: does it separate right from wrong labels, and is it calibrated?

Every suite task (screader_db.suite) is annotated through the product path with the default
method. Per task: accuracy of the raw vote, then AUROC (right vs wrong) and expected calibration
error of the vote's own confidence (calibrated on a split of the reference) and of the shipped
``confidence`` (screader_db.confidence). The combination's three constants are refitted here:
on every task (the values to ship) and, for each task, on the tasks of the other families only
(a family = one reference -> query pair with its stress variants), so the held-out figures are
those of constants that never saw the task.

    python benchmarks/confidence.py --out results/confidence.md
    python benchmarks/confidence.py --second-opinion --out results/confidence_share.md

``--second-opinion`` also annotates every task with the ``expression`` method (an atlas of it on
the same reference, Unassigned rules off) and adds, per task, the held-out figures of a fit with a
third input: the share of the expression method's vote that goes to the default's label.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def collect(workdir: Path, *, second_opinion: bool = False) -> pd.DataFrame:
    """One row per scored query cell of every suite task: correct or not and the two signals (and
    the expression method's vote share of the label, with ``second_opinion``)."""
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
        frame = pd.DataFrame({
            "task": task.name, "family": task.name.split(":")[0], "known": np.isin(truth, result.atlas_labels),
            "correct": table["raw_label"].to_numpy() == truth, "vote_confidence": table["vote_confidence"].to_numpy(),
            "agreement": confidence.agreement(query_graph(result.embeddings), codes),
            "confidence": table["confidence"].to_numpy()})
        if second_opinion:
            key = ("expression", task.reference_key)
            if key not in atlases:
                root = workdir / ("expression_" + re.sub(r"[^A-Za-z0-9]+", "_", task.reference_key))
                atlases[key] = build_atlas(task.reference.copy(), root, label_key=LABEL,
                                           settings=BuildSettings(layout="none", model="none", method="expression"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = annotate(task.query, atlases[key], input_scale=task.input_scale, min_score=0.0, novelty=False)
            scores = other.label_scores
            frame["share"] = [scores.at[cell, label] if label in scores.columns else 0.0
                              for cell, label in zip(table.index, table["raw_label"].astype(str), strict=True)]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["known"]].reset_index(drop=True)


def _design(frame: pd.DataFrame, inputs: tuple[str, ...] = ("agreement",)) -> np.ndarray:
    from screader_db.confidence import CLIP

    p = np.clip(frame["vote_confidence"].to_numpy(np.float64), CLIP, 1 - CLIP)
    return np.column_stack([np.log(p / (1 - p)), *(frame[name].to_numpy(np.float64) for name in inputs)])


def fit(frame: pd.DataFrame, inputs: tuple[str, ...] = ("agreement",)) -> tuple[float, ...]:
    """Logistic fit of correct on (logit vote confidence, *inputs), every task weighted equally; the
    weights, then the intercept."""
    from sklearn.linear_model import LogisticRegression

    sizes = frame.groupby("task")["correct"].transform("size").to_numpy()
    weight = len(frame) / (frame["task"].nunique() * sizes)  # every task counts the same, mean weight 1
    model = LogisticRegression(max_iter=5000).fit(_design(frame, inputs), frame["correct"], sample_weight=weight)
    return (*(float(c) for c in model.coef_[0]), float(model.intercept_[0]))


def predict(frame: pd.DataFrame, constants: tuple[float, ...], inputs: tuple[str, ...] = ("agreement",)) -> np.ndarray:
    z = _design(frame, inputs) @ np.asarray(constants[:-1]) + constants[-1]
    return 1.0 / (1.0 + np.exp(-z))


def report(frame: pd.DataFrame) -> tuple[str, tuple[float, float, float]]:
    from screader_db.confidence import combine
    from screader_db.metrics import calibration_error, separation

    shipped = fit(frame)
    frame = frame.assign(confidence=combine(frame["vote_confidence"].to_numpy(), frame["agreement"].to_numpy()))
    second = "share" in frame
    rows = []
    for task, part in frame.groupby("task", sort=False):
        others = frame[frame["family"] != part["family"].iloc[0]]
        held_out = predict(part, fit(others))
        y = part["correct"].to_numpy()
        row = [task, len(part), y.mean(),
               separation(part["vote_confidence"], y), calibration_error(part["vote_confidence"], y),
               separation(part["confidence"], y), calibration_error(part["confidence"], y),
               separation(held_out, y), calibration_error(held_out, y)]
        if second:
            inputs = ("agreement", "share")
            with_share = predict(part, fit(others, inputs), inputs)
            row += [separation(with_share, y), calibration_error(with_share, y)]
        rows.append(tuple(row))
    columns = ["task", "cells", "accuracy", "vote AUROC", "vote ECE", "confidence AUROC", "confidence ECE",
               "held-out AUROC", "held-out ECE"]
    table = pd.DataFrame(rows, columns=columns + (["held-out AUROC with share", "held-out ECE with share"] if second else []))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append(f"| {row[0]} | {row[1]:,} | " + " | ".join(f"{v:.3f}" for v in row[2:]) + " |")
    median = table.iloc[:, 2:].median()
    worst = [table[c].min() if "AUROC" in c else table[c].max() for c in table.columns[3:]]
    lines.append("| **median** | | " + " | ".join(f"{v:.3f}" for v in median) + " |")
    lines.append("| **worst** | | | " + " | ".join(f"{v:.3f}" for v in worst) + " |")
    lines.append(f"\nTasks with AUROC >= 0.85: vote {int((table['vote AUROC'] >= 0.85).sum())}, "
                 f"confidence {int((table['confidence AUROC'] >= 0.85).sum())} of {len(table)}; with ECE <= 0.05: "
                 f"vote {int((table['vote ECE'] <= 0.05).sum())}, confidence {int((table['confidence ECE'] <= 0.05).sum())}.")
    if second:
        lines.append(f"With the expression share as a third input (held out per family): AUROC >= 0.85 on "
                     f"{int((table['held-out AUROC with share'] >= 0.85).sum())}, ECE <= 0.05 on "
                     f"{int((table['held-out ECE with share'] <= 0.05).sum())} of {len(table)} (held out without it: "
                     f"{int((table['held-out AUROC'] >= 0.85).sum())} and {int((table['held-out ECE'] <= 0.05).sum())}).")
    lines.append(f"Constants fitted on every task: VOTE_WEIGHT {shipped[0]:.2f}, AGREEMENT_WEIGHT {shipped[1]:.2f}, "
                 f"INTERCEPT {shipped[2]:.2f}.")
    return "\n".join(lines), shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cells", type=Path, default=None,
                        help="Parquet of the per-cell signals: written after a run, read instead of running if it exists.")
    parser.add_argument("--second-opinion", action="store_true",
                        help="Also fit with the expression method's vote share of each label (held out per family).")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.cells is not None and args.cells.is_file():
        frame = pd.read_parquet(args.cells)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            frame = collect(Path(workdir), second_opinion=args.second_opinion)
        if args.cells is not None:
            frame.to_parquet(args.cells)
    text, _ = report(frame)
    text += f"\n\n{time.perf_counter() - start:.0f} s\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
