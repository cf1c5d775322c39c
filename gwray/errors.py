"""The one exception type for bad user input.

Anything the user can fix (a path, a config key, a layer name, a malformed array) raises
``GwrayInputError`` with a one-line message that names the thing at fault. The CLI turns it into
exit code 2; every other exception is an internal failure (exit code 1).
"""


class GwrayInputError(ValueError):
    """Bad input: the message is one line and names the file, layer, key or argument at fault."""
