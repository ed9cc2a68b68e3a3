"""Exceptions and warnings raised by screader-db.

Every error a user can cause derives from :class:`ScreaderError`; the CLI turns it into
``Error: <message>`` and exit code 1.
"""

from __future__ import annotations


def _restored(kind: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    """An error rebuilt from its class, arguments and attributes (see :meth:`ScreaderError.__reduce__`)."""
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class ScreaderError(Exception):
    """Base class of every error screader-db raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle by class, arguments and attributes, so errors with keyword-only fields cross process boundaries."""
        return _restored, (type(self), self.args, dict(self.__dict__))


class InputDataError(ScreaderError):
    """The input data (h5ad, matrix, labels) is unreadable or not what was expected."""


class GeneOverlapError(InputDataError):
    """Too few of the query's genes match the genes the atlas was built on."""


class CellNotFoundError(InputDataError):
    """A cell asked for by name or position is not in the query."""


class AtlasError(ScreaderError):
    """The atlas is missing, damaged, of an incompatible format or locked."""


class AtlasDamagedError(AtlasError):
    """A file of an atlas version is missing, unreadable, or not the file its version recorded (sha256)."""

    def __init__(self, message: str, *, file: str) -> None:
        super().__init__(message)
        self.file = file


class ModelMismatchError(AtlasError):
    """The atlas was built with another gene-embedding model than the one asked for."""


class AtlasMismatchError(AtlasError):
    """An annotated AnnData was annotated against another atlas, or another version of it."""


class ChecksumError(ScreaderError):
    """A downloaded or cached file does not have the sha256 the manifest records."""


class FetchError(ScreaderError):
    """A file listed in the manifest could not be downloaded or extracted."""


class ModelError(ScreaderError):
    """A language model could not be found or loaded."""


class MissingExtraError(ScreaderError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message)
        self.extra = extra
        self.module = module


class OutputExistsError(ScreaderError):
    """An output path exists and overwriting was not allowed."""


class OutputPathError(ScreaderError):
    """An output cannot be written where asked: a missing or read-only folder, or a file where a folder is (or the reverse)."""


class RequestTooLargeError(ScreaderError):
    """A request to the server declares more cells or values than the server's limits allow."""


class SqlError(ScreaderError):
    """A SQL statement was refused (not read-only) or failed against the atlas."""


class WorkerLostError(ScreaderError):
    """A worker process stopped (killed, out of memory) before it answered; the server started another."""


class RemoteError(ScreaderError):
    """A screader-db server could not be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ScreaderWarning(UserWarning):
    """A doubt about the data that does not stop the run."""
