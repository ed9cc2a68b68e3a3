"""Progress reporting hooks. Library code reports through a :class:`Reporter`; it never prints.

The default reporter does nothing. The CLI passes one that draws rich progress bars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]


class Reporter:
    """Receives stage messages and counted tasks; override both to show them."""

    def message(self, text: str) -> None:
        """A one-line note about what is happening.

        Parameters
        ----------
        text : str
            The note; the default reporter drops it.
        """

    @contextmanager
    def task(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        """A counted piece of work; call the yielded function with the number of items done.

        Parameters
        ----------
        description : str
            What the work is, shown beside its count.
        total : int
            The number of items when done.
        unit : str
            What an item is, for rates ("cells", "genes"...).

        Yields
        ------
        Callable[[int], None]
            Call with the number of items just finished (an increment, not a running total); the default does nothing.
        """
        yield lambda n: None


SILENT = Reporter()
