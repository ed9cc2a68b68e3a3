"""Library messages worded for HTTP callers: field names for flags, no command-line remedies, no paths."""

import tempfile
from pathlib import Path

from screader_db.api_errors import api_wording, status_of, without_paths
from screader_db.errors import (
    AtlasDamagedError,
    AtlasError,
    GeneOverlapError,
    InputDataError,
    ModelMismatchError,
    RequestTooLargeError,
    ScreaderError,
)

FIELDS = {"gene_key", "species", "layer", "use_raw", "input_scale", "datasets", "labels", "exclude_labels", "model",
          "label_key", "name"}


def test_flags_become_fields_and_command_line_remedies_are_left_out():
    assert api_wording("the file has no expression matrix in .X; pass --layer or --use-raw", FIELDS) == \
        "the file has no expression matrix in .X; pass layer or use_raw=true"
    assert api_wording("Pass --input-scale counts|ln|log2|log10|linear to say what it is, or pass raw counts "
                       "(--layer counts)", FIELDS) == \
        "Pass input_scale=counts|ln|log2|log10|linear to say what it is, or pass raw counts (layer=counts)"
    assert api_wording("Many names look like mouse symbols; pass --species mouse.", FIELDS) == \
        "Many names look like mouse symbols; pass species=mouse"
    assert api_wording("another process is writing to the atlas at lab (lock lab/.lock); wait for it to finish, or "
                       "pass --wait SECONDS to wait for it", FIELDS) == \
        "another process is writing to the atlas at lab (lock lab/.lock)"
    assert api_wording("no atlas at lab: the folder does not exist. Build one with `screader-db build --reference ...`",
                       FIELDS) == "no atlas at lab: the folder does not exist"
    assert "--" not in api_wording("--gene-key 'x' is not a var column; columns present: a, b", FIELDS)


def test_paths_of_the_server_are_left_out(tmp_path):
    root = tmp_path / "lab"
    upload = Path(tempfile.gettempdir()) / "screader-upload-abc123" / "cells.h5ad"
    message = f"cannot read {root}/versions/000001/index.faiss; and {upload} is empty"
    assert without_paths(message, root) == "cannot read lab/versions/000001/index.faiss; and cells.h5ad is empty"


def test_one_status_per_kind_of_error():
    assert [status_of(e) for e in (ScreaderError("option"), InputDataError("data"), GeneOverlapError("genes"),
                                   RequestTooLargeError("big"), ModelMismatchError("model"), AtlasError("atlas"),
                                   AtlasDamagedError("damaged", file="x"))] == [400, 422, 422, 413, 409, 503, 503]
