"""Accuracy evaluations: the project's methods beside baselines and a peer, in one run.

Every method sees the same reference, the same query cells and (for atlas methods) the same
genes and k, so each figure in a table was measured under the same conditions. Tasks are
either a reference → query transfer (cross-study or cross-species: only labels the reference
has are scored) or stratified reference splits over several seeds.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import ScreaderError
from screader_db.metrics import UNASSIGNED
from screader_db.progress import SILENT, Reporter

QUERY_OPTIONS = ("min_score", "min_margin", "power", "propagation", "center", "k", "novelty", "second_opinion",
                 "parent_hold")
FORCED = {"min_score": 0.0, "novelty": False}


@dataclass(frozen=True)
class MethodSpec:
    """One method of a comparison.

    ``kind`` is ``atlas`` (build an atlas with ``model`` / ``method`` and query it) or
    ``celltypist``. ``group`` names the row the results are averaged into (seeds of a random
    twin share one group). Atlas methods label every cell (no score cut-off, no novelty check)
    unless ``options`` say otherwise, so that accuracies compare labels with labels.
    """

    name: str
    kind: str = "atlas"
    model: str = "minilm"
    method: str = "genept"
    group: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def row(self) -> str:
        """The summary row its results go to: ``group``, else ``name``."""
        return self.group or self.name


@dataclass
class Task:
    """A reference and a query with true labels.

    Tasks with the same ``reference_key`` share one reference (and seed): each atlas method is
    built on it once and queried by every such task. ``input_scale`` is passed to the query as
    ``--input-scale`` would be (None: detected).
    """

    name: str
    reference: Any
    query: Any
    label_key: str
    truth_key: str
    seed: int = 0
    reference_key: str = ""
    input_scale: str | None = None

    @property
    def shared_reference(self) -> str:
        """The key atlases are shared under: ``<reference_key or name> seed <seed>``."""
        return f"{self.reference_key or self.name} seed {self.seed}"


# the neighbours alone, by majority of their own labels
PROTOCOL = (("power", 1.0), ("propagation", 0.0), ("second_opinion", False), ("parent_hold", 0.0))
PEERS = ("celltypist", "singler")
ABSTENTION = (("min_score", None), ("novelty", True))  # the query's Unassigned rules as the atlas calibrated them
PROJECT_METHODS = ("marker", "marker-text", "genept")


def standard_specs(model: str = "minilm", *, methods: tuple[str, ...] = PROJECT_METHODS,
                   random_seeds: int = 3, baselines: bool = True, celltypist: bool = True, singler: bool = False,
                   abstention: bool = True) -> list[MethodSpec]:
    """The project's methods, the default with its Unassigned rules on, and the baselines.

    Text methods run with ``model`` and beside their random-vector twins; the baselines are
    expression kNN and PCA-50 kNN with the usual similarity-weighted vote, CellTypist and
    (``singler``) SingleR.

    Parameters
    ----------
    model : str
        The language model of the text methods; its dimension (384 for ``minilm`` and unknown models, 576 for
        ``smollm2``) sizes the random twins.
    methods : tuple of str
        Atlas methods. Text methods (``marker-text``, ``genept``, ``hybrid``, ``adaptor``) get ``model`` and
        random twins; the others are built without a model.
    random_seeds : int
        Random-vector twins per text method, averaged into one row ``<method> (random vectors)``.
    baselines : bool
        Add expression kNN and PCA-50 kNN (vote power 1, no propagation, no second opinion: the
        neighbours vote alone, without the linear classifier).
    celltypist, singler : bool
        Add these peers.
    abstention : bool
        Add the default method once more with the atlas's calibrated score cut-off and the novelty check on.

    Returns
    -------
    list of MethodSpec
        In the order above: each method (with its twins), then the baselines, then the peers.
    """
    from screader_db.builders.atlas import DEFAULT_METHOD
    from screader_db.cell_embedding import TEXT_METHODS

    specs = []
    for method in methods:
        if method not in TEXT_METHODS:
            tag = " (default)" if method == DEFAULT_METHOD else ""
            specs.append(MethodSpec(f"{method}{tag}", model="none", method=method))
            if abstention and method == DEFAULT_METHOD:
                specs.append(MethodSpec(f"{method}{tag}, Unassigned rules on", model="none", method=method,
                                        options=ABSTENTION))
            continue
        specs.append(MethodSpec(f"{method} ({model})", model=model, method=method))
        specs += [MethodSpec(f"{method} (random:{seed})", model=f"random:{_dim(model)}:{seed}", method=method,
                             group=f"{method} (random vectors)") for seed in range(random_seeds)]
    if baselines:
        specs += [MethodSpec("expression kNN", model="none", method="expression", options=PROTOCOL),
                  MethodSpec("PCA-50 kNN", model="none", method="pca", options=PROTOCOL)]
    if celltypist:
        specs.append(MethodSpec("CellTypist", kind="celltypist"))
    if singler:
        specs.append(MethodSpec("SingleR", kind="singler"))
    return specs


def _dim(model: str) -> int:
    return {"minilm": 384, "smollm2": 576}.get(model, 384)


def split_tasks(adata: Any, *, label_key: str, seeds: int = 3, test_size: float = 0.2, name: str = "split",
                min_cells: int = 2) -> list[Task]:
    """Stratified reference/query splits (labels with fewer than ``min_cells`` cells stay in the reference).

    Parameters
    ----------
    adata : AnnData
        The labelled data to split.
    label_key : str
        Its obs column of labels, used as both the reference labels and the query truth.
    seeds : int
        Number of splits; split ``s`` uses seed ``s``.
    test_size : float
        Share of the splittable cells held out as the query.
    name : str
        Task names are ``<name> seed <s>``.
    min_cells : int
        Labels with fewer cells are never held out.

    Returns
    -------
    list of Task
        One per seed, with copies of the reference and query cells (cells keep their order).
    """
    from sklearn.model_selection import train_test_split

    labels = adata.obs[label_key].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    splittable = np.isin(labels, counts[counts >= min_cells].index)
    positions = np.flatnonzero(splittable)
    tasks = []
    for seed in range(seeds):
        train, test = train_test_split(positions, test_size=test_size, random_state=seed, stratify=labels[positions])
        keep = np.sort(np.concatenate([train, np.flatnonzero(~splittable)]))
        tasks.append(Task(f"{name} seed {seed}", adata[keep].copy(), adata[np.sort(test)].copy(), label_key, label_key,
                          seed))
    return tasks


def query_panel(task: Task) -> list[str]:
    """The human symbols the query measures: every method is fitted on reference genes in this panel.

    Parameters
    ----------
    task : Task
        Its query's genes are mapped to human symbols (:func:`screader_db.inputs.map_genes`).

    Returns
    -------
    list of str
        Sorted, without repeats; genes that map to no symbol are left out.
    """
    from screader_db.inputs import map_genes, open_expression

    return sorted({s for s in map_genes(open_expression(task.query)).symbols if s})


def _peer_inputs(task: Task, n_genes: int) -> tuple[Any, Any]:
    """Reference and query as log1p CP10k AnnData over the reference's variable genes that the query measures."""
    import anndata as ad

    from screader_db.features import highly_variable
    from screader_db.inputs import load_expression

    ref = load_expression(task.reference, target=query_panel(task))
    chosen = highly_variable(ref.X, n_genes)
    genes = [ref.genes[i] for i in chosen]
    qry = load_expression(task.query, target=genes, input_scale=task.input_scale)
    labels = task.reference.obs[task.label_key].astype(str).to_numpy()
    reference = ad.AnnData(X=ref.X[:, chosen], obs=pd.DataFrame({task.label_key: labels}, index=ref.obs.index),
                           var=pd.DataFrame(index=genes))
    query = ad.AnnData(X=qry.X, obs=pd.DataFrame(index=qry.obs.index), var=pd.DataFrame(index=genes))
    return reference, query


def _peer_labels(task: Task, kind: str, n_genes: int) -> np.ndarray:
    """CellTypist (its setting chosen on a reference split) or SingleR on the same genes."""
    from screader_db.peers import celltypist_best, singler_predict

    reference, query = _peer_inputs(task, n_genes)
    if kind == "singler":
        return singler_predict(reference, query, label_key=task.label_key)
    predicted, _ = celltypist_best(reference, query, label_key=task.label_key, seed=task.seed)
    return predicted


def _atlas_for(task: Task, spec: MethodSpec, *, n_genes: int, workdir: Path, built: dict[tuple[str, str], Any],
               reporter: Reporter) -> tuple[Any, float]:
    """The atlas of ``spec`` on the task's reference: built once per shared reference; seconds spent building."""
    from screader_db.builders.atlas import BuildSettings, build_atlas

    key = (task.shared_reference, spec.name)
    if key in built:
        return built[key], 0.0
    start = time.perf_counter()
    options = dict(spec.options)
    settings = BuildSettings(model=spec.model if spec.model != "none" else "minilm", method=spec.method, n_genes=n_genes,
                             layout="none", seed=task.seed,
                             **{k_: v for k_, v in options.items() if k_ not in QUERY_OPTIONS})
    built[key] = build_atlas(task.reference, workdir / f"atlas-{time.time_ns()}", label_key=task.label_key,
                             dataset_name="reference", settings=settings, reporter=reporter)
    return built[key], time.perf_counter() - start


def _atlas_labels(task: Task, spec: MethodSpec, atlas: Any, *, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels of the query cells, and the raw vote labels and panel use beside them."""
    import warnings

    from screader_db.annotation import annotate
    from screader_db.errors import ScreaderWarning

    options = dict(spec.options)
    query_options = {**FORCED, **{k_: v for k_, v in options.items() if k_ in QUERY_OPTIONS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScreaderWarning)
        result = annotate(task.query, atlas, input_scale=task.input_scale, **{"k": k, **query_options})
    extra: dict[str, Any] = {"raw_labels": result.table["raw_label"].astype(str).to_numpy(),
                             "panel": bool(result.info.get("panel", {}).get("used", False)),
                             "input_kind": result.info.get("input_kind", "")}
    if "train_seconds" in atlas.embedder.params:
        extra["train_seconds"] = atlas.embedder.params["train_seconds"]
    return result.labels.astype(str).to_numpy(), extra


@dataclass
class Evaluation:
    """Per-(task, method) scores and the predictions of every method on every task."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    truths: dict[str, np.ndarray] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        """Every run's scores, one row per (task, method).

        Returns
        -------
        pandas.DataFrame
            Columns ``task``, ``method``, ``row``, ``seconds``, ``build_seconds``, ``labels`` (the reference's),
            the :class:`~screader_db.metrics.Agreement` scores, and for atlas methods ``raw_right``,
            ``right_set_aside``, ``right_set_aside_share``, ``panel``, ``input_kind`` (``train_seconds`` for
            trained methods).
        """
        return pd.DataFrame(self.rows)

    def summary(self) -> pd.DataFrame:
        """Mean and spread (sd over tasks and seeds) of each method row.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``row`` in order of first run: ``<metric>_mean`` and ``<metric>_sd`` (population sd, 0.0
            for a single run) of ``accuracy``, ``macro_f1``, ``unassigned_rate``, ``assigned_precision`` and
            ``seconds``, and ``runs``.
        """
        frame = self.frame()
        metrics = ["accuracy", "macro_f1", "unassigned_rate", "assigned_precision", "seconds"]
        grouped = frame.groupby("row", sort=False)[metrics]
        out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).fillna(0.0).add_suffix("_sd"))
        out["runs"] = frame.groupby("row", sort=False).size()
        return out

    def markdown(self, title: str = "") -> str:
        """The summary as a Markdown table, one line per method row.

        Parameters
        ----------
        title : str
            A ``### title`` heading above the table; none when empty.

        Returns
        -------
        str
            Accuracy and macro-F1 as ``mean ± sd`` (the sd only for rows of several runs), Unassigned share,
            precision of assigned cells, runs and mean seconds.
        """
        summary = self.summary()
        lines = [f"### {title}", ""] if title else []
        lines += ["| method | accuracy | macro-F1 | Unassigned | precision of assigned | runs | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for row, r in summary.iterrows():
            def cell(metric: str, r: pd.Series = r) -> str:
                sd = r[f"{metric}_sd"]
                return f"{r[f'{metric}_mean']:.3f}" + (f" ± {sd:.3f}" if r["runs"] > 1 else "")

            lines.append(f"| {row} | {cell('accuracy')} | {cell('macro_f1')} | {r['unassigned_rate_mean']:.3f} | "
                         f"{r['assigned_precision_mean']:.3f} | {int(r['runs'])} | {r['seconds_mean']:.1f} |")
        return "\n".join(lines)

    def per_class(self) -> pd.DataFrame:
        """Per-class F1 of each method row (mean over runs).

        Returns
        -------
        pandas.DataFrame
            True labels (index) by method rows (columns); NaN where a row never scored a label.
        """
        records = [{"row": r["row"], "label": label, "f1": f1} for r in self.rows for label, f1 in r["per_class_f1"].items()]
        return pd.DataFrame(records).pivot_table(index="label", columns="row", values="f1", aggfunc="mean", sort=False)

    def write(self, folder: str | Path, *, title: str = "", confusion_for: str | None = None) -> list[Path]:
        """evaluation.md, evaluation.json and confusion.png (of ``confusion_for``, default the first method).

        Existing files of these names are replaced.

        Parameters
        ----------
        folder : str or Path
            Created with its parents if missing.
        title : str
            Heading of the Markdown table, and ``title`` in the JSON.
        confusion_for : str or None
            The method name (not the row) whose confusion matrix is drawn, on the first task it ran; only cells
            whose true label the first run's reference has are drawn.

        Returns
        -------
        list of Path
            The files written; confusion.png only when there are runs.
        """
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        text = self.markdown(title) + "\n\nPer-class F1 (mean over runs):\n\n" + frame_markdown(self.per_class())
        (target / "evaluation.md").write_text(text + "\n")
        payload = {"title": title, "summary": self.summary().reset_index().to_dict("records"), "runs": self.rows}
        (target / "evaluation.json").write_text(json.dumps(payload, indent=2, default=float))
        written = [target / "evaluation.md", target / "evaluation.json"]
        if self.rows:
            from screader_db.plots import plot_confusion

            method = confusion_for or self.rows[0]["method"]
            task = next(r["task"] for r in self.rows if r["method"] == method)
            known = set(self.rows[0]["labels"])
            truth = self.truths[task]
            keep = np.isin(truth, list(known))
            written.append(plot_confusion(self.predictions[(task, method)][keep], truth[keep], target / "confusion.png",
                                          title=f"{method} on {task}"))
        return written


def frame_markdown(frame: pd.DataFrame) -> str:
    """A numeric DataFrame as a Markdown table (3 decimals).

    Parameters
    ----------
    frame : pandas.DataFrame
        Numeric values; the index becomes the first column, headed by its name.

    Returns
    -------
    str
        The table, NaN shown as an empty cell.
    """
    header = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    lines = [header, "|" + "---|" * (len(frame.columns) + 1)]
    for index, row in frame.iterrows():
        values = ["" if pd.isna(v) else f"{v:.3f}" for v in row]
        lines.append("| " + " | ".join([str(index), *values]) + " |")
    return "\n".join(lines)


def evaluate(tasks: list[Task], specs: list[MethodSpec], *, k: int = 15, n_genes: int = 3000,
             workdir: str | Path | None = None, reporter: Reporter = SILENT) -> Evaluation:
    """Run every method on every task and score it (labels the reference lacks are not scored).

    Atlas methods are built once per shared reference and queried the way a user queries
    (a partial gene panel through a panel index); ``seconds`` is the query time plus the build
    time where the atlas was built for this task.

    Parameters
    ----------
    tasks : list of Task
        The reference/query pairs.
    specs : list of MethodSpec
        The methods, e.g. from :func:`standard_specs`.
    k : int
        Neighbours of the atlas methods' vote.
    n_genes : int
        Genes the atlases are built on, and the variable genes the peers are trained on.
    workdir : str, Path or None
        Folder of the temporary atlases (None: the system's), removed at the end.
    reporter : Reporter
        Gets one message per (task, method).

    Returns
    -------
    Evaluation

    Raises
    ------
    ScreaderError
        No task or no method; or any error of building, querying or of a peer (e.g. :class:`GeneOverlapError`,
        a peer not installed).
    """
    from screader_db.metrics import agreement

    if not tasks or not specs:
        raise ScreaderError("an evaluation needs at least one task and one method")
    result = Evaluation()
    built: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for task in tasks:
            truth = task.query.obs[task.truth_key].astype(str).to_numpy()
            known = sorted(set(task.reference.obs[task.label_key].astype(str)))
            result.truths[task.name] = truth
            for spec in specs:
                reporter.message(f"{task.name}: {spec.name}")
                start = time.perf_counter()
                extra: dict[str, Any] = {}
                build_seconds = 0.0
                if spec.kind in PEERS:
                    predicted = _peer_labels(task, spec.kind, n_genes)
                else:
                    atlas, build_seconds = _atlas_for(task, spec, n_genes=n_genes, workdir=Path(tmp), built=built,
                                                      reporter=SILENT)
                    start = time.perf_counter()
                    predicted, extra = _atlas_labels(task, spec, atlas, k=k)
                seconds = time.perf_counter() - start + build_seconds
                agree = agreement(predicted, truth, known=known)
                raw = extra.pop("raw_labels", None)
                if raw is not None:
                    extra.update(set_aside(predicted, raw, truth))
                result.predictions[(task.name, spec.name)] = predicted
                result.rows.append({"task": task.name, "method": spec.name, "row": spec.row, "seconds": seconds,
                                    "build_seconds": build_seconds, "labels": known, **agree.to_dict(), **extra})
    return result


def set_aside(predicted: np.ndarray, raw: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """How many cells the raw vote got right that the Unassigned rules set aside (count and share).

    Parameters
    ----------
    predicted, raw, truth : numpy.ndarray, shape (n_cells,)
        Final labels, the vote's labels before the Unassigned rules, and true labels.

    Returns
    -------
    dict
        ``raw_right`` (int), ``right_set_aside`` (int), and ``right_set_aside_share`` (float, of ``raw_right``;
        0.0 when it is 0).
    """
    right = raw == truth
    lost = right & (predicted == UNASSIGNED)
    return {"raw_right": int(right.sum()), "right_set_aside": int(lost.sum()),
            "right_set_aside_share": float(lost.sum() / max(int(right.sum()), 1))}


def run_evaluation(*, reference: str | Path, label_key: str, query: str | Path | None = None,
                   truth_key: str | None = None, split: float = 0.0, seeds: int = 3, model: str = "minilm",
                   methods: str | None = None, celltypist: bool = True, k: int = 15, n_genes: int = 3000,
                   out: str | Path | None = None, reporter: Reporter = SILENT) -> tuple[Evaluation, str]:
    """Evaluate from file paths or manifest names; returns the result and its Markdown table.

    With ``query``: one transfer task (the random twin runs ``seeds`` times). Without it:
    ``seeds`` stratified splits of the reference holding out ``split`` (default 0.2) of it.

    Parameters
    ----------
    reference : str or Path
        An .h5ad file or a manifest data set name.
    label_key : str
        The reference's obs column of labels.
    query : str, Path or None
        An .h5ad file or a manifest data set name; None evaluates on splits of the reference.
    truth_key : str or None
        The query's obs column of true labels; None uses ``label_key``.
    split : float
        Share held out per split; 0 means 0.2.
    seeds : int
        Splits, or random-vector twins for a transfer task.
    model : str
        Language model of the text methods.
    methods : str or None
        Comma-separated atlas methods; None runs ``marker``, ``marker-text`` and ``genept``.
    celltypist : bool
        Run CellTypist beside them.
    k : int
        Neighbours of the vote.
    n_genes : int
        Genes the atlases are built on.
    out : str, Path or None
        Folder to write the result to (:meth:`Evaluation.write`); None writes nothing.
    reporter : Reporter
        Gets one message per (task, method).

    Returns
    -------
    result : Evaluation
    markdown : str
        The summary table under a title naming the task, model, ``k`` and gene count.

    Raises
    ------
    InputDataError
        An input file is missing or not readable as AnnData.
    ScreaderError
        Fetching a manifest data set failed, or any error of :func:`evaluate`.
    """
    from screader_db.fetch import resolve_dataset
    from screader_db.inputs import read_h5ad

    ref = read_h5ad(resolve_dataset(reference))
    ref_name = Path(str(reference)).stem
    if query is not None:
        qry = read_h5ad(resolve_dataset(query))
        tasks = [Task(f"{ref_name} -> {Path(str(query)).stem}", ref, qry, label_key, truth_key or label_key)]
        title = f"{tasks[0].name} ({model}, k={k}, {n_genes} genes)"
        random_seeds = seeds
    else:
        tasks = split_tasks(ref, label_key=label_key, seeds=seeds, test_size=split or 0.2, name=ref_name)
        title = f"{ref_name}: {seeds} stratified {split or 0.2:.0%} splits ({model}, k={k}, {n_genes} genes)"
        random_seeds = 1
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else PROJECT_METHODS
    specs = standard_specs(model, methods=chosen, random_seeds=random_seeds, celltypist=celltypist)
    result = evaluate(tasks, specs, k=k, n_genes=n_genes, reporter=reporter)
    if out is not None:
        result.write(out, title=title)
    return result, result.markdown(title)
