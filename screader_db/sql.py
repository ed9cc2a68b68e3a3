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
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from screader_db import store
from screader_db.catalogue import SCHEMA
from screader_db.errors import InputDataError, OutputExistsError, SqlError

VECTOR_VIEW = "cell_vectors"
VECTOR_COLUMNS = ("cell_id", "dataset", "embedding")
VIEWS = (*SCHEMA, VECTOR_VIEW)
READ_PRAGMAS = frozenset({"table_info", "show", "show_tables", "show_tables_expanded", "database_list", "version",
                          "platform", "database_size", "storage_info", "functions", "collations"})
ALLOWED = "SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of a SELECT, read-only PRAGMAs"
BATCH = 10_000
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
    """Refuse anything but a single SELECT-type statement, from DuckDB's parse of ``sql``."""
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
    """

    def __init__(self, atlas: str | Path | store.Atlas, *, version: int | None = None) -> None:
        import duckdb

        opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
        self.atlas = opened
        catalogue = opened.path / store.CATALOGUE
        if not catalogue.is_file():
            message = f"atlas version {opened.path} has no {store.CATALOGUE}; rebuild it with `screader-db build --overwrite`"
            raise SqlError(message)
        self.con = duckdb.connect(":memory:")
        try:
            self._setup(catalogue)
        except BaseException:
            self.con.close()
            raise

    def _setup(self, catalogue: Path) -> None:
        con = self.con
        con.execute("ATTACH ? AS atlas (READ_ONLY)", [str(catalogue)])
        present = {row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'atlas'").fetchall()}
        for name in SCHEMA:
            if name in present:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM atlas.main."{name}"')
        con.register(VECTOR_VIEW, self._vectors())
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
        """The result of one read-only statement as Arrow record batches, read lazily."""
        import duckdb

        check_read_only(self.con, sql)
        try:
            stream = self.con.sql(sql).to_arrow_reader(batch_size)
        except duckdb.Error as err:
            raise _failure(err) from err
        return Rows(stream)

    def table(self, sql: str) -> Any:
        """The whole result as one Arrow table."""
        import pyarrow as pa

        rows = self.reader(sql)
        return pa.Table.from_batches(list(rows), schema=rows.schema)

    def frame(self, sql: str) -> Any:
        """The whole result as a pandas DataFrame."""
        return self.table(sql).to_pandas()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> AtlasSQL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _failure(err: BaseException) -> SqlError:
    import duckdb

    if isinstance(err, duckdb.PermissionException):
        message = (f"the query tried to reach something outside the atlas ({_first_lines(err)}); `sql` reads only "
                   f"the atlas: query the views {', '.join(VIEWS)}")
        return SqlError(message)
    return SqlError(f"the query failed: {_first_lines(err)}")


class Rows:
    """Record batches of a result with their schema; DuckDB errors met while reading become SqlError."""

    def __init__(self, stream: Any) -> None:
        self.schema = stream.schema
        self._stream = stream

    def __iter__(self) -> Iterator[Any]:
        import duckdb

        try:
            yield from self._stream
        except duckdb.Error as err:
            raise _failure(err) from err


def run_sql(atlas: str | Path | store.Atlas, sql: str, *, version: int | None = None) -> Any:
    """Run one read-only statement against an atlas version; the result as a pandas DataFrame."""
    with AtlasSQL(atlas, version=version) as db:
        return db.frame(sql)


def head(rows: Rows, n: int) -> tuple[Any, int]:
    """The first ``n`` rows as an Arrow table, and how many rows the result has in all."""
    import pyarrow as pa

    kept: list[Any] = []
    total = 0
    for batch in rows:
        if total < n:
            kept.append(batch.slice(0, n - total))
        total += batch.num_rows
    return pa.Table.from_batches(kept, schema=rows.schema), total


def write_result(rows: Rows, path: str | Path, *, overwrite: bool = False) -> int:
    """Write a result to CSV, TSV or Parquet (by extension) through a temporary file; the rows written."""
    target = Path(path)
    suffix = check_output(target, overwrite=overwrite)
    tmp = target.with_name(f".{target.name}.tmp")
    written = 0
    writer: Any = None
    try:
        writer = _writer(tmp, suffix, rows.schema)
        for batch in rows:
            writer.write_batch(batch)
            written += batch.num_rows
        writer.close()
        writer = None
        tmp.replace(target)
    except Exception as err:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
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
    """Refuse an existing output (unless ``overwrite``) or an unknown extension; the extension."""
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        message = f"unknown output format {target.suffix!r} for {target}; use .csv, .tsv or .parquet"
        raise InputDataError(message)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    return suffix


def _writer(tmp: Path, suffix: str, schema: Any) -> Any:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(tmp, schema, compression="zstd")
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ",")
    return pacsv.CSVWriter(tmp, schema, write_options=options)
