"""The annotated copy of an .h5ad query, written without reading its expression into memory.

:meth:`AnnotationResult.to_adata` annotates an AnnData in memory; a query file holds matrices
(``X``, ``layers``, ``raw``) that can be far larger than the annotation. So the annotations of the
file (obs, var, obsm, varm, obsp, varp, uns) are read and annotated by ``to_adata``, written by
anndata, and the matrices are copied into the new file by HDF5 itself, object by object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ANNOTATIONS = ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")  # read, annotated, written by anndata
MATRICES = ("X", "layers", "raw")  # copied as they are


def write_annotated(result: Any, query: str | Path, target: str | Path) -> Path:
    """Write the annotated copy of the query file ``query`` to ``target``.

    Reading ``target`` gives the AnnData that ``result.to_adata(anndata.read_h5ad(query))``
    written with ``write_h5ad`` gives; only the matrices keep the query file's storage (chunks,
    compression). A file in an older layout of anndata's (an element without encoding attributes, or
    raw stored as ``raw.X``) is read whole instead.

    Parameters
    ----------
    result : AnnotationResult
        The annotation of ``query``'s cells, in the file's order.
    query : str or Path
        The annotated .h5ad file; a query in another format (:func:`screader_db.input_files.open_input`)
        is read into memory and its annotated copy written as .h5ad.
    target : str or Path
        The file to write (replaced if it exists).

    Returns
    -------
    Path
        ``target``. Keys written: those of :meth:`AnnotationResult.to_adata`.

    Raises
    ------
    InputDataError
        The file has another number of cells than the result.
    """
    import anndata as ad
    import h5py
    from anndata.io import read_elem, write_elem

    from screader_db.input_files import detect_format, open_input

    source, written = Path(query), Path(target)
    if detect_format(source).format != "h5ad":  # another format: read whole, annotated, written as .h5ad
        with open_input(source, backed=False) as opened:
            result.to_adata(opened.adata).write_h5ad(written)
        return written
    with h5py.File(source, "r") as file:
        known = set(file) <= {*ANNOTATIONS, *MATRICES}  # older files keep raw as raw.X, raw.var
        if not known or not all("encoding-type" in file[key].attrs for key in file):
            from screader_db.inputs import read_h5ad

            result.to_adata(read_h5ad(source)).write_h5ad(written)
            return written
        parts = {key: read_elem(file[key]) for key in ANNOTATIONS if key in file}
    annotated = result.to_adata(ad.AnnData(**parts))
    annotated.write_h5ad(written)
    with h5py.File(source, "r") as file, h5py.File(written, "r+") as out:
        for key in MATRICES:
            if key in out:
                del out[key]
            if key in file:
                file.copy(file[key], out, name=key)
        if "raw" in file and "var" in file["raw"]:  # write_h5ad turns the raw var's repeated strings into categories too
            raw_var = read_elem(file["raw"]["var"])
            annotated.strings_to_categoricals(raw_var)
            del out["raw"]["var"]
            write_elem(out["raw"], "var", raw_var)
    return written
