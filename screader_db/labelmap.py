"""Label harmonisation: a CSV that maps each data set's labels to shared names and ontology ids.

Columns: ``dataset``, ``label``, ``harmonised_label`` and, optionally, ``ontology_id`` (a Cell
Ontology id such as CL:0000169). A dataset of ``*`` applies to every data set. Labels the map
does not name keep their own name as their harmonised label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from screader_db.errors import InputDataError

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
