"""Helpers shared by tests: small atlases built with the random gene model."""

from __future__ import annotations

from pathlib import Path

from conftest import make_counts

from screader_db.builders.atlas import BuildSettings, build_atlas

SETTINGS = BuildSettings(model="random:16", n_genes=50, layout="none")


def small_atlas(root: Path, *, n_cells: int = 200, seed: int = 0, overwrite: bool = False) -> Path:
    build_atlas(make_counts(n_cells=n_cells, seed=seed), root, label_key="cell_type", dataset_name="synthetic",
                settings=SETTINGS, overwrite=overwrite)
    return root
