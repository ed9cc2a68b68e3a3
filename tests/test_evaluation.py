"""The evaluation harness on generated data: splits, every method family, outputs."""

import json

import numpy as np
import pytest
from conftest import make_counts

from screader_db.evaluation import MethodSpec, Task, evaluate, split_tasks, standard_specs


def test_splits_are_stratified_and_disjoint():
    adata = make_counts(n_cells=200)
    tasks = split_tasks(adata, label_key="cell_type", seeds=2, test_size=0.25)
    assert len(tasks) == 2
    for task in tasks:
        assert not set(task.reference.obs_names) & set(task.query.obs_names)
        assert len(task.query) == 50
        shares = task.query.obs["cell_type"].value_counts(normalize=True)
        assert (shares > 0.2).all()
    assert set(tasks[0].query.obs_names) != set(tasks[1].query.obs_names)


def test_standard_specs_pair_text_with_random_twins():
    names = [s.name for s in standard_specs("minilm", methods=("marker", "genept"), random_seeds=2)]
    assert names == ["marker (default)", "marker (default), Unassigned rules on", "genept (minilm)", "genept (random:0)",
                     "genept (random:1)", "expression kNN", "PCA-50 kNN", "CellTypist"]
    assert {s.row for s in standard_specs("minilm", random_seeds=2)} >= {"genept (random vectors)",
                                                                        "marker-text (random vectors)"}


def test_evaluation_scores_every_method_and_writes_outputs(tmp_path):
    pytest.importorskip("celltypist")
    adata = make_counts(n_cells=240, seed=3)
    tasks = split_tasks(adata, label_key="cell_type", seeds=2)
    specs = [MethodSpec("genept (random:0)", model="random:16:0", group="random"),
             MethodSpec("genept (random:1)", model="random:16:1", group="random"),
             MethodSpec("expression kNN", model="none", method="expression"),
             MethodSpec("CellTypist", kind="celltypist")]
    result = evaluate(tasks, specs, n_genes=50)
    summary = result.summary()
    assert list(summary.index) == ["random", "expression kNN", "CellTypist"]
    assert summary.loc["random", "runs"] == 4
    assert (summary["accuracy_mean"] > 0.8).all()
    written = result.write(tmp_path / "eval", title="synthetic")
    assert {p.name for p in written} == {"evaluation.md", "evaluation.json", "confusion.png"}
    text = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| expression kNN |" in text and "±" in text and "Per-class F1" in text
    payload = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(payload["runs"]) == 8


def test_labels_the_reference_lacks_are_not_scored():
    reference = make_counts(n_cells=150, seed=4)
    query = make_counts(n_cells=90, seed=5)
    query.obs["cell_type"] = query.obs["cell_type"].astype(str).replace({"type2": "novel"})
    task = Task("transfer", reference, query, "cell_type", "cell_type")
    result = evaluate([task], [MethodSpec("expression kNN", model="none", method="expression")], n_genes=50)
    row = result.rows[0]
    assert row["n_scored"] == int(np.sum(query.obs["cell_type"] != "novel"))


def test_predictions_never_depend_on_the_query_labels():
    """Building and annotating see the query's expression only: shuffled truth labels change
    the scores, never a single prediction."""
    reference = make_counts(n_cells=150, seed=6)
    query = make_counts(n_cells=120, seed=7)
    shuffled = query.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(shuffled.obs["cell_type"].astype(str).to_numpy())
    specs = [MethodSpec("marker", model="none", method="marker", options=(("min_score", None), ("novelty", True))),
             MethodSpec("genept (random:0)", model="random:16:0")]
    truth = evaluate([Task("t", reference, query, "cell_type", "cell_type")], specs, n_genes=50)
    noise = evaluate([Task("t", reference, shuffled, "cell_type", "cell_type")], specs, n_genes=50)
    for spec in specs:
        np.testing.assert_array_equal(truth.predictions[("t", spec.name)], noise.predictions[("t", spec.name)])
    assert truth.rows[0]["accuracy"] > noise.rows[0]["accuracy"]


def test_the_suite_never_lets_query_labels_reach_building_or_annotating():
    """Every kind of suite task (a direction, gene panels, markers removed, thinning, other input
    scales, a coarse parent label): shuffled query truth changes no prediction."""
    from conftest import panel_genes

    from screader_db.suite import LABEL, NAMES, RULES, _labelled, suite_tasks

    genes = panel_genes(160)
    sources = {name: _labelled(make_counts(n_cells=150, genes=genes, seed=i), "cell_type") for i, name in enumerate(NAMES)}
    tasks = [t for t in suite_tasks(sources) if t.name.startswith("pbmc3k -> kang_ctrl")]
    assert len(tasks) == 11
    rng = np.random.default_rng(0)
    shuffled = []
    for task in tasks:
        query = task.query.copy()
        query.obs[LABEL] = rng.permutation(query.obs[LABEL].astype(str).to_numpy())
        shuffled.append(Task(task.name, task.reference, query, LABEL, LABEL, task.seed, reference_key=task.reference_key))
    specs = [RULES, MethodSpec("expression kNN", model="none", method="expression")]
    truth, noise = evaluate(tasks, specs, n_genes=100), evaluate(shuffled, specs, n_genes=100)
    for task in tasks:
        for spec in specs:
            np.testing.assert_array_equal(truth.predictions[(task.name, spec.name)], noise.predictions[(task.name, spec.name)])


def test_suite_variants_leave_their_sources_unchanged():
    from conftest import panel_genes

    from screader_db.suite import NAMES, _labelled, suite_tasks

    genes = panel_genes(120)
    sources = {name: _labelled(make_counts(n_cells=80, genes=genes, seed=i), "cell_type") for i, name in enumerate(NAMES)}
    before = {name: (a.X.copy(), a.obs.copy()) for name, a in sources.items()}
    suite_tasks(sources)
    for name, (X, obs) in before.items():
        assert (sources[name].X != X).nnz == 0, name
        assert sources[name].obs.equals(obs), name


def test_a_lineage_atlas_keeps_only_the_lineage_and_measures_every_other_label():
    from screader_db.suite import ENDOCRINE, LABEL, LINEAGE_DIRECTIONS, _labelled, lineage_tasks

    names = np.array([*ENDOCRINE, "pancreatic ductal cell", "macrophage"])
    sources = {}
    for i, name in enumerate(("baron_human", "baron_mouse")):
        adata = _labelled(make_counts(n_cells=60, seed=i), "cell_type")
        adata.obs[LABEL] = names[np.arange(60) % len(names)]
        sources[name] = adata
    found = lineage_tasks(sources, LINEAGE_DIRECTIONS)
    assert [task for task, *_ in found] == ["baron_human -> baron_mouse", "baron_mouse -> baron_human"]
    for _, _, kept, query, others in found:
        assert set(kept.obs[LABEL]) == set(ENDOCRINE) and kept.n_obs == 40
        assert others == ["macrophage", "pancreatic ductal cell"] and query.n_obs == 60
