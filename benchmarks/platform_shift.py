"""Platform shifts that the transfer suite does not hold, and that chose nothing: held out by design.

Another platform measures each gene with its own efficiency, and a full-length protocol counts
reads, not molecules. Three suite directions get their query changed in two ways each, from its
counts, with fixed seeds:

- **gene capture**: each gene is caught at its own rate, 0.5 × a log-normal factor (sd ``sigma``,
  capped at 1), and every count thinned binomially at that rate;
- **full-length reads**: every molecule amplified into reads, negative binomial with mean
  ``depth`` × a log-normal gene factor (sd ``sigma``: length and amplification bias) and shape
  2 per molecule, so the query holds integer read counts of another scale and gene bias.

The default method, expression kNN, PCA-50 kNN, CellTypist and SingleR run on every task in one
run (``screader_db.evaluation``, the suite's protocol), the unchanged direction beside its
variants; the default once more with its Unassigned rules on, for the share of its right calls
they set aside.

    python benchmarks/platform_shift.py --out results/platform_shift.md
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from markdown_report import arguments, publish

DIRECTIONS = (("baron_human", "baron_mouse"), ("pbmc3k", "kang_ctrl"), ("kang_ctrl", "pbmc3k"))
SHIFTS = (("gene capture", 0.7), ("gene capture", 1.2), ("full-length reads", 1.0), ("full-length reads", 1.5))
RULES = "marker (default), Unassigned rules on"  # the row standard_specs adds for the rules
DEPTH = 20.0
SHAPE = 2.0


def gene_capture(adata: Any, sigma: float, seed: int) -> Any:
    """Counts thinned gene by gene, each gene at 0.5 × a log-normal factor of sd ``sigma`` (at most 1)."""
    from screader_db.suite import _counts, _with_matrix

    X = _counts(adata)
    rng = np.random.default_rng(seed)
    rate = np.minimum(0.5 * np.exp(rng.normal(0.0, sigma, X.shape[1])), 1.0)
    X.data = rng.binomial(X.data.astype(np.int64), rate[X.indices]).astype(np.float32)
    X.eliminate_zeros()
    return _with_matrix(adata, X)


def full_length_reads(adata: Any, sigma: float, seed: int) -> Any:
    """Read counts: each count's molecules amplified, negative binomial with mean :data:`DEPTH` × a
    log-normal gene factor of sd ``sigma`` and shape :data:`SHAPE` per molecule."""
    from screader_db.suite import _counts, _with_matrix

    X = _counts(adata)
    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(0.0, sigma, X.shape[1]))
    mean = X.data * DEPTH * factor[X.indices]
    shape = SHAPE * X.data
    X.data = rng.negative_binomial(shape, shape / (shape + mean)).astype(np.float32)
    X.eliminate_zeros()
    return _with_matrix(adata, X)


def tasks(seed: int = 0) -> list[Any]:
    """Each direction unchanged, then under every shift of :data:`SHIFTS`."""
    from screader_db.evaluation import Task
    from screader_db.suite import LABEL, load_sources

    sources = load_sources()
    change = {"gene capture": gene_capture, "full-length reads": full_length_reads}
    found = []
    for ref, qry in DIRECTIONS:
        name, reference, query = f"{ref} -> {qry}", sources[ref], sources[qry]
        found.append(Task(name, reference, query, LABEL, LABEL, seed, reference_key=ref))
        found += [Task(f"{name}: {what}, gene sd {sigma}", reference, change[what](query, sigma, seed), LABEL, LABEL,
                       seed, reference_key=ref) for what, sigma in SHIFTS]
    return found


def report(frame: Any) -> str:
    """Accuracy and macro-F1 per task and method (best of the row in bold), then the mean and the worst;
    then what the Unassigned rules cost the default: the share of its right calls they set aside."""
    lines = []
    rules = frame["method"] == RULES
    for value, title in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1")):
        table = frame[~rules].pivot_table(index="task", columns="method", values=value, sort=False)
        methods = list(dict.fromkeys(frame.loc[~rules, "method"]))
        table = table[methods]
        lines += [f"\n{title} per task (bold: the best of the row):\n", "| task | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]
        for task, row in table.iterrows():
            best = row.max()
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in row]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(f"{v:.3f}" for v in table.mean()) + " |")
        lines.append("| **worst** | " + " | ".join(f"{v:.3f}" for v in table.min()) + " |")
    lines += [f"\nThe default with its Unassigned rules on ({RULES!r}):\n",
              "| task | accuracy | right calls set aside | Unassigned |", "|---|---|---|---|"]
    for row in frame[rules].itertuples(index=False):
        lines.append(f"| {row.task} | {row.accuracy:.3f} | {row.right_set_aside_share:.2%} | {row.unassigned_rate:.2%} |")
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__).parse_args()
    from screader_db.evaluation import evaluate, standard_specs

    start = time.perf_counter()
    specs = standard_specs(methods=("marker",), random_seeds=0, celltypist=True, singler=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tasks(), specs)
    publish(report(result.frame()), start, args.out)


if __name__ == "__main__":
    main()
