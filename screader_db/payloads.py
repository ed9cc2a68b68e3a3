"""The JSON the server and client exchange: count matrices in, per-cell annotation rows out."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import InputDataError
from screader_db.extras import missing_extra
from screader_db.results import AnnotationResult

try:
    from pydantic import BaseModel, Field, ValidationError
except ImportError as err:
    raise missing_extra(err, extra="server", purpose="the server's JSON payloads") from err


class CountsRequest(BaseModel):
    """The JSON body of ``POST /annotate``: cells × genes expression, raw counts or log-normalised values.

    Parameters
    ----------
    genes : list of str
        Gene symbols (or Ensembl ids), one per column.
    cells : list of str or None
        Cell names, one per row.
    counts : list of list of float
        One row per cell.
    """

    genes: list[str] = Field(description="gene symbols (or Ensembl ids), one per column of counts")
    cells: list[str] | None = Field(default=None, description="cell names, one per row (default: cell0, cell1, ...)")
    counts: list[list[float]] = Field(description="one row per cell, one value per gene")


def parse_counts(body: bytes) -> CountsRequest:
    """Parse and check a JSON counts request.

    Parameters
    ----------
    body : bytes
        The request body.

    Returns
    -------
    CountsRequest

    Raises
    ------
    InputDataError
        The body is not such a request, or its rows, genes and cell names do not fit together;
        the message says what to send.
    """
    try:
        request = CountsRequest.model_validate_json(body)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        message = f"the JSON body is not {{\"genes\": [...], \"cells\": [...], \"counts\": [[...], ...]}}: {problems}"
        raise InputDataError(message) from err
    n_genes = len(request.genes)
    if not request.counts or not n_genes:
        raise InputDataError("the JSON body has no cells or no genes; send at least one row of counts and one gene")
    bad = next((i for i, row in enumerate(request.counts) if len(row) != n_genes), None)
    if bad is not None:
        message = f"row {bad} of counts has {len(request.counts[bad])} values for {n_genes} genes; each row needs one value per gene"
        raise InputDataError(message)
    if request.cells is not None and len(request.cells) != len(request.counts):
        message = f"{len(request.cells)} cell names for {len(request.counts)} rows of counts; send one name per row"
        raise InputDataError(message)
    return request


def counts_adata(request: CountsRequest) -> Any:
    """The AnnData of a counts request.

    Parameters
    ----------
    request : CountsRequest
        A checked request (:func:`parse_counts`).

    Returns
    -------
    anndata.AnnData
        A sparse float32 matrix; cells named ``cell0``, ``cell1``, ... unless the request names them.
    """
    import anndata as ad
    import scipy.sparse as sp

    matrix = np.asarray(request.counts, dtype=np.float32)
    names = request.cells if request.cells is not None else [f"cell{i}" for i in range(len(matrix))]
    return ad.AnnData(X=sp.csr_matrix(matrix), obs=pd.DataFrame(index=pd.Index(names, dtype=str)),
                      var=pd.DataFrame(index=pd.Index(request.genes, dtype=str)))


def _column(values: pd.Series) -> list[Any]:
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values.tolist()]
    if np.issubdtype(values.dtype, np.floating):
        return [float(v) if math.isfinite(v) else None for v in values.tolist()]
    return values.tolist()


def result_payload(result: AnnotationResult) -> dict[str, Any]:
    """The JSON answer of ``POST /annotate``.

    Parameters
    ----------
    result : AnnotationResult
        The annotation.

    Returns
    -------
    dict
        ``{"cells": [{"cell": ..., "label": ..., ...}, ...], "labels": [...], "info": {...}}``: one
        row per cell with every column of the result's table (NaN as null), the atlas's labels and
        the info as JSON values.
    """
    frame = result.table.rename_axis("cell").reset_index()
    columns = {name: _column(frame[name]) for name in frame.columns}
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    info = json.loads(json.dumps(result.info, default=str))
    return {"cells": rows, "labels": list(result.atlas_labels), "info": info}


def result_from_payload(payload: dict[str, Any]) -> AnnotationResult:
    """The AnnotationResult of the server's JSON answer.

    Parameters
    ----------
    payload : dict
        As :func:`result_payload` makes it.

    Returns
    -------
    AnnotationResult
        The per-cell table, labels and info; no vectors or neighbours (they stay on the server).
    """
    frame = pd.DataFrame.from_records(payload["cells"])
    if "cell" in frame:
        frame = frame.set_index("cell")
    frame.index = frame.index.astype(str)
    frame.index.name = None
    for name in ("score", "margin", "mean_similarity", "majority_share"):
        if name in frame:
            frame[name] = frame[name].astype(float)
    n = len(frame)
    return AnnotationResult(table=frame, embeddings=np.empty((n, 0), dtype=np.float32),
                            neighbour_ids=np.empty((n, 0), dtype=np.int64),
                            neighbour_similarities=np.empty((n, 0), dtype=np.float32),
                            atlas_labels=list(payload.get("labels", [])), info=dict(payload.get("info", {})))
