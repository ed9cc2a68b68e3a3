"""What the benchmarks that print a Markdown report share: their ``--out`` option, and the report
printed with its elapsed time and written where ``--out`` says."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def arguments(doc: str, *, out_required: bool = False) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with ``--out`` (the Markdown file to write).

    Parameters
    ----------
    doc : str
        The script's ``__doc__``.
    out_required : bool
        Whether ``--out`` must be given.

    Returns
    -------
    argparse.ArgumentParser
        Further options may be added before parsing.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=out_required, default=None, help="Markdown file to write.")
    return parser


def publish(text: str, started: float, out: Path | None, *, note: str = "") -> None:
    """Print ``text`` with the seconds since ``started`` (and ``note``) below it, and write it to ``out`` if given.

    Parameters
    ----------
    text : str
        The report.
    started : float
        ``time.perf_counter()`` when the run began.
    out : Path or None
        Where to write the report (its folder is made).
    note : str
        Words after the seconds (``", 3 seeds per size"``).
    """
    text = f"{text}\n\n{time.perf_counter() - started:.0f} s{note}\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def measure_in_workdir(doc: str, measure: Callable[[Path], Any], report: Callable[[Any], str]) -> None:
    """The whole run of a benchmark that measures in a scratch folder: parse ``--out``, ``measure`` in a
    temporary folder, then :func:`publish` its ``report``.

    Parameters
    ----------
    doc : str
        The script's ``__doc__``.
    measure : callable
        Takes the scratch folder, returns what ``report`` reads.
    report : callable
        Turns the measurements into Markdown.
    """
    args = arguments(doc).parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        found = measure(Path(workdir))
    publish(report(found), started, args.out)
