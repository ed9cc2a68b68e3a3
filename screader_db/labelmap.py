"""Label harmonisation: a CSV that maps each data set's labels to shared names and ontology ids.

Columns: ``dataset``, ``label``, ``harmonised_label`` and, optionally, ``ontology_id`` (a Cell
Ontology id such as CL:0000169). A dataset of ``*`` applies to every data set. Labels the map
does not name keep their own name as their harmonised label.

Every label is also given a Cell Ontology term (:mod:`screader_db.ontology`): the map's
``ontology_id`` where it gives one, else the term the label (or its harmonised label) matches.
The term's name and its broad class are the atlas's ``ontology`` and ``broad`` label levels
(:func:`ontology_terms`); :func:`label_table` shows the mapping of an atlas, in a form this module
reads back as a map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from screader_db.errors import InputDataError

if TYPE_CHECKING:
    from screader_db.ontology import Ontology

REQUIRED = ("dataset", "label", "harmonised_label")


def read_label_map(path: str | Path) -> pd.DataFrame:
    """Read and check a label map file.

    Parameters
    ----------
    path : str or Path
        A CSV with columns ``dataset``, ``label``, ``harmonised_label`` and optionally ``ontology_id``; all
        values are read as strings (empty cells stay empty strings).

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset``, ``label``, ``harmonised_label``, ``ontology_id`` (``""`` when the file has none).

    Raises
    ------
    InputDataError
        The file does not exist, is not a readable CSV, lacks a required column, or maps a (dataset, label)
        pair more than once.
    """
    file = Path(path)
    if not file.is_file():
        message = f"label map {file} does not exist"
        raise InputDataError(message)
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        message = f"label map {file} is not a readable CSV: {err}"
        raise InputDataError(message) from err
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        message = (f"label map {file} lacks the column(s) {', '.join(missing)}; expected dataset, label, "
                   f"harmonised_label and optionally ontology_id; found {', '.join(frame.columns)}")
        raise InputDataError(message)
    if "ontology_id" not in frame.columns:
        frame["ontology_id"] = ""
    doubled = frame.duplicated(["dataset", "label"], keep=False)
    if doubled.any():
        first = frame[doubled].iloc[0]
        message = f"label map {file} maps ({first['dataset']}, {first['label']}) more than once"
        raise InputDataError(message)
    return frame[["dataset", "label", "harmonised_label", "ontology_id"]]


def harmonise(labels: np.ndarray, dataset: str, label_map: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """Harmonised labels and ontology ids for one data set's labels.

    Parameters
    ----------
    labels : numpy.ndarray
        The data set's labels, shape (n_cells,).
    dataset : str
        Its name: rows for this data set take precedence over ``*`` rows for the same label.
    label_map : pandas.DataFrame or None
        From :func:`read_label_map`; None or empty keeps every label as it is.

    Returns
    -------
    harmonised : numpy.ndarray of object, shape (n_cells,)
        The mapped name, or the label itself when the map does not name it.
    ontology : numpy.ndarray of object, shape (n_cells,)
        The mapped ontology id, ``""`` where there is none.
    """
    if label_map is None or label_map.empty:
        return labels.astype(object), np.full(len(labels), "", dtype=object)
    rows = label_map[label_map["dataset"].isin([dataset, "*"])]
    specific = rows.sort_values("dataset", key=lambda s: s == "*")
    lookup = specific.drop_duplicates("label").set_index("label")
    series = pd.Series(labels, dtype=object)
    harmonised = series.map(lookup["harmonised_label"]).fillna(series)
    ontology = series.map(lookup["ontology_id"]).fillna("")
    return harmonised.to_numpy(dtype=object), ontology.to_numpy(dtype=object)


@dataclass(frozen=True)
class LabelTerms:
    """The Cell Ontology columns of some cells, one value per cell.

    Parameters
    ----------
    ontology_id
        The CL id: the label map's, else the matched term's; "" for none.
    ontology_name
        The ``ontology`` level: the term's name, else (no term, or an id the ontology lacks) the harmonised label.
    broad
        The ``broad`` level: the term's broad class (:meth:`screader_db.ontology.Ontology.broad`), else the
        term's name, else the harmonised label.
    match
        How the term was found (:data:`screader_db.ontology.MATCHES`); "" when no ontology was used.
    """

    ontology_id: np.ndarray
    ontology_name: np.ndarray
    broad: np.ndarray
    match: np.ndarray


def ontology_terms(labels: np.ndarray, harmonised: np.ndarray, given: np.ndarray,
                   ontology: Ontology | None) -> LabelTerms:
    """The Cell Ontology term, name and broad class of each cell's label.

    Parameters
    ----------
    labels, harmonised
        The cells' labels and harmonised labels (:func:`harmonise`).
    given
        The label map's ontology ids ("" where it gives none), which win over matching.
    ontology
        The Cell Ontology; None matches nothing (the levels repeat the harmonised labels).

    Returns
    -------
    LabelTerms
        Object arrays, shape (n_cells,).
    """
    from screader_db.ontology import LABEL_MAP

    cells = pd.DataFrame({"label": labels, "harmonised": harmonised, "given": given}).astype(str)
    rows = []
    for label, own, given_id in cells.drop_duplicates().itertuples(index=False):
        term_id, how = given_id, LABEL_MAP if given_id else ""
        if not term_id and ontology is not None:
            found = ontology.match(label)
            if not found.id and own != label:
                found = ontology.match(own)
            term_id, how = found.id, found.how
        name = ontology.name(term_id) if ontology is not None and term_id else ""
        broad = ontology.name(ontology.broad(term_id)) if ontology is not None and name else ""
        rows.append((label, own, given_id, term_id, name or own, broad or name or own, how))
    keys = ["label", "harmonised", "given"]
    table = pd.DataFrame(rows, columns=[*keys, "id", "name", "broad", "match"], dtype=object)
    found_rows = cells.merge(table, on=keys, how="left", validate="many_to_one")
    return LabelTerms(*(found_rows[c].to_numpy(dtype=object) for c in ("id", "name", "broad", "match")))


LABEL_TABLE_COLUMNS = ("dataset", "label", "harmonised_label", "ontology_id", "ontology_name", "match", "broad",
                       "n_cells")


def label_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (data set, label) of an atlas: its harmonised label, CL term, how it was matched, broad class.

    Parameters
    ----------
    cells
        The atlas's cells (:meth:`screader_db.store.Atlas.cells`): ``dataset``, ``label``,
        ``label_harmonised``, ``ontology_id``, ``label_ontology``, ``ontology_match``, ``label_broad``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LABEL_TABLE_COLUMNS` (``ontology_name`` "" where the label has no term), sorted by
        data set and label. Written as CSV, it is a label map :func:`read_label_map` reads (extra columns
        are ignored): edit ``ontology_id`` and pass it to ``--label-map`` to override a match.
    """
    columns = ["dataset", "label", "label_harmonised", "ontology_id", "label_ontology", "ontology_match", "label_broad"]
    grouped = cells[columns].astype(str).groupby(columns, sort=True).size().rename("n_cells").reset_index()
    grouped = grouped.rename(columns={"label_harmonised": "harmonised_label", "label_ontology": "ontology_name",
                                      "ontology_match": "match", "label_broad": "broad"})
    grouped.loc[grouped["ontology_id"] == "", "ontology_name"] = ""
    return grouped[list(LABEL_TABLE_COLUMNS)].reset_index(drop=True)
