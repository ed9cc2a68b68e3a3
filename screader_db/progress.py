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
        """A one-line note about what is happening."""

    @contextmanager
    def task(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        """A counted piece of work; call the yielded function with the number of items done."""
        yield lambda n: None


SILENT = Reporter()
