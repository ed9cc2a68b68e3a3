"""Terminal output for the CLI: progress bars, tables and error lines (rich, on stderr/stdout)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from screader_db.progress import Advance, Reporter

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class RichReporter(Reporter):
    """Shows stage messages and progress bars (with rate and time left) on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def message(self, text: str) -> None:
        """Print a one-line note on stderr, after a dim bullet, unless quiet.

        Parameters
        ----------
        text : str
            The note; may hold rich markup.
        """
        if not self.quiet:
            err.print(f"[dim]•[/dim] {text}")

    @contextmanager
    def task(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        """A progress bar on stderr with count, rate, time elapsed and time left; nothing when quiet.

        Parameters
        ----------
        description : str
            Shown left of the bar.
        total : int
            The number of items when done.
        unit : str
            What an item is, shown in the rate (``1,234.5 cells/s``).

        Yields
        ------
        Callable[[int], None]
            Call with the number of items just finished (an increment).
        """
        if self.quiet:
            yield lambda n: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task(description, total=total, rate="")

            def advance(n: int) -> None:
                progress.advance(task, n)
                speed = progress.tasks[0].speed
                progress.update(task, rate=f"{speed:,.1f} {unit}/s" if speed else "")

            yield advance


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table with right-aligned numbers.

    Parameters
    ----------
    title : str
        Shown left-aligned above the table.
    columns : list of str
        Column headers; the first column is left-aligned, the others right-aligned.
    rows : list of list
        One list per row, in column order: floats are shown with 3 decimals, ints with thousands separators,
        anything else as ``str``.

    Returns
    -------
    rich.table.Table
    """
    result = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        result.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        result.add_row(*[f"{v:,.3f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
                         for v in row])
    return result
