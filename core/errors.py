"""The errors varrt reports to users: one line naming the cause, never a traceback.

The CLI prints ``str(error)`` and exits with ``error.exit_code``: 2 for usage errors (bad
options, unknown methods), 1 for everything else (unreadable models, unsupported ops...).
"""


class VarrtError(Exception):
    """A failure varrt explains in one line; the CLI exits 1."""

    exit_code = 1


class UsageError(VarrtError):
    """The user asked for something that cannot be: unknown option, method or class spec."""

    exit_code = 2


class ModelError(VarrtError):
    """The model cannot be read, checked or differentiated (names the file, node or op)."""


class UnsupportedOpError(ModelError):
    """An op on the gradient path has no vector-Jacobian-product rule."""
