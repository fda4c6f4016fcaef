"""User-facing errors: each one becomes a single line on stderr and exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad setting, missing data, unusable file)."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An invalid setting."""


class DataError(UserError):
    """The dataset cannot be found, provisioned or read."""


class ParentError(UserError):
    """A parent network file or module that cannot be used."""


class WeakParentError(ParentError):
    """A parent at chance level on the data it is given (see :mod:`ecomp_deap.nets.parent_accuracy`)."""


class UnsafeFileError(UserError):
    """A torch file that would need unpickling beyond tensors, plain data and the
    supported layer types (see :mod:`ecomp_deap.nets.safe_load`)."""


class WriteError(UserError, OSError):
    """A file could not be written (a full disk, a quota, a read-only or vanished folder):
    the message names the file and the system's error (``errno`` holds its code). Atomic
    writes leave the file before it as it was (:mod:`ecomp_deap.files`). An ``OSError``
    too, for handlers of the system's error."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


class ResultsError(ValueError):
    """A results folder or file that cannot be used (missing, empty, wrong schema)."""
