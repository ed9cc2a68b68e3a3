"""A Python client for ``screader-db serve``: annotate cells against a lab's shared atlas over HTTP.

    client = Client("http://atlas-host:8000")
    result = client.annotate(adata, k=15)       # an AnnotationResult: .to_frame(), .summary(), .labels
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from screader_db.errors import InputDataError, RemoteError
from screader_db.results import AnnotationResult

TIMEOUT = 300.0


class Client:
    """Talks to one screader-db server. ``token`` is needed only to add or remove data sets."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = TIMEOUT) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

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
        """Status, atlas version, model id and cell count of the served atlas."""
        return dict(self._request("GET", "/health"))

    def datasets(self) -> list[dict[str, Any]]:
        """The reference data sets of the current version."""
        return list(self._request("GET", "/datasets")["datasets"])

    def versions(self) -> list[dict[str, Any]]:
        """Every version of the atlas, oldest first (``current`` marks the one served)."""
        return list(self._request("GET", "/versions")["versions"])

    def annotate(self, adata: Any, **options: Any) -> AnnotationResult:
        """Label the cells of ``adata`` (an AnnData or an .h5ad path), uploaded as .h5ad.

        ``options`` are those of :func:`screader_db.annotate` the server accepts: ``k``,
        ``min_score``, ``species``, ``level``, ``gene_key``, ``layer``, ``use_raw``,
        ``majority_voting``, ``model``, ``datasets``, ``labels``, ``exclude_labels``. The result has the per-cell table, the atlas's labels
        and info; its embeddings and neighbour arrays are empty (they stay on the server).
        """
        from screader_db.payloads import result_from_payload

        with _as_h5ad(adata) as path, open(path, "rb") as handle:
            payload = self._request("POST", "/annotate", params=_params(options),
                                    files={"file": (path.name, handle, "application/octet-stream")})
        return result_from_payload(payload)

    def annotate_counts(self, counts: Any, *, genes: list[str], cells: list[str] | None = None,
                        **options: Any) -> AnnotationResult:
        """Label cells given as a cells × genes matrix (raw counts or log-normalised), sent as JSON."""
        import numpy as np

        from screader_db.payloads import result_from_payload

        matrix = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        body = {"genes": [str(g) for g in genes], "counts": matrix.astype(float).tolist()}
        if cells is not None:
            body["cells"] = [str(c) for c in cells]
        return result_from_payload(self._request("POST", "/annotate", params=_params(options), json=body))

    def add_dataset(self, adata: Any, *, name: str, label_key: str) -> dict[str, Any]:
        """Add a labelled data set (AnnData or .h5ad path) to the atlas as a new version; needs the token."""
        with _as_h5ad(adata, stem=name) as path, open(path, "rb") as handle:
            return dict(self._request("POST", "/datasets", data={"name": name, "label_key": label_key},
                                      files={"file": (path.name, handle, "application/octet-stream")}))

    def remove_dataset(self, name: str) -> dict[str, Any]:
        """Remove a data set from the atlas (a new version); needs the token."""
        from urllib.parse import quote

        return dict(self._request("DELETE", f"/datasets/{quote(name, safe='')}"))


def _params(options: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
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
