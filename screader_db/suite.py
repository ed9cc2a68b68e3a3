"""The transfer suite: every direction between the manifest's labelled data sets, and stress variants.

Directions (each way, scored on the labels both sides have): Baron human ↔ Baron mouse,
pbmc3k ↔ Kang control, pbmc3k ↔ Kang stimulated, Kang control ↔ Kang stimulated. Kang's labels
are renamed to pbmc3k's by :data:`KANG_TO_PBMC3K` (``T``, Kang's coarse T-cell label, has no
pbmc3k counterpart and stays ``T``); each Kang condition is a seeded, stratified sample of
:data:`KANG_CELLS` cells.

Stress variants change the query (or, for the coarse parent, the reference) of a base task:
gene panels of 200, 500 and 1,000 genes drawn at random from the reference's 3,000 most variable
genes (targeted panels measure informative genes), and 1,000 drawn from every gene the query
detects; the reference's top markers removed from the
query; counts thinned to 20% (binomial); the query as ln(1+CP10k), log2(1+CPM) and CPM; and a
coarse parent label in the reference (a share of its T cells, or endocrine cells, relabelled).

Every figure is produced by :func:`screader_db.evaluation.evaluate`, so no query label reaches
building, tuning or annotating; :func:`leave_one_task_out` chooses among the project's methods
on all tasks but one and scores the choice on that one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.evaluation import ABSTENTION, Evaluation, MethodSpec, Task

LABEL = "suite_label"
KANG_CELLS = 3000
KANG_TO_PBMC3K = {"CD14+ Monocytes": "CD14 Monocytes", "CD4+ T cells": "CD4 T", "CD8+ T cells": "CD8 T", "B": "B",
                  "CD16+ Monocytes": "FCGR3A Monocytes", "NK cells": "NK", "DC": "Dendritic", "T": "T"}
DIRECTIONS = (("baron_human", "baron_mouse"), ("baron_mouse", "baron_human"), ("pbmc3k", "kang_ctrl"),
              ("kang_ctrl", "pbmc3k"), ("pbmc3k", "kang_stim"), ("kang_stim", "pbmc3k"), ("kang_ctrl", "kang_stim"),
              ("kang_stim", "kang_ctrl"))
STRESS_BASES = (("pbmc3k", "kang_ctrl"), ("baron_human", "baron_mouse"))
LINEAGE_DIRECTIONS = (("baron_human", "baron_mouse"), ("baron_mouse", "baron_human"))
PANELS = (200, 500, 1000)
THIN = 0.2
MARKERS_REMOVED = 10
PARENT_SHARE = 0.15
ENDOCRINE = ("type B pancreatic cell", "pancreatic A cell", "pancreatic D cell", "pancreatic PP cell")
PARENTS = {"pbmc3k": ("T", ("CD4 T", "CD8 T")), "baron_human": ("endocrine cell", ENDOCRINE),
           "baron_mouse": ("endocrine cell", ENDOCRINE)}


def _labelled(adata: Any, column: str, rename: dict[str, str] | None = None) -> Any:
    out = adata.copy()
    values = out.obs[column].astype(str)
    out.obs[LABEL] = values.map(rename).fillna(values) if rename else values
    return out


def _stratified(adata: Any, n: int, seed: int) -> Any:
    from screader_db.reference_stats import stratified_sample

    codes = pd.Categorical(adata.obs[LABEL]).codes.astype(np.int64)
    return adata[stratified_sample(codes, n, seed=seed)].copy()


NAMES = ("baron_human", "baron_mouse", "pbmc3k", "kang_ctrl", "kang_stim")


def load_sources(*, kang_cells: int = KANG_CELLS, seed: int = 0) -> dict[str, Any]:
    """The suite's data sets in memory, each with its labels in obs ``suite_label``.

    Data sets are fetched on first use (:func:`screader_db.fetch.resolve_dataset`).

    Parameters
    ----------
    kang_cells : int
        Cells drawn from each Kang condition (seeded, every label represented).
    seed : int
        Seed of that draw.

    Returns
    -------
    dict of str to AnnData
        Keyed by :data:`NAMES`; copies of the files' data with ``suite_label`` added (Kang's labels renamed by
        :data:`KANG_TO_PBMC3K`).

    Raises
    ------
    ScreaderError
        A data set could not be fetched or verified (:class:`FetchError`, :class:`ChecksumError`).
    InputDataError
        A data set is not readable as AnnData.
    """
    from screader_db.fetch import resolve_dataset
    from screader_db.inputs import read_h5ad

    sources = {name: _labelled(read_h5ad(resolve_dataset(name)), "cell_ontology_class")
               for name in ("baron_human", "baron_mouse")}
    sources["pbmc3k"] = _labelled(read_h5ad(resolve_dataset("pbmc3k")), "celltype")
    kang = read_h5ad(resolve_dataset("kang"))
    for condition, name in (("CTRL", "kang_ctrl"), ("STIM", "kang_stim")):
        part = _labelled(kang[kang.obs["stim"].astype(str) == condition], "cell_type", KANG_TO_PBMC3K)
        sources[name] = _stratified(part, kang_cells, seed)
    return sources


def _counts(adata: Any) -> sp.csr_matrix:
    """A copy of the counts (variants change it; the source, shared by other tasks, must stay as it is)."""
    return sp.csr_matrix(adata.X, dtype=np.float32, copy=True)


def _with_matrix(adata: Any, X: sp.csr_matrix) -> Any:
    import anndata as ad

    return ad.AnnData(X=X, obs=adata.obs.copy(), var=adata.var.copy())


def _scaled(adata: Any, scale: str) -> Any:
    X = _counts(adata)
    library = np.asarray(X.sum(axis=1)).ravel()
    library[library == 0] = 1.0
    target = 1e4 if scale == "ln(1+CP10k)" else 1e6
    out = sp.csr_matrix(sp.diags(target / library) @ X, dtype=np.float32)
    if scale == "ln(1+CP10k)":
        out.data = np.log1p(out.data)
    elif scale == "log2(1+CPM)":
        out.data = np.log2(1 + out.data)
    return _with_matrix(adata, out)


def _rpkm(X: sp.spmatrix, *, seed: int = 0) -> sp.csr_matrix:
    """Reads per kilobase per million from counts (cells × genes): each gene's length drawn
    log-normally around 2 kb with the seed, as full-length protocols publish expression (float64)."""
    counts = sp.csr_matrix(X, dtype=np.float64)
    library = np.asarray(counts.sum(axis=1)).ravel()
    lengths = np.random.default_rng(seed).lognormal(np.log(2.0), 0.6, counts.shape[1])  # kilobases
    return sp.csr_matrix(sp.diags(1e6 / np.maximum(library, 1)) @ counts @ sp.diags(1 / lengths))


def _thinned(adata: Any, share: float, seed: int) -> Any:
    X = _counts(adata)
    X.data = np.random.default_rng(seed).binomial(X.data.astype(np.int64), share).astype(np.float32)
    X.eliminate_zeros()
    return _with_matrix(adata, X)


def _variable_symbols(reference: Any, n_genes: int = 3000) -> set[str]:
    from screader_db.features import highly_variable
    from screader_db.inputs import load_expression

    ref = load_expression(reference)
    return {ref.genes[i] for i in highly_variable(ref.X, n_genes)}


def _panel(query: Any, n_genes: int, seed: int, among: set[str] | None = None) -> Any:
    """The query restricted to ``n_genes`` random genes it detects (among the symbols ``among`` if given)."""
    from screader_db.inputs import map_genes, open_expression

    detected = np.asarray((_counts(query) > 0).sum(axis=0)).ravel() > 0
    if among is not None:
        symbols = map_genes(open_expression(query)).symbols
        detected &= np.array([s in among for s in symbols])
    columns = np.flatnonzero(detected)
    keep = np.sort(np.random.default_rng(seed).choice(columns, size=min(n_genes, len(columns)), replace=False))
    return query[:, keep].copy()


def _without_markers(query: Any, reference: Any, per_label: int) -> Any:
    """The query without the reference's top ``per_label`` marker genes of every label."""
    from screader_db.inputs import input_scale_of, map_genes, open_expression, plan_genes
    from screader_db.markers import select_markers
    from screader_db.reference_stats import collect

    source = open_expression(reference)
    plan = plan_genes(map_genes(source).symbols)
    stats = collect(source, plan, reference.obs[LABEL].astype(str).to_numpy(), sample_cells=0,
                    kind=input_scale_of(source).scale)
    markers = {plan.genes[i] for i in select_markers(stats, per_label=per_label)}
    symbols = map_genes(open_expression(query)).symbols
    return query[:, [s not in markers for s in symbols]].copy()


def _with_parent(reference: Any, name: str, seed: int) -> Any:
    parent, children = PARENTS[name]
    out = reference.copy()
    labels = out.obs[LABEL].astype(str).to_numpy().copy()
    rows = np.flatnonzero(np.isin(labels, children))
    picked = np.random.default_rng(seed).choice(rows, size=int(PARENT_SHARE * len(rows)), replace=False)
    labels[picked] = parent
    out.obs[LABEL] = labels
    return out


def suite_tasks(sources: dict[str, Any], *, stress: bool = True, seed: int = 0) -> list[Task]:
    """Every direction, then the stress variants of the base tasks.

    Parameters
    ----------
    sources : dict of str to AnnData
        From :func:`load_sources`; not changed (variants work on copies).
    stress : bool
        Add the ten stress variants of each base in :data:`STRESS_BASES`.
    seed : int
        Seed of every task, and of the random panels, thinning and parent relabelling.

    Returns
    -------
    list of Task
        Labels and truth in obs ``suite_label``. Variants share their base's ``reference_key`` (one atlas
        serves them), except the coarse-parent variant, whose reference differs.
    """
    tasks = [Task(f"{ref} -> {qry}", sources[ref], sources[qry], LABEL, LABEL, seed, reference_key=ref)
             for ref, qry in DIRECTIONS]
    if not stress:
        return tasks
    for ref, qry in STRESS_BASES:
        base, reference, query = f"{ref} -> {qry}", sources[ref], sources[qry]

        def variant(what: str, changed: Any, *, reference_key: str = ref, changed_ref: Any = reference,
                    base: str = base) -> Task:
            return Task(f"{base}: {what}", changed_ref, changed, LABEL, LABEL, seed, reference_key=reference_key)

        variable = _variable_symbols(reference)
        tasks += [variant(f"panel of {n} variable genes", _panel(query, n, seed, variable)) for n in PANELS]
        tasks.append(variant(f"panel of {PANELS[-1]} genes of any kind", _panel(query, PANELS[-1], seed)))
        tasks.append(variant(f"top {MARKERS_REMOVED} markers per label removed",
                             _without_markers(query, reference, MARKERS_REMOVED)))
        tasks.append(variant(f"counts thinned to {THIN:.0%}", _thinned(query, THIN, seed)))
        tasks += [variant(f"query as {scale}", _scaled(query, scale)) for scale in ("ln(1+CP10k)", "log2(1+CPM)", "CPM")]
        parent = PARENTS[ref][0]
        tasks.append(variant(f"reference with a coarse parent label ({parent!r})", query,
                             reference_key=f"{ref} + {parent}", changed_ref=_with_parent(reference, ref, seed)))
    return tasks


@dataclass
class Choice:
    """One leave-one-task-out fold: the method chosen on the other tasks and its score on the held-out one."""

    task: str
    chosen: str
    accuracy: float
    macro_f1: float


def leave_one_task_out(result: Evaluation, candidates: list[str]) -> list[Choice]:
    """For each task, the candidate row with the best mean of accuracy and macro-F1 over every other task.

    Parameters
    ----------
    result : Evaluation
        The suite's runs.
    candidates : list of str
        The method rows to choose among; runs of other rows are ignored.

    Returns
    -------
    list of Choice
        One per task, in order of first run: the row chosen without it, and that row's accuracy and macro-F1 on
        it (mean over the row's runs).
    """
    frame = result.frame()
    frame = frame[frame["row"].isin(candidates)]
    scores = frame.groupby(["task", "row"], sort=False)[["accuracy", "macro_f1"]].mean()
    criterion = scores.mean(axis=1).unstack("row")
    choices = []
    for task in criterion.index:
        chosen = str(criterion.drop(index=task).mean().idxmax())
        accuracy, macro_f1 = scores.loc[(task, chosen)]
        choices.append(Choice(task=str(task), chosen=chosen, accuracy=float(accuracy), macro_f1=float(macro_f1)))
    return choices


def suite_markdown(result: Evaluation, *, default: str, baselines: list[str], candidates: list[str]) -> str:
    """Per-task accuracy and macro-F1 of every row, the summary, the leave-one-task-out choice, the rules.

    The summary gives each row's mean, worst task and time; the Unassigned-rule figures come from
    the rows named ``... Unassigned rules on``, when there are any.

    Parameters
    ----------
    result : Evaluation
        The suite's runs.
    default : str
        The default method's row, whose means are set beside the leave-one-task-out means.
    baselines : list of str
        Baseline rows: a row's task counts as behind when its accuracy is more than 0.02 below the best of them.
    candidates : list of str
        Rows the leave-one-task-out choice is made among (:func:`leave_one_task_out`).

    Returns
    -------
    str
        Markdown under ``####`` headings; the best figure of each task in bold.
    """
    frame = result.frame()
    rows = list(dict.fromkeys(frame["row"]))
    per_task = frame.groupby(["task", "row"], sort=False)[["accuracy", "macro_f1", "seconds"]].mean()
    lines = []
    for metric, title in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1")):
        table = per_task[metric].unstack("row").reindex(columns=rows)
        table = table.reindex(list(dict.fromkeys(frame["task"])))
        lines += [f"#### {title} per task", "", "| task | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
        for task, values in table.iterrows():
            cells = [f"**{v:.3f}**" if v == values.max() else f"{v:.3f}" for v in values]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("")
    accuracy = per_task["accuracy"].unstack("row")
    f1 = per_task["macro_f1"].unstack("row")
    seconds = per_task["seconds"].unstack("row")
    best_baseline = accuracy[baselines].max(axis=1)
    lines += ["#### Summary over tasks", "",
              "| method | mean accuracy | worst accuracy (task) | mean macro-F1 | worst macro-F1 (task) | "
              "tasks > 0.02 below the best baseline | mean seconds |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        behind = int(((best_baseline - accuracy[row]) > 0.02).sum())
        lines.append(f"| {row} | {accuracy[row].mean():.3f} | {accuracy[row].min():.3f} ({accuracy[row].idxmin()}) | "
                     f"{f1[row].mean():.3f} | {f1[row].min():.3f} ({f1[row].idxmin()}) | {behind} | "
                     f"{seconds[row].mean():.1f} |")
    lines += ["", "#### Leave one task out", "",
              "Chosen on every other task by the mean of accuracy and macro-F1, among: " + ", ".join(candidates) + ".",
              "", "| held-out task | chosen | accuracy | macro-F1 |", "|---|---|---|---|"]
    choices = leave_one_task_out(result, candidates)
    lines += [f"| {c.task} | {c.chosen} | {c.accuracy:.3f} | {c.macro_f1:.3f} |" for c in choices]
    mean_acc = np.mean([c.accuracy for c in choices])
    mean_f1 = np.mean([c.macro_f1 for c in choices])
    lines += ["", f"Leave-one-task-out mean: accuracy {mean_acc:.3f}, macro-F1 {mean_f1:.3f}; the default "
              f"({default}) {accuracy[default].mean():.3f} / {f1[default].mean():.3f}.", ""]
    rules = frame[frame["right_set_aside"].notna()] if "right_set_aside" in frame else frame.iloc[0:0]
    rules = rules[rules["row"].str.contains("Unassigned rules on", regex=False)]
    if len(rules):
        lines += ["#### Unassigned rules with every query type in the atlas", "",
                  "| task | cells the raw vote got right | of them set aside | share |", "|---|---|---|---|"]
        lines += [f"| {r.task} | {int(r.raw_right):,} | {int(r.right_set_aside):,} | {r.right_set_aside_share:.2%} |"
                  for r in rules.itertuples()]
    return "\n".join(lines)


BASELINES = ("expression kNN", "PCA-50 kNN", "CellTypist", "SingleR")
NONE = "none"
# Settings of the project's methods that compete with the default in the leave-one-task-out choice.
CANDIDATES = (
    MethodSpec("marker, prototype weight 1.5", model=NONE, method="marker", options=(("prototype_weight", 1.5),)),
    MethodSpec("marker, no prototype block", model=NONE, method="marker", options=(("prototype_weight", 0.0),)),
    MethodSpec("expression, power-4 vote", model=NONE, method="expression"),
    MethodSpec("PCA-50, power-4 vote", model=NONE, method="pca"),
)


def run_suite(*, model: str = "minilm", methods: tuple[str, ...] | None = None, random_seeds: int = 1,
              stress: bool = True, peers: bool = True, kang_cells: int = KANG_CELLS, seed: int = 0,
              candidates: tuple[MethodSpec, ...] = CANDIDATES, hide_labels: bool = False,
              tasks: list[str] | None = None, out: Any = None, reporter: Any = None) -> tuple[Evaluation, str]:
    """Run the suite (``tasks``: only those names) and return the result with its Markdown report.

    ``hide_labels`` adds the hide-each-label figures of the Unassigned rules (:func:`hide_each_label`).

    Parameters
    ----------
    model : str
        Language model of the text methods.
    methods : tuple of str or None
        Atlas methods (:func:`screader_db.evaluation.standard_specs`); None runs ``marker``, ``marker-text`` and
        ``genept``. Must include the default method, ``marker``.
    random_seeds : int
        Random-vector twins per text method.
    stress : bool
        Add the stress variants (:func:`suite_tasks`).
    peers : bool
        Run CellTypist and SingleR.
    kang_cells, seed : int
        As :func:`load_sources` takes them; ``seed`` also seeds the tasks.
    candidates : tuple of MethodSpec
        Further settings of the project's methods, run after the first method and competing in the
        leave-one-task-out choice.
    hide_labels : bool
        Also run :func:`hide_each_label` and add its table.
    tasks : list of str or None
        Names of the tasks to run; None runs all.
    out : str, Path or None
        Folder for the evaluation files (:meth:`Evaluation.write`, titled "transfer suite") and ``suite.md``;
        None writes nothing.
    reporter : Reporter or None
        Gets one message per (task, method); None is silent.

    Returns
    -------
    result : Evaluation
    report : str
        Markdown (:func:`suite_markdown`, then the hidden-label table if asked for).

    Raises
    ------
    ScreaderError
        A data set could not be fetched or read, a peer is not installed, no task matches ``tasks``, or any
        error of building or querying an atlas.
    """
    from pathlib import Path

    from screader_db.builders.atlas import DEFAULT_METHOD
    from screader_db.evaluation import PROJECT_METHODS, evaluate, standard_specs
    from screader_db.progress import SILENT

    chosen = methods or PROJECT_METHODS
    specs = standard_specs(model, methods=chosen, random_seeds=random_seeds, celltypist=peers, singler=peers)
    specs[1:1] = list(candidates)
    sources = load_sources(kang_cells=kang_cells, seed=seed)
    all_tasks = suite_tasks(sources, stress=stress, seed=seed)
    picked = [t for t in all_tasks if tasks is None or t.name in tasks]
    result = evaluate(picked, specs, reporter=reporter or SILENT)
    names = [s.row for s in specs]
    default = next(n for n in names if n.startswith(f"{DEFAULT_METHOD} (default)"))
    rivals = [n for n in dict.fromkeys(names) if n not in BASELINES and "random" not in n and "rules on" not in n]
    text = suite_markdown(result, default=default, baselines=[b for b in BASELINES if b in names], candidates=rivals)
    if hide_labels:
        hidden = hide_each_label(sources, seed=seed, reporter=reporter)
        text += "\n\n#### Unassigned rules with one reference label hidden at a time\n\n" + hidden_markdown(hidden)
    if out is not None:
        folder = Path(out)
        result.write(folder, title="transfer suite")
        (folder / "suite.md").write_text(text + "\n")
    return result, text


@dataclass
class Hidden:
    """One reference label hidden from the atlas: how much of that type the rules set aside, and of the rest.

    ``caught``: share of the hidden type's cells answered ``Unassigned``; ``broader``: answered with
    a broader class than any atlas label (the label hierarchy's fallback); ``right_set_aside``: the
    present types' right raw calls turned ``Unassigned``.
    """

    task: str
    label: str
    cells: int
    caught: float
    right_set_aside: float
    broader: float = 0.0


RULES = MethodSpec("marker (default), Unassigned rules on", model=NONE, method="marker", options=ABSTENTION)


def hidden_tasks(sources: dict[str, Any], directions: tuple[tuple[str, str], ...], min_cells: int,
                 choose: Callable[[list[str], str], list[list[str]]]) -> list[tuple[str, str, Any, Any, list[str]]]:
    """Each direction's reference without a group of its labels, with the query.

    Parameters
    ----------
    sources, directions, min_cells
        As :func:`hide_each_label` takes them.
    choose : callable
        ``(labels the query has at least min_cells of, direction) -> groups of labels to hide``,
        such as :func:`each_label` or :func:`half_draw`.

    Returns
    -------
    list of tuple
        (task, name, reference without the group, query, the group) for every group.
    """
    found = []
    for ref, qry in directions:
        reference, query = sources[ref], sources[qry]
        counts = query.obs[LABEL].astype(str).value_counts()
        present = [label for label in sorted(set(reference.obs[LABEL].astype(str))) if counts.get(label, 0) >= min_cells]
        for group in choose(present, f"{ref} -> {qry}"):
            kept = reference[~reference.obs[LABEL].astype(str).isin(group)].copy()
            found.append((f"{ref} -> {qry}", f"{ref} -> {qry} without {', '.join(group)}", kept, query, group))
    return found


def _run_hidden(found: list[tuple[str, str, Any, Any, list[str]]], *, seed: int, spec: MethodSpec,
                reporter: Any) -> list[Hidden]:
    """Build each atlas without its hidden labels, annotate with the Unassigned rules on, and measure
    the hidden cells that come back Unassigned and the other cells the raw vote got right that are set aside."""
    from screader_db.evaluation import evaluate
    from screader_db.metrics import UNASSIGNED
    from screader_db.progress import SILENT

    tasks = [Task(name, kept, query, LABEL, LABEL, seed, reference_key=name) for _, name, kept, query, _ in found]
    result = evaluate(tasks, [spec], reporter=reporter or SILENT)
    hidden = {name: (task, group, set(kept.obs[LABEL].astype(str))) for task, name, kept, _, group in found}
    rows = []
    for record in result.rows:
        task, group, fine = hidden[record["task"]]
        truth = result.truths[record["task"]]
        predicted = result.predictions[(record["task"], spec.name)]
        mask = np.isin(truth, group)
        unassigned = predicted[mask] == UNASSIGNED
        broader = ~unassigned & ~np.isin(predicted[mask], list(fine))
        rows.append(Hidden(task=task, label=", ".join(group), cells=int(mask.sum()),
                           caught=float(unassigned.mean()), broader=float(broader.mean()),
                           right_set_aside=float(record.get("right_set_aside_share", 0.0))))
    return rows


def hide_each_label(sources: dict[str, Any], *, directions: tuple[tuple[str, str], ...] = DIRECTIONS,
                    min_cells: int = 10, seed: int = 0, spec: MethodSpec = RULES,
                    reporter: Any = None) -> list[Hidden]:
    """For each direction and each reference label with at least ``min_cells`` query cells: build the atlas without it.

    Then annotate with the Unassigned rules on, and measure the hidden type's cells that come back
    Unassigned and the other cells the raw vote got right that are set aside.

    Parameters
    ----------
    sources : dict of str to AnnData
        From :func:`load_sources`.
    directions : tuple of (str, str)
        (reference, query) names.
    min_cells : int
        Query cells a label needs to be hidden.
    seed : int
        Seed of the atlas builds.
    spec : MethodSpec
        The method and its query options; by default the default method with the Unassigned rules on.
    reporter : Reporter or None
        Gets one message per run; None is silent.

    Returns
    -------
    list of Hidden
        One per (direction, label): ``caught`` is the share of the label's query cells left Unassigned,
        ``right_set_aside`` the share of the raw vote's right calls set aside.

    Raises
    ------
    ScreaderError
        No label qualifies in any direction, or any error of building or querying an atlas.
    """
    found = hidden_tasks(sources, directions, min_cells, each_label)
    return _run_hidden(found, seed=seed, spec=spec, reporter=reporter)


def hide_half(sources: dict[str, Any], *, directions: tuple[tuple[str, str], ...] = DIRECTIONS,
              min_cells: int = 10, seed: int = 0, spec: MethodSpec = RULES, reporter: Any = None) -> list[Hidden]:
    """For each direction: half of the reference labels the query has, hidden at once.

    The half is a seeded draw (rounded down) among the labels with at least ``min_cells`` query
    cells, measured as :func:`hide_each_label` measures one.

    Parameters
    ----------
    sources : dict of str to AnnData
        From :func:`load_sources`.
    directions : tuple of (str, str)
        (reference, query) names.
    min_cells : int
        Query cells a label needs to be drawn.
    seed : int
        Seed of the draw (combined with the direction's name) and of the atlas builds.
    spec : MethodSpec
        The method and its query options; by default the default method with the Unassigned rules on.
    reporter : Reporter or None
        Gets one message per run; None is silent.

    Returns
    -------
    list of Hidden
        One per direction; ``label`` joins the hidden labels with commas.

    Raises
    ------
    ScreaderError
        Any error of building or querying an atlas.
    """
    found = hidden_tasks(sources, directions, min_cells, half_draw(seed))
    return _run_hidden(found, seed=seed, spec=spec, reporter=reporter)


def half_draw(seed: int) -> Callable[[list[str], str], list[list[str]]]:
    """The labels :func:`hide_half` hides: a draw seeded by ``seed`` and the direction's name.

    Parameters
    ----------
    seed : int
        Seed of the draw.

    Returns
    -------
    callable
        ``(labels, direction) -> [half of the labels, sorted]``.
    """
    def draw(labels: list[str], direction: str) -> list[list[str]]:
        rng = np.random.default_rng([seed, zlib.crc32(direction.encode())])
        return [sorted(rng.choice(labels, size=len(labels) // 2, replace=False).tolist())]

    return draw


def each_label(labels: list[str], direction: str) -> list[list[str]]:
    """The labels :func:`hide_each_label` hides: each on its own.

    Parameters
    ----------
    labels : list of str
        The labels that may be hidden.
    direction : str
        The task's name (unused: every direction hides each label).

    Returns
    -------
    list of list of str
        One group per label.
    """
    return [[label] for label in labels]


def lineage_only(sources: dict[str, Any], *, directions: tuple[tuple[str, str], ...] = LINEAGE_DIRECTIONS,
                 seed: int = 0, spec: MethodSpec = RULES, reporter: Any = None) -> list[Hidden]:
    """For each direction: an atlas of one lineage only (the children of the reference's
    :data:`PARENTS` class: Baron's four endocrine types) queried with the whole tissue.

    Every other reference label is left out of the atlas, and the query cells of those labels are
    measured as :func:`hide_each_label` measures one hidden label's.

    Parameters
    ----------
    sources : dict of str to AnnData
        From :func:`load_sources`.
    directions : tuple of (str, str)
        (reference, query) names; each reference must be a key of :data:`PARENTS`.
    seed : int
        Seed of the atlas builds.
    spec : MethodSpec
        The method and its query options; by default the default method with the Unassigned rules on.
    reporter : Reporter or None
        Gets one message per run; None is silent.

    Returns
    -------
    list of Hidden
        One per direction; ``label`` joins the hidden labels with commas.

    Raises
    ------
    ScreaderError
        Any error of building or querying an atlas.
    """
    return _run_hidden(lineage_tasks(sources, directions), seed=seed, spec=spec, reporter=reporter)


def lineage_tasks(sources: dict[str, Any], directions: tuple[tuple[str, str], ...]) -> list[tuple[str, str, Any, Any, list[str]]]:
    """Each direction's reference restricted to one lineage (:data:`PARENTS`), with the whole query.

    Parameters
    ----------
    sources, directions
        As :func:`lineage_only` takes them.

    Returns
    -------
    list of tuple
        (task, name, reference of the lineage's labels only, query, every other reference label).
    """
    found = []
    for ref, qry in directions:
        reference, lineage = sources[ref], PARENTS[ref][1]
        labels = reference.obs[LABEL].astype(str)
        others = sorted(set(labels) - set(lineage))
        found.append((f"{ref} -> {qry}", f"{ref} -> {qry}: {PARENTS[ref][0]} only", reference[labels.isin(lineage)].copy(),
                      sources[qry], others))
    return found


def hidden_markdown(rows: list[Hidden]) -> str:
    """Per task: the median share of a hidden type's cells set aside, the worst label, the present types' loss.

    The loss is the share of the other (present) types' right calls that were set aside.

    Parameters
    ----------
    rows : list of Hidden
        From :func:`hide_each_label`.

    Returns
    -------
    str
        A Markdown table, one line per task in order of first appearance.
    """
    frame = pd.DataFrame([r.__dict__ for r in rows])
    lines = ["| task | labels hidden | hidden cells Unassigned, median | worst label | hidden cells given a broader "
             "class, median | present types' right calls set aside, median |", "|---|---|---|---|---|---|"]
    for task, group in frame.groupby("task", sort=False):
        worst = group.loc[group["caught"].idxmin()]
        lines.append(f"| {task} | {len(group)} | {group['caught'].median():.1%} | {worst['label']} ({worst['caught']:.1%}) | "
                     f"{group['broader'].median():.1%} | {group['right_set_aside'].median():.2%} |")
    return "\n".join(lines)


def half_markdown(rows: list[Hidden]) -> str:
    """Per task: the labels hidden together, their cells, the share set aside, and the present types' loss.

    Parameters
    ----------
    rows : list of Hidden
        From :func:`hide_half`.

    Returns
    -------
    str
        A Markdown table, one line per row.
    """
    lines = ["| task | labels hidden together | their query cells | of them Unassigned | given a broader class | "
             "present types' right calls set aside |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.label} | {r.cells:,} | {r.caught:.1%} | {r.broader:.1%} | {r.right_set_aside:.2%} |"
              for r in rows]
    return "\n".join(lines)
