"""A Python client for ``screader-db serve``: annotate cells against a lab's shared atlas over HTTP.

    client = Client("http://atlas-host:8000")
    result = client.annotate(adata, k=15, min_margin=0.1)   # the options of screader_db.annotate; an AnnotationResult
    hits = client.search(centroid_of="B", k=50)             # the options of screader_db.cell_search.search; a SearchResult
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from screader_db.errors import InputDataError, RemoteError, ScreaderError
from screader_db.extras import require
from screader_db.options import AnnotateOptions, SearchOptions
from screader_db.results import AnnotationResult

if TYPE_CHECKING:
    from screader_db.cell_search import SearchResult

TIMEOUT = 300.0
CLIENT = "the screader-db client"


class Client:
    """Talks to one screader-db server; use it as a context manager, or call :meth:`close`.

    Parameters
    ----------
    url : str
        The server's address (``http://atlas-host:8000``).
    token : str or None
        Needed only to add or remove data sets.
    timeout : float
        Seconds one request may take.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = TIMEOUT) -> None:
        httpx = require("httpx", extra="client", purpose=CLIENT)
        require("pydantic", extra="client", purpose=CLIENT)  # screader_db.payloads reads the server's answers with it
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = require("httpx", extra="client", purpose=CLIENT)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            message = (f"cannot reach the screader-db server at {self.url} ({type(err).__name__}: {err}); "
                       "check the address, or start it with `screader-db serve --atlas DIR`")
            raise RemoteError(message) from err
        if response.status_code >= 400:
            try:
                detail = response.json().get("error") or response.text
            except ValueError:
                detail = response.text.strip() or response.reason_phrase
            message = f"{method} {path} failed with HTTP {response.status_code}: {detail}"
            raise RemoteError(message, status=response.status_code)
        return response.json()

    def health(self) -> dict[str, Any]:
        """The served atlas's status.

        Returns
        -------
        dict
            Status, atlas name and version, model id, method, cells, data sets and dimensions.
        """
        return dict(self._request("GET", "/health"))

    def datasets(self) -> list[dict[str, Any]]:
        """The reference data sets of the current version.

        Returns
        -------
        list of dict
            One per data set: name, cells, labels, species, when and by whom it was added.
        """
        return list(self._request("GET", "/datasets")["datasets"])

    def versions(self) -> list[dict[str, Any]]:
        """Every version of the atlas, oldest first.

        Returns
        -------
        list of dict
            One per version; ``current`` marks the one served.
        """
        return list(self._request("GET", "/versions")["versions"])

    def annotate(self, adata: Any, *, options: AnnotateOptions | None = None, **flat_options: Any) -> AnnotationResult:
        """Label the cells of an AnnData or .h5ad file on the server, uploaded as .h5ad.

        Parameters
        ----------
        adata : AnnData, str or Path
            The query cells.
        options : AnnotateOptions or None
            The options of :func:`screader_db.annotate` (:mod:`screader_db.options`); the server
            annotates against its current atlas version (``version`` pins it: another is refused).
        **flat_options
            Options by their flat names (``k=15``, ``min_margin=0.1``), applied over ``options``.

        Returns
        -------
        AnnotationResult
            The per-cell table, the atlas's labels and info; its embeddings and neighbour arrays
            are empty (they stay on the server).

        Raises
        ------
        ScreaderError
            An unknown option name (nothing is sent).
        RemoteError
            The server refused the request or could not be reached; the message says why.
        """
        from screader_db.payloads import result_from_payload

        params = annotate_params(options, **flat_options)
        with _as_h5ad(adata) as path, open(path, "rb") as handle:
            payload = self._request("POST", "/annotate", params=params,
                                    files={"file": (path.name, handle, "application/octet-stream")})
        return result_from_payload(payload)

    def annotate_counts(self, counts: Any, *, genes: list[str], cells: list[str] | None = None,
                        options: AnnotateOptions | None = None, **flat_options: Any) -> AnnotationResult:
        """Label cells given as a cells × genes matrix (raw counts or log-normalised), sent as JSON.

        Parameters
        ----------
        counts : array-like or sparse matrix
            Cells × genes values.
        genes : list of str
            The genes, one per column.
        cells : list of str or None
            The cell names, one per row (default: cell0, cell1, ...).
        options, **flat_options
            As for :meth:`annotate`.

        Returns
        -------
        AnnotationResult
            As for :meth:`annotate`.
        """
        import numpy as np

        from screader_db.payloads import result_from_payload

        params = annotate_params(options, **flat_options)
        matrix = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        body = {"genes": [str(g) for g in genes], "counts": matrix.astype(float).tolist()}
        if cells is not None:
            body["cells"] = [str(c) for c in cells]
        return result_from_payload(self._request("POST", "/annotate", params=params, json=body))

    def add_dataset(self, adata: Any, *, name: str, label_key: str) -> dict[str, Any]:
        """Add a labelled data set to the atlas as a new version; needs the token.

        Parameters
        ----------
        adata : AnnData, str or Path
            The labelled cells.
        name : str
            The data set's name in the atlas.
        label_key : str
            The obs column of its labels.

        Returns
        -------
        dict
            The data set's name, the new version and its number of cells.
        """
        with _as_h5ad(adata, stem=name) as path, open(path, "rb") as handle:
            return dict(self._request("POST", "/datasets", data={"name": name, "label_key": label_key},
                                      files={"file": (path.name, handle, "application/octet-stream")}))

    def remove_dataset(self, name: str) -> dict[str, Any]:
        """Remove a data set from the atlas (a new version); needs the token.

        Parameters
        ----------
        name : str
            The data set's name.

        Returns
        -------
        dict
            The name removed, the new version and its number of cells.
        """
        from urllib.parse import quote

        return dict(self._request("DELETE", f"/datasets/{quote(name, safe='')}"))

    def search(self, *, cells: Any = None, ids: Any = None, centroid_of: Any = None, signature: Any = None,
               options: SearchOptions | None = None, **flat_options: Any) -> SearchResult:
        """The atlas cells most like a query, searched on the server (:func:`screader_db.cell_search.search`).

        Parameters
        ----------
        cells : AnnData, str or Path
            Query cells, uploaded as .h5ad; each cell is a query.
        ids : sequence of int
            Atlas cell ids, each a query.
        centroid_of : sequence of int, or str
            Atlas cell ids, or a label: their centroid is the query.
        signature : mapping, DataFrame, Series, sequence, str or Path
            Genes with weights, read here (a file is read on this machine) and sent as JSON.
        options : SearchOptions or None
            The options (:mod:`screader_db.options`); the server searches its current atlas version.
        **flat_options
            Options by their flat names (``k=50``, ``where="label = 'B'"``), applied over ``options``.

        Returns
        -------
        SearchResult
            The hits and what was searched.

        Raises
        ------
        ScreaderError
            Not exactly one query, an unknown option name, or ids that are not whole numbers (nothing is sent).
        InputDataError
            A signature that cannot be read.
        RemoteError
            The server refused the request or could not be reached; the message says why.
        """
        from screader_db.cell_search import QUERY_FLAGS, SearchResult, parse_cell_ids
        from screader_db.gene_signatures import read_signature

        params = search_params(options, **flat_options)
        given = [name for name, value in (("cells", cells), ("ids", ids), ("centroid_of", centroid_of),
                                          ("signature", signature)) if value is not None]
        if len(given) != 1:
            raise ScreaderError(f"give exactly one query: {QUERY_FLAGS}; got {' and '.join(given) or 'none'}")
        if cells is not None:
            with _as_h5ad(cells) as path, open(path, "rb") as handle:
                payload = self._request("POST", "/search", params=params,
                                        files={"file": (path.name, handle, "application/octet-stream")})
            return SearchResult.from_payload(payload)
        body: dict[str, Any]
        if ids is not None:
            body = {"ids": parse_cell_ids(ids, "--ids").tolist()}
        elif isinstance(centroid_of, str):
            body = {"centroid_of_label": centroid_of}
        elif centroid_of is not None:
            body = {"centroid_of_ids": parse_cell_ids(centroid_of, "--centroid-of-ids").tolist()}
        else:
            body = {"signature": read_signature(signature)}
        return SearchResult.from_payload(self._request("POST", "/search", params=params, json=body))


def search_params(options: SearchOptions | None = None, **flat_options: Any) -> dict[str, Any]:
    """The query parameters of ``/search`` for some search options.

    Parameters
    ----------
    options : SearchOptions or None
        The options; None: every default.
    **flat_options
        Options by their flat names (:data:`screader_db.options.SEARCH_OPTIONS`), applied over ``options``.

    Returns
    -------
    dict
        Every option that differs from its default (the server's default is the same), as text:
        booleans ``true``/``false``, lists as repeated parameters.

    Raises
    ------
    ScreaderError
        A name that is no search option.
    """
    return _changed_params((options or SearchOptions()).updated(**flat_options).flat(), SearchOptions().flat())


def annotate_params(options: AnnotateOptions | None = None, **flat_options: Any) -> dict[str, Any]:
    """The query parameters of ``POST /annotate`` for some annotate options.

    Parameters
    ----------
    options : AnnotateOptions or None
        The options; None: every default.
    **flat_options
        Options by their flat names (:data:`screader_db.options.ANNOTATE_OPTIONS`), applied over ``options``.

    Returns
    -------
    dict
        Every option that differs from its default (the server's default is the same), as text:
        booleans ``true``/``false``, lists as repeated parameters.

    Raises
    ------
    ScreaderError
        A name that is no annotate option.
    """
    return _changed_params((options or AnnotateOptions()).updated(**flat_options).flat(), AnnotateOptions().flat())


def _changed_params(chosen: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``chosen`` that differs from ``defaults``, as query-parameter text."""
    params: dict[str, Any] = {}
    for key, value in chosen.items():
        if value is None or value == defaults[key]:
            continue
        if isinstance(value, bool):
            params[key] = str(value).lower()
        elif isinstance(value, list | tuple):
            params[key] = [str(v) for v in value]
        else:
            params[key] = str(value)
    return params


@contextmanager
def _as_h5ad(adata: Any, *, stem: str = "query") -> Iterator[Path]:
    if isinstance(adata, str | Path):
        path = Path(adata)
        if not path.is_file():
            raise InputDataError(f"{path} does not exist; pass an AnnData or the path of an .h5ad file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="screader-client-") as folder:
        path = Path(folder) / f"{Path(stem).name or 'query'}.h5ad"
        adata.write_h5ad(path)
        yield path
