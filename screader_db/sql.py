"""Read-only SQL over one atlas version: the catalogue tables and the cell vectors, through DuckDB.

Each :class:`AtlasSQL` is a fresh in-memory DuckDB that attaches the version's ``atlas.duckdb``
READ_ONLY and exposes views named after the catalogue tables (``cells``, ``datasets``, ``genes``,
``gene_embeddings``, ``builds``, ``files``, ``provenance``) plus ``cell_vectors`` (cell_id,
dataset, embedding) over ``cells/*.parquet``. Then file access is switched off
(``enable_external_access=false``) and the settings are locked (``lock_configuration=true``), so
a query can read nothing but the atlas and cannot undo either setting.

Only one SELECT-type statement runs per call (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW,
SUMMARIZE, EXPLAIN of a SELECT, and a few PRAGMAs that only read). Everything else is refused
from DuckDB's own parse of the statement before it runs.

A statement runs for at most ``timeout`` seconds, rows read included: DuckDB has no statement
timeout of its own, so a watchdog thread interrupts the connection. What does not fit in memory
spills to a folder inside the atlas's scratch area (``ATLAS/.tmp/sql-*``, removed on close), at
most ``max_spill_bytes`` of it, never to the working folder.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from screader_db import atlas_format, store
from screader_db.catalogue import SCHEMA
from screader_db.errors import InputDataError, SqlError
from screader_db.integrity import reading
from screader_db.outputs import atomic_write, refuse_existing

VECTOR_VIEW = "cell_vectors"
VECTOR_COLUMNS = ("cell_id", "dataset", "embedding")
VIEWS = (*SCHEMA, VECTOR_VIEW)
READ_PRAGMAS = frozenset({"table_info", "show", "show_tables", "show_tables_expanded", "database_list", "version",
                          "platform", "database_size", "storage_info", "functions", "collations"})
ALLOWED = "SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of a SELECT, read-only PRAGMAs"
BATCH = 10_000
TIMEOUT = 60.0
MAX_SPILL_BYTES = 4_000_000_000
SPILL_PREFIX = "sql-"
_LEADING = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_EXPLAIN = re.compile(r"EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?", re.I)
_PRAGMA = re.compile(r"PRAGMA\s+(\w+)", re.I)


def _body(text: str) -> str:
    """The statement without leading blanks and comments."""
    return _LEADING.sub("", text, count=1)


def _keyword(text: str) -> str:
    word = re.match(r"[A-Za-z_]+", _body(text))
    return word.group(0).upper() if word else "?"


def _refuse(what: str, kind: str) -> SqlError:
    message = (
        f"`sql` is read-only: refused the {what} (DuckDB statement type {kind}); it runs one SELECT-type "
        f"statement ({ALLOWED}) over the views {', '.join(VIEWS)}"
    )
    return SqlError(message)


def check_read_only(con: Any, sql: str) -> None:
    """Refuse anything but a single SELECT-type statement, from DuckDB's parse of ``sql``.

    Allowed: SELECT (WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE parse as SELECT), a PRAGMA in
    :data:`READ_PRAGMAS`, and EXPLAIN (ANALYZE) of a SELECT.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The connection whose parser reads ``sql``; nothing is run.
    sql : str
        The statement text.

    Raises
    ------
    SqlError
        The text does not parse, holds no statement or more than one, or its statement is of another kind.
    """
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise SqlError(f"cannot parse the SQL: {_first_lines(err)}") from err
    if len(statements) != 1:
        message = (f"`sql` runs exactly one statement; found {len(statements)}"
                   + ("" if statements else " (the text is empty or only comments)"))
        raise SqlError(message)
    statement = statements[0]
    kind = statement.type.name
    text = statement.query
    if kind == "SELECT":
        return
    if kind == "PRAGMA":
        name = _PRAGMA.match(_body(text))
        if name and name.group(1).lower() in READ_PRAGMAS:
            return
        raise _refuse(f"PRAGMA {name.group(1) if name else ''} statement".replace("  ", " "), kind)
    if kind == "EXPLAIN":
        _check_explained(con, _body(text))
        return
    raise _refuse(f"{_keyword(text)} statement", kind)


def _check_explained(con: Any, body: str) -> None:
    """EXPLAIN ANALYZE runs the statement it explains, so that statement must be a SELECT too."""
    import duckdb

    prefix = _EXPLAIN.match(body)
    inner = body[prefix.end():] if prefix else ""
    try:
        statements = con.extract_statements(inner) if inner.strip() else []
    except duckdb.Error:
        statements = []
    if len(statements) != 1 or statements[0].type.name != "SELECT":
        kind = statements[0].type.name if len(statements) == 1 else "unknown"
        raise _refuse(f"EXPLAIN of a {_keyword(inner) if inner.strip() else 'missing'} statement", kind)


def _first_lines(err: BaseException) -> str:
    """DuckDB's message without the caret drawing under ``LINE n:``."""
    kept = []
    for line in str(err).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept)


class AtlasSQL:
    """A locked-down DuckDB connection over one atlas version. Use as a context manager::

        with AtlasSQL("atlases/lab") as db:
            frame = db.frame("SELECT label, count(*) FROM cells GROUP BY 1")

    ``timeout`` (seconds; None: no limit) bounds each statement, ``max_spill_bytes`` what it may
    spill to disk.
    """

    def __init__(self, atlas: str | Path | store.Atlas, *, version: int | None = None, timeout: float | None = TIMEOUT,
                 max_spill_bytes: int = MAX_SPILL_BYTES) -> None:
        import duckdb

        opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
        self.atlas = opened
        self.timeout = timeout if timeout and timeout > 0 else None
        catalogue = opened.path / atlas_format.CATALOGUE
        if not catalogue.is_file():
            message = (f"atlas version {opened.path} has no {atlas_format.CATALOGUE}; rebuild it with "
                       "`screader-db build --overwrite`")
            raise SqlError(message)
        self.spill = _spill_folder(opened.root)
        self.con = duckdb.connect(":memory:")
        try:
            self._setup(catalogue, max_spill_bytes)
        except BaseException:
            self.close()
            raise

    def _setup(self, catalogue: Path, max_spill_bytes: int) -> None:
        con = self.con
        with reading(catalogue, "the catalogue"):
            con.execute("ATTACH ? AS atlas (READ_ONLY)", [str(catalogue)])
            present = {row[0] for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'atlas'").fetchall()}
        for name in SCHEMA:
            if name in present:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM atlas.main."{name}"')
        con.register(VECTOR_VIEW, self._vectors())
        con.execute("SET temp_directory = ?", [str(self.spill) if self.spill is not None else ""])
        con.execute(f"SET max_temp_directory_size = '{max(int(max_spill_bytes), 0)}B'")
        for setting in ("autoinstall_known_extensions=false", "autoload_known_extensions=false",
                        "enable_external_access=false", "lock_configuration=true"):
            con.execute(f"SET {setting}")

    def _vectors(self) -> Any:
        """The cell vectors as a lazily scanned Arrow dataset (read by Arrow, not by DuckDB's file system)."""
        import pyarrow as pa
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        parts = self.atlas.cell_parts()
        if not parts:
            empty = pa.schema([("cell_id", pa.int64()), ("dataset", pa.string()), ("embedding", pa.list_(pa.float32()))])
            return empty.empty_table()
        schema = pq.read_schema(parts[0])
        wanted = pa.schema([schema.field(name) for name in VECTOR_COLUMNS])
        return ds.dataset([str(p) for p in parts], format="parquet", schema=wanted)

    def reader(self, sql: str, *, batch_size: int = BATCH) -> Rows:
        """The result of one read-only statement as Arrow record batches, read lazily.

        The time limit runs from this call until the batches have all been read.

        Parameters
        ----------
        sql : str
            One read-only statement (:func:`check_read_only`).
        batch_size : int
            The most rows per record batch.

        Returns
        -------
        Rows
            Iterate it once; errors met while reading are raised then, as :class:`SqlError`.

        Raises
        ------
        SqlError
            The statement is refused, fails, runs past the time limit, or needs more memory and spill space
            than allowed.
        """
        import duckdb

        check_read_only(self.con, sql)
        watchdog = _Watchdog(self.con, self.timeout)
        try:
            stream = self.con.sql(sql).to_arrow_reader(batch_size)
        except duckdb.Error as err:
            watchdog.stop()
            raise _failure(err, watchdog) from err
        return Rows(stream, watchdog)

    def table(self, sql: str) -> Any:
        """The whole result as one Arrow table.

        Parameters
        ----------
        sql : str
            One read-only statement.

        Returns
        -------
        pyarrow.Table
            Held in memory whole.

        Raises
        ------
        SqlError
            As :meth:`reader`, while running or reading.
        """
        import pyarrow as pa

        rows = self.reader(sql)
        return pa.Table.from_batches(list(rows), schema=rows.schema)

    def frame(self, sql: str) -> Any:
        """The whole result as a pandas DataFrame.

        Parameters
        ----------
        sql : str
            One read-only statement.

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        SqlError
            As :meth:`reader`, while running or reading.
        """
        return self.table(sql).to_pandas()

    def close(self) -> None:
        """Close the connection and remove the spill folder (safe to call twice)."""
        if getattr(self, "con", None) is not None:
            self.con.close()
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)

    def __enter__(self) -> AtlasSQL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spill_folder(root: Path) -> Path | None:
    """A fresh spill folder in the atlas's scratch area (None where the atlas folder is read-only:
    then nothing spills); folders left by processes that are gone are removed first."""
    area = store.temp_area(root)
    try:
        area.mkdir(exist_ok=True)
        for old in area.glob(f"{SPILL_PREFIX}*"):
            if not _running(old.name.split("-")[1]):
                shutil.rmtree(old, ignore_errors=True)
        folder = area / f"{SPILL_PREFIX}{os.getpid()}-{time.time_ns()}"
        folder.mkdir()
    except OSError:
        return None
    return folder


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class _Watchdog:
    """Interrupts a DuckDB connection ``seconds`` after it is made, unless stopped first."""

    def __init__(self, con: Any, seconds: float | None) -> None:
        self.con = con
        self.seconds = seconds
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire) if seconds else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self.con.interrupt()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _failure(err: BaseException, watchdog: _Watchdog | None = None) -> SqlError:
    import duckdb

    if watchdog is not None and watchdog.fired and isinstance(err, duckdb.InterruptException):
        message = (f"the statement ran past its time limit of {watchdog.seconds:g} s and was stopped; narrow it (a WHERE "
                   "clause, a LIMIT, fewer joins), or allow it longer with --timeout SECONDS")
        return SqlError(message)
    if isinstance(err, duckdb.OutOfMemoryException):
        message = ("the query needs more memory, and more spill space on disk, than it may use; narrow it (a WHERE "
                   "clause, a LIMIT, fewer joins)")
        return SqlError(message)
    if isinstance(err, duckdb.PermissionException):
        message = (f"the query tried to reach something outside the atlas ({_first_lines(err)}); `sql` reads only "
                   f"the atlas: query the views {', '.join(VIEWS)}")
        return SqlError(message)
    return SqlError(f"the query failed: {_first_lines(err)}")


class Rows:
    """Record batches of a result with their schema; DuckDB errors met while reading become SqlError."""

    def __init__(self, stream: Any, watchdog: _Watchdog | None = None) -> None:
        self.schema = stream.schema
        self._stream = stream
        self._watchdog = watchdog

    def __iter__(self) -> Iterator[Any]:
        import duckdb

        try:
            yield from self._stream
        except duckdb.Error as err:
            raise _failure(err, self._watchdog) from err
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()


def run_sql(atlas: str | Path | store.Atlas, sql: str, *, version: int | None = None,
            timeout: float | None = TIMEOUT) -> Any:
    """Run one read-only statement against an atlas version; the result as a pandas DataFrame.

    Parameters
    ----------
    atlas : str, Path or Atlas
        The atlas folder, or an opened atlas version.
    sql : str
        One read-only statement over the views :data:`VIEWS`.
    version : int or None
        The atlas version when ``atlas`` is a folder; None opens the current one.
    timeout : float or None
        Seconds the statement may run, reading included; None or 0 for no limit.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    AtlasError
        The atlas or version cannot be opened.
    SqlError
        The version has no catalogue, or the statement is refused, fails or runs past ``timeout``.
    """
    with AtlasSQL(atlas, version=version, timeout=timeout) as db:
        return db.frame(sql)


def head(rows: Rows, n: int) -> tuple[Any, int]:
    """The first ``n`` rows as an Arrow table, and how many rows the result has in all.

    The whole result is read (to count it), but only the first ``n`` rows are kept.

    Parameters
    ----------
    rows : Rows
        From :meth:`AtlasSQL.reader`; consumed.
    n : int
        Rows to keep.

    Returns
    -------
    table : pyarrow.Table
        At most ``n`` rows, with the result's schema.
    total : int
        Rows in the whole result.

    Raises
    ------
    SqlError
        The statement failed or ran past its time limit while being read.
    """
    import pyarrow as pa

    kept: list[Any] = []
    total = 0
    for batch in rows:
        if total < n:
            kept.append(batch.slice(0, n - total))
        total += batch.num_rows
    return pa.Table.from_batches(kept, schema=rows.schema), total


def write_result(rows: Rows, path: str | Path, *, overwrite: bool = False) -> int:
    """Write a result to CSV, TSV or Parquet (by extension) through a temporary file; the rows written.

    ``path`` is replaced only once the whole result is written; on an error nothing is left there.

    Parameters
    ----------
    rows : Rows
        From :meth:`AtlasSQL.reader`; consumed.
    path : str or Path
        Ends in ``.csv``, ``.tsv`` or ``.parquet`` (zstd-compressed); its folder must exist.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputDataError
        The extension is not one of the three.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    SqlError
        The statement failed while being read, or Arrow could not write the result (a list column such as
        ``embedding`` to CSV).
    """
    target = Path(path)
    suffix = check_output(target, overwrite=overwrite)
    written = 0
    try:
        with atomic_write(target) as tmp:
            writer = _writer(tmp, suffix, rows.schema)
            try:
                for batch in rows:
                    writer.write_batch(batch)
                    written += batch.num_rows
            finally:
                writer.close()
    except Exception as err:
        if isinstance(err, SqlError):
            raise
        import pyarrow as pa

        if isinstance(err, pa.ArrowException):
            message = (f"cannot write the result to {target}: {err}. CSV cannot hold list columns such as embedding; "
                       "cast them to text (embedding::VARCHAR) or write .parquet")
            raise SqlError(message) from err
        raise
    return written


def check_output(target: Path, *, overwrite: bool) -> str:
    """Refuse an existing output (unless ``overwrite``) or an unknown extension; the extension.

    Parameters
    ----------
    target : Path
        The output file.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    str
        ``.csv``, ``.tsv`` or ``.parquet`` (lowercased).

    Raises
    ------
    InputDataError
        Any other extension.
    OutputExistsError
        ``target`` exists and ``overwrite`` is false.
    """
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        message = f"unknown output format {target.suffix!r} for {target}; use .csv, .tsv or .parquet"
        raise InputDataError(message)
    refuse_existing(target, overwrite=overwrite)
    return suffix


def _writer(tmp: Path, suffix: str, schema: Any) -> Any:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(tmp, schema, compression="zstd")
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ",")
    return pacsv.CSVWriter(tmp, schema, write_options=options)
