"""The exception types the CLI turns into exit code 2 (one line on stderr).

Anything the user can fix (a path, a config key, a layer name, a malformed array, a damaged
file) raises ``GwrayInputError`` with a one-line message that names the thing at fault. Its
subclasses name faults met during a run: storage that fails (``GwrayStorageError``), a worker or
shard that dies for good (``GwrayComputeError``), a damaged piece of the run directory
(``GwrayDamagedError``); their messages say that a rerun resumes. Every other exception is an
internal failure (exit code 1).
"""


class GwrayInputError(ValueError):
    """Bad input: the message is one line and names the file, layer, key or argument at fault."""


class GwrayStorageError(GwrayInputError):
    """The run directory's storage failed (disk full, read-only, object store down after retries).

    Not an ``OSError``, so that code reading a damaged file (which catches ``OSError``) never
    mistakes a storage outage for damage."""


class GwrayComputeError(GwrayInputError):
    """A worker or shard process died and the work could not go on without it: a shard (its
    blocks are not held anywhere else), or a GW batch whose worker died on every attempt. The
    message names it and the likely cause (memory); a rerun resumes from what was finished."""


class GwrayDamagedError(GwrayInputError):
    """A piece of a run directory that gwray wrote is damaged or missing (a partition, a pair
    file, a matrix), found while reading it. ``gwray run`` recomputes the piece; other readers
    report it (exit 2). Made by :func:`damaged`.

    Attributes
    ----------
    what : str
        The file or piece and what is wrong with it (the message without the advice).
    piece : tuple
        What to recompute: ``("activations", checkpoint id)``, ``("pairs", file path)`` or
        ``("matrices", None)``.
    """

    what: str = ""
    piece: tuple = (None, None)


def damaged(what: str, piece: tuple, advice: str) -> GwrayDamagedError:
    """A :class:`GwrayDamagedError` whose message is ``what; advice``. Its attributes are set
    after construction, so that it survives the trip from a Ray worker to the driver."""
    err = GwrayDamagedError(f"{what}; {advice}")
    err.what, err.piece = what, piece
    return err
