"""What one request to the server may cost, and the checks that hold requests to it.

Bytes alone do not bound a request's cost. An .h5ad of a few megabytes can declare 100,000
dense cells, and a JSON body takes about 47 times its size in memory while it is parsed (each
count becomes a Python float inside a list of lists: ~67 bytes per value, measured with
tracemalloc, against 2-4 bytes of text, plus the body itself and the matrix made from it).
So a request is held to its declared size too: the cells and cells × genes an .h5ad declares in
its HDF5 shapes, read before its matrix is touched, and the values a JSON body holds, counted in
its bytes before it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from screader_db.errors import RequestTooLargeError, ScreaderError

# JSON bodies take ~47x their size in memory while parsed (see above): 32 MB is ~1.5 GB at peak,
# and at most one body per CPU core is parsed at a time.
JSON_EXPANSION = 47


@dataclass(frozen=True)
class ServerLimits:
    """The bounds ``screader-db serve`` holds every connection and request to (``serve --help``)."""

    max_upload_bytes: int = 512_000_000  # an .h5ad upload, streamed to disk
    max_json_bytes: int = 32_000_000  # a JSON counts body, parsed in memory
    max_cells: int = 50_000  # cells one request may declare
    max_values: int = 2_000_000_000  # cells × genes one request may declare
    max_connections: int = 1000  # open connections; more are answered 503 and closed
    header_timeout: float = 10.0  # seconds to send a request's headers
    keep_alive: int = 5  # seconds an idle connection is kept between requests
    max_header_bytes: int = 16_384  # the request line and headers together

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_json_bytes", "max_cells", "max_values", "max_connections",
                     "header_timeout", "keep_alive", "max_header_bytes"):
            value = getattr(self, name)
            if not value > 0:
                raise ScreaderError(f"{name} must be above 0, got {value}")

    def connection_cap(self) -> int:
        """``max_connections``, lowered to what this process may open (its file limit, less a margin).

        Returns
        -------
        int
            ``min(max_connections, soft RLIMIT_NOFILE - 64)``, at least 1; ``max_connections`` when the
            limit is unlimited or cannot be read.
        """
        try:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):
            return self.max_connections
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, int(soft) - 64))


def check_declared(n_cells: int, n_genes: int, limits: ServerLimits, *, what: str) -> None:
    """Refuse a request declaring more cells, or more cells × genes, than ``limits`` allow.

    Parameters
    ----------
    n_cells, n_genes : int
        The cells and genes the request declares.
    limits : ServerLimits
        The server's bounds (``max_cells``, ``max_values``).
    what : str
        What declared them, to open the message ("the upload").

    Raises
    ------
    RequestTooLargeError
        ``n_cells`` is above ``max_cells``, or ``n_cells × n_genes`` above ``max_values``.
    """
    if n_cells > limits.max_cells:
        message = (f"{what} declares {n_cells:,} cells; this server annotates at most {limits.max_cells:,} cells per "
                   "request. Send the cells in several requests")
        raise RequestTooLargeError(message)
    if n_cells * n_genes > limits.max_values:
        message = (f"{what} declares {n_cells:,} cells × {n_genes:,} genes = {n_cells * n_genes:,} values; this server "
                   f"accepts at most {limits.max_values:,} per request. Send fewer cells per request, or only the "
                   "genes measured")
        raise RequestTooLargeError(message)


def check_json_body(body: bytes, limits: ServerLimits) -> None:
    """Refuse a JSON body holding more values than ``limits`` allow, counted before it is parsed.

    Every value but the last of an array is followed by a comma, so commas + 1 bounds them.

    Parameters
    ----------
    body : bytes
        The raw request body.
    limits : ServerLimits
        The server's bounds (``max_values``).

    Raises
    ------
    RequestTooLargeError
        The body holds more than ``max_values`` values by that count.
    """
    values = body.count(b",") + 1
    if values > limits.max_values:
        message = (f"the JSON body holds about {values:,} values; this server accepts at most {limits.max_values:,} "
                   "(cells × genes) per request. Send fewer cells per request")
        raise RequestTooLargeError(message)


def h5ad_shape(path: Path, *, layer: str | None = None, use_raw: bool = False) -> tuple[int, int] | None:
    """(cells, genes) an .h5ad declares for the matrix that would be read, from the HDF5 shapes alone.

    No matrix data is read.

    Parameters
    ----------
    path : Path
        The uploaded .h5ad.
    layer : str or None
        The layer that would be read (``layers/<layer>``); None reads ``X``.
    use_raw : bool
        Read ``raw/X``, with genes from ``raw/var`` (``layer`` is then ignored).

    Returns
    -------
    tuple of (int, int) or None
        The larger of the obs/var index lengths and the matrix's declared shape, per axis (0 where
        neither is found); None when the file is not an HDF5 file the reader knows.
    """
    import h5py

    matrix = "raw/X" if use_raw else ("X" if layer is None else f"layers/{layer}")
    try:
        with h5py.File(path, "r") as handle:
            rows, columns = _length(handle, "obs"), _length(handle, "raw/var" if use_raw else "var")
            shape = _matrix_shape(handle, matrix)
            if shape is not None:
                rows, columns = max(rows, shape[0]), max(columns, shape[1])
            return rows, columns
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _length(handle: Any, group: str) -> int:
    """Rows of an AnnData dataframe group (obs, var): the length of its index dataset."""
    import h5py

    found = handle.get(group)
    if not isinstance(found, h5py.Group):
        return 0
    index = found.attrs.get("_index", "_index")
    column = found.get(index.decode() if isinstance(index, bytes) else str(index))
    return int(column.shape[0]) if isinstance(column, h5py.Dataset) and column.shape else 0


def _matrix_shape(handle: Any, name: str) -> tuple[int, int] | None:
    import h5py

    found = handle.get(name)
    if isinstance(found, h5py.Dataset) and len(found.shape) == 2:
        return int(found.shape[0]), int(found.shape[1])
    if isinstance(found, h5py.Group) and "shape" in found.attrs:
        shape = [int(v) for v in found.attrs["shape"]]
        if len(shape) == 2:
            return shape[0], shape[1]
    return None

