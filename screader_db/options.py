"""The options of an annotation, shared by the library, the command line, the server and the client.

Each option is a field of a small frozen dataclass and is documented once, here: the field's help
is the CLI's ``--help`` text and the server's query-parameter description, so an option means the
same on every surface and none is missing from one of them. :meth:`AnnotateOptions.check` is the
one place option values are checked.

``ReadOptions`` say how the query's expression is read, ``NeighbourFilter`` which atlas cells may
vote, and ``AnnotateOptions`` holds both with the options of the vote itself. Surfaces pass options
by their flat names (:data:`ANNOTATE_OPTIONS`): ``AnnotateOptions.from_flat(k=20, layer="counts")``.
How the work is run (rows read per chunk, progress reporting) is not an annotate option: whoever
runs it sets it (a server chooses its own), and the chunk size moves results by float rounding only.

``SearchOptions`` are the options of a cell search (:mod:`screader_db.cell_search`), by their flat
names in :data:`SEARCH_OPTIONS`; they share ``ReadOptions`` with annotation.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal

from screader_db.errors import ScreaderError

# What the library itself refuses of a numeric option: values outside its bounds, NaN, or NaN and
# infinity. The command line and the server always hold values to the bounds.
LibraryRule = Literal["bounds", "number", "finite", "none"]


@dataclass(frozen=True)
class Spec:
    """How one option is described and checked.

    Parameters
    ----------
    help
        The option's description, shown by the CLI and the server's API docs.
    low, high
        Bounds the CLI and the server hold a numeric value to (None: unbounded); NaN and infinity
        are refused there.
    library
        What the library refuses: ``bounds`` (the same as the surfaces), ``number`` (NaN only),
        ``finite`` (NaN and infinity) or ``none``. Cut-offs outside [0, 1] work in the library:
        above 1 sets every cell aside, below 0 none.
    """

    help: str
    low: float | None = None
    high: float | None = None
    library: LibraryRule = "none"


def _option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            library: LibraryRule = "none") -> Any:
    return field(default=default, metadata={"spec": Spec(help, low, high, library)})


@dataclass(frozen=True)
class ReadOptions:
    """How the query's expression is read.

    Parameters
    ----------
    layer, use_raw, gene_key, species, input_scale, batch_key
        See each field's help (:func:`option_help`).
    """

    layer: str | None = _option(None, "Layer to read instead of .X.")
    use_raw: bool = _option(False, "Read .raw instead of .X.")
    gene_key: str | None = _option(None, "var column with gene symbols or Ensembl ids (default: the var names).")
    species: str = _option("auto", "human, mouse or auto (from the symbols' case; symbols of one case by which species has them).")
    input_scale: str | None = _option("auto", "Scale of the values: auto (detected from the data), counts, ln, log2, "
                                              "log10 (log(1+x) in that base) or linear (CPM, TPM, RPKM, fractional counts).")
    batch_key: str | None = _option(None, "obs column naming each cell's batch (sample, donor, condition): each batch "
                                          "is centred on its own, as if queried alone, before one search and vote.")


@dataclass(frozen=True)
class NeighbourFilter:
    """Which atlas cells may vote, and at which label level.

    Parameters
    ----------
    datasets, labels, exclude_labels, level
        See each field's help (:func:`option_help`). Empty lists are None (no restriction).
    """

    datasets: tuple[str, ...] | None = _option(None, "Only these atlas data sets' cells may vote.")
    labels: tuple[str, ...] | None = _option(None, "Only atlas cells with these labels (at the chosen level) may vote.")
    exclude_labels: tuple[str, ...] | None = _option(None, "Atlas labels that never vote (e.g. 'cell', 'unknown').")
    level: str = _option("label", "label or fine (each data set's own labels), harmonised (through the atlas's label "
                                  "map), ontology (Cell Ontology term names) or broad (broad Cell Ontology classes).")


@dataclass(frozen=True)
class AnnotateOptions:
    """Every option of :func:`screader_db.annotate`, with the read options and the neighbour filter.

    None takes the atlas's own setting (``k``, ``power``, ``propagation``, ``center``) or its
    calibrated cut-off (``min_score``, ``novelty_cutoff``).

    Parameters
    ----------
    k, model, center, min_score, min_margin, majority_voting, power, propagation, novelty, novelty_cutoff, second_opinion,
    parent_hold, version
        See each field's help (:func:`option_help`).
    read
        How the query is read.
    neighbours
        Which atlas cells may vote.
    """

    k: int | None = _option(None, "Nearest reference cells that vote (default: the atlas's setting, 15 unless it was "
                                  "built otherwise).", low=1, library="bounds")
    model: str | None = _option(None, "Refuse unless the atlas was built with this gene model.")
    center: str | None = _option(None, "How query vectors are centred: auto, query (on the query's mean), reference (on "
                                       "the reference's) or balanced (default: the atlas's setting).")
    min_score: float | None = _option(None, "Vote share below which a cell is Unassigned (default: the atlas's "
                                            "calibrated cut-off).", low=0, high=1, library="number")
    min_margin: float = _option(0.0, "Margin to the runner-up label below which a cell is Unassigned.",
                                low=0, high=1, library="number")
    majority_voting: bool = _option(False, "Also report each query cluster's majority label (Leiden, or k-means).")
    power: float | None = _option(None, "Each neighbour votes with weight max(cos, 0)^power (default: the atlas's "
                                        "setting, 4 unless it was built otherwise).", low=0, library="bounds")
    propagation: float | None = _option(None, "Smoothing of the votes over the query's own neighbour graph, from 0 "
                                              "(none) to 1 (default: the atlas's setting).", low=0, high=1, library="finite")
    novelty: bool = _option(True, "Make query clusters that match no atlas label Unassigned.")
    novelty_cutoff: float | None = _option(None, "Cluster match (robust SDs) below which a cluster is novel (default: "
                                                 "the atlas's calibrated cut-off).", library="bounds")
    second_opinion: bool = _option(True, "Weigh each call's confidence by how much of the expression method's "
                                         "neighbour vote goes to its label, and let a linear classifier vote beside "
                                         "the neighbours (both fitted once on the atlas's kept expression).")
    parent_hold: float = _option(0.7, "Share of its family's votes (itself and the labels below it in the Cell "
                                      "Ontology) a coarse parent label needs to keep a cell; below it the votes go "
                                      "to its finer label with the most. 0 switches this off.",
                                 low=0, high=1, library="number")
    version: int | None = _option(None, "Atlas version to annotate against (default: the current one; a server "
                                        "annotates against its current version only, and refuses another).")
    read: ReadOptions = field(default_factory=ReadOptions)
    neighbours: NeighbourFilter = field(default_factory=NeighbourFilter)

    @classmethod
    def from_flat(cls, **values: Any) -> AnnotateOptions:
        """Options from flat keyword values (``k=20, layer="counts", datasets=["a"]``).

        Parameters
        ----------
        **values
            Options by their flat names (:data:`ANNOTATE_OPTIONS`); the others keep their defaults.

        Returns
        -------
        AnnotateOptions
            The options, not yet checked (:meth:`check`).

        Raises
        ------
        ScreaderError
            A name that is no option.
        """
        return cls().updated(**values)

    def updated(self, **values: Any) -> AnnotateOptions:
        """A copy with some options replaced.

        Parameters
        ----------
        **values
            Options by their flat names (:data:`ANNOTATE_OPTIONS`); lists of names become tuples,
            and an empty list None (no restriction).

        Returns
        -------
        AnnotateOptions
            The new options, not yet checked.

        Raises
        ------
        ScreaderError
            A name that is no option.
        """
        unknown = [name for name in values if name not in _GROUP]
        if unknown:
            close = difflib.get_close_matches(unknown[0], ANNOTATE_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"{unknown[0]!r} is not an annotate option{hint}; the options are {', '.join(ANNOTATE_OPTIONS)}"
            raise ScreaderError(message)
        grouped: dict[str, dict[str, Any]] = {"": {}, "read": {}, "neighbours": {}}
        for name, value in values.items():
            grouped[_GROUP[name]][name] = _listed(value) if name in _LISTS else value
        return replace(self, **grouped[""], read=replace(self.read, **grouped["read"]),
                       neighbours=replace(self.neighbours, **grouped["neighbours"]))

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name.

        Returns
        -------
        dict
            Name to value, in :data:`ANNOTATE_OPTIONS` order.
        """
        holders = {"": self, "read": self.read, "neighbours": self.neighbours}
        return {name: getattr(holders[_GROUP[name]], name) for name in ANNOTATE_OPTIONS}

    def check(self, *, strict: bool = False, flags: bool = False) -> None:
        """Refuse option values that cannot work, before any work starts.

        Parameters
        ----------
        strict
            Hold numbers to the bounds of the command line and the server (``min_score`` from 0 to 1,
            ...) rather than to what the library can work with (:class:`Spec`).
        flags
            Name options as command-line flags (``--min-score``) in messages, else by their names.

        Raises
        ------
        ScreaderError
            The first option whose value cannot be used, with what it must be.
        """
        values = self.flat()

        def shown(name: str) -> str:
            return "--" + name.replace("_", "-") if flags else name

        for name in ("level", "species", "center"):
            allowed, text = _choices(name)
            if values[name] is not None and values[name] not in allowed:
                raise ScreaderError(f"{shown(name)} must be one of {text}, got {values[name]!r}")
        if values["input_scale"] not in (None, "auto"):
            from screader_db.inputs import scale_name

            try:
                scale_name(str(values["input_scale"]))
            except ScreaderError as err:
                raise ScreaderError(str(err)) from err
        for name, value in values.items():
            rule = _problem(SPECS[name], value, strict=strict)
            if rule:
                raise ScreaderError(f"{shown(name)} must be {rule}; got {value:g}")


def _listed(value: Any) -> tuple[str, ...] | None:
    """A list option as a tuple of names; None or empty: no restriction."""
    if value is None or isinstance(value, str):
        return None if not value else (value,)
    names = tuple(str(v) for v in value)
    return names or None


def _choices(name: str) -> tuple[tuple[str, ...], str]:
    """The values an option takes, and how a message lists them (from the modules that own them)."""
    if name == "level":
        from screader_db.annotation import LEVELS

        return tuple(LEVELS), ", ".join(LEVELS)
    if name == "species":
        from screader_db.genes import SPECIES

        return (*SPECIES, "auto"), f"{', '.join(SPECIES)} or auto"
    from screader_db.cell_embedding import CENTRES

    return tuple(CENTRES), ", ".join(CENTRES)


def _problem(spec: Spec, value: Any, *, strict: bool) -> str | None:
    """What a numeric ``value`` must be when ``spec`` refuses it, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    rule = "bounds" if strict and (spec.low is not None or spec.high is not None or spec.library != "none") \
        else spec.library
    if rule == "none" or (rule == "number" and not math.isnan(value)):
        return None
    if rule == "number":
        return "a number"
    low, high = (spec.low, spec.high) if rule == "bounds" else (None, None)
    if math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    if low is not None:
        return f"at least {low:g}"
    if high is not None:
        return f"at most {high:g}"
    return "a finite number"


@dataclass(frozen=True)
class OptionField:
    """One option as the surfaces declare it.

    Parameters
    ----------
    name
        Its flat name (``min_score``); the CLI's flag is ``--min-score``.
    kind
        ``int``, ``float``, ``str``, ``bool`` or ``list`` (of names).
    optional
        Whether None is a value (the default of most options: the atlas's setting).
    default
        Its default value.
    spec
        Its help and bounds.
    """

    name: str
    kind: str
    optional: bool
    default: Any
    spec: Spec


def option_fields() -> tuple[OptionField, ...]:
    """Every annotate option, in :data:`ANNOTATE_OPTIONS` order, with its type, default, help and bounds.

    Returns
    -------
    tuple of OptionField
        One per option.
    """
    found = []
    for holder in (AnnotateOptions, ReadOptions, NeighbourFilter):
        for item in fields(holder):
            if "spec" not in item.metadata:
                continue
            hint = str(item.type)
            kind = next(k for k in ("tuple", "int", "float", "bool", "str") if hint.startswith(k))
            found.append(OptionField(item.name, "list" if kind == "tuple" else kind, hint.endswith("| None"),
                                     None if item.default is MISSING else item.default, item.metadata["spec"]))
    return tuple(found)


def option_help(name: str) -> str:
    """The help text of the option ``name`` (flat name).

    Parameters
    ----------
    name
        A name in :data:`ANNOTATE_OPTIONS`.

    Returns
    -------
    str
        Its description.
    """
    return SPECS[name].help


SPECS: dict[str, Spec] = {f.name: f.spec for f in option_fields()}
ANNOTATE_OPTIONS: tuple[str, ...] = tuple(SPECS)
_GROUP: dict[str, str] = {f.name: group for group, holder in (("", AnnotateOptions), ("read", ReadOptions),
                                                               ("neighbours", NeighbourFilter))
                          for f in fields(holder) if "spec" in f.metadata}
_LISTS = frozenset(f.name for f in option_fields() if f.kind == "list")


@dataclass(frozen=True)
class SearchOptions:
    """Every option of :func:`screader_db.cell_search.search`: how many cells it returns, which atlas
    cells it may return, and how query cells are read and centred.

    Parameters
    ----------
    k, datasets, labels, where, timeout, center
        See each field's help (:func:`search_option_help`).
    read
        How query cells are read (used only when the query is cells).
    """

    k: int = _option(20, "Atlas cells returned per query, most similar first.", low=1, library="bounds")
    datasets: tuple[str, ...] | None = _option(None, "Return only cells of these atlas data sets.")
    labels: tuple[str, ...] | None = _option(None, "Return only atlas cells with these labels.")
    where: str | None = _option(None, "Return only atlas cells meeting this read-only SQL condition over the cells view, "
                                      "e.g. \"metadata->>'donor' = 'D3'\".")
    timeout: float = _option(60.0, "Seconds the where condition may run, as SQL over the cells view.", low=1, high=600,
                             library="bounds")
    center: str | None = _option(None, "How query cells are centred: auto, query, reference or balanced (default: the "
                                       "atlas's setting).")
    read: ReadOptions = field(default_factory=ReadOptions)

    @classmethod
    def from_flat(cls, **values: Any) -> SearchOptions:
        """Options from flat keyword values (``k=50, where="label = 'B'", layer="counts"``).

        Parameters
        ----------
        **values
            Options by their flat names (:data:`SEARCH_OPTIONS`); the others keep their defaults.

        Returns
        -------
        SearchOptions
            The options, not yet checked (:meth:`check`).

        Raises
        ------
        ScreaderError
            A name that is no option.
        """
        return cls().updated(**values)

    def updated(self, **values: Any) -> SearchOptions:
        """A copy with some options replaced.

        Parameters
        ----------
        **values
            Options by their flat names (:data:`SEARCH_OPTIONS`); lists of names become tuples,
            and an empty list None (no restriction).

        Returns
        -------
        SearchOptions
            The new options, not yet checked.

        Raises
        ------
        ScreaderError
            A name that is no option.
        """
        _refuse_unknown(values, SEARCH_OPTIONS, "search")
        read_names = {f.name for f in fields(ReadOptions)}
        own: dict[str, Any] = {name: _listed(value) if name in ("datasets", "labels") else value
                               for name, value in values.items() if name not in read_names}
        read = {name: value for name, value in values.items() if name in read_names}
        return replace(self, **own, read=replace(self.read, **read))

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name.

        Returns
        -------
        dict
            Name to value, in :data:`SEARCH_OPTIONS` order.
        """
        read_names = {f.name for f in fields(ReadOptions)}
        return {name: getattr(self.read if name in read_names else self, name) for name in SEARCH_OPTIONS}

    def check(self, *, strict: bool = False, flags: bool = False) -> None:
        """Refuse option values that cannot work, before any work starts.

        Parameters
        ----------
        strict
            Hold numbers to the bounds of the command line and the server.
        flags
            Name options as command-line flags (``--k``) in messages, else by their names.

        Raises
        ------
        ScreaderError
            The first option whose value cannot be used, with what it must be.
        """
        _check_values(self.flat(), SEARCH_SPECS, strict=strict, flags=flags)


def _refuse_unknown(values: dict[str, Any], names: tuple[str, ...], what: str) -> None:
    """Refuse the first of ``values`` that is not one of the ``what`` options ``names``."""
    unknown = [name for name in values if name not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"{unknown[0]!r} is not a {what} option{hint}; the options are {', '.join(names)}"
        raise ScreaderError(message)


def _check_values(values: dict[str, Any], specs: dict[str, Spec], *, strict: bool, flags: bool) -> None:
    """Refuse the first of flat option ``values`` that cannot be used: a choice outside its values, an
    unknown input scale, a number that its :class:`Spec` refuses."""

    def shown(name: str) -> str:
        return "--" + name.replace("_", "-") if flags else name

    for name in ("level", "species", "center"):
        if name not in values:
            continue
        allowed, text = _choices(name)
        if values[name] is not None and values[name] not in allowed:
            raise ScreaderError(f"{shown(name)} must be one of {text}, got {values[name]!r}")
    if values.get("input_scale") not in (None, "auto"):
        from screader_db.inputs import scale_name

        try:
            scale_name(str(values["input_scale"]))
        except ScreaderError as err:
            raise ScreaderError(str(err)) from err
    for name, value in values.items():
        rule = _problem(specs[name], value, strict=strict)
        if rule:
            raise ScreaderError(f"{shown(name)} must be {rule}; got {value:g}")


def _fields_of(*holders: type) -> tuple[OptionField, ...]:
    """The options declared by the fields of ``holders``, in order, with their type, default, help and bounds."""
    found = []
    for holder in holders:
        for item in fields(holder):
            if "spec" not in item.metadata:
                continue
            hint = str(item.type)
            kind = next(k for k in ("tuple", "int", "float", "bool", "str") if hint.startswith(k))
            found.append(OptionField(item.name, "list" if kind == "tuple" else kind, hint.endswith("| None"),
                                     None if item.default is MISSING else item.default, item.metadata["spec"]))
    return tuple(found)


def search_option_fields() -> tuple[OptionField, ...]:
    """Every search option, in :data:`SEARCH_OPTIONS` order, with its type, default, help and bounds.

    Returns
    -------
    tuple of OptionField
        One per option.
    """
    return _fields_of(SearchOptions, ReadOptions)


def search_option_help(name: str) -> str:
    """The help text of the search option ``name`` (flat name).

    Parameters
    ----------
    name
        A name in :data:`SEARCH_OPTIONS`.

    Returns
    -------
    str
        Its description.
    """
    return SEARCH_SPECS[name].help


SEARCH_SPECS: dict[str, Spec] = {f.name: f.spec for f in search_option_fields()}
SEARCH_OPTIONS: tuple[str, ...] = tuple(SEARCH_SPECS)
