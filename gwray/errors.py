"""The exception types the CLI turns into exit code 2 (one line on stderr).

Anything the user can fix (a path, a config key, a layer name, a malformed array, a damaged
file) raises ``GwrayInputError`` with a one-line message that names the thing at fault. Storage
that fails under a run (a full disk, an object store that stays unreachable) raises its subclass
``GwrayStorageError``, naming the file and saying that a rerun resumes. Every other exception is
an internal failure (exit code 1).
"""


class GwrayInputError(ValueError):
    """Bad input: the message is one line and names the file, layer, key or argument at fault."""


class GwrayStorageError(GwrayInputError):
    """The run directory's storage failed (disk full, read-only, object store down after retries).

    Not an ``OSError``, so that code reading a damaged file (which catches ``OSError``) never
    mistakes a storage outage for damage."""


class GwrayDamagedError(GwrayInputError):
    """A piece of a run directory that gwray wrote is damaged or missing (a partition, a pair
    file, a matrix). ``piece`` says which, so that ``gwray run`` can recompute it: ``("activations",
    checkpoint id)``, ``("pairs", file path)`` or ``("matrices", None)``; other readers report it.

    Set ``piece`` after construction (``err.piece = ...``): the exception then survives the trip
    from a Ray worker to the driver."""

    piece: tuple = (None, None)
