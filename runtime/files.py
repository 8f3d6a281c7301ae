"""Writing files atomically: readers see the old file or the whole new one, never a part.

Every file varrt writes (explanations, overlays, exported graphs, cached graphs and engines) goes
through ``atomic_path``, so they all follow the umask like any file the user creates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only once the block succeeds.

    The temporary lives in the same directory, so ``os.replace`` is a rename on one file system
    (atomic on POSIX and Windows); an interrupted run leaves the old file intact, and two
    processes writing the same path both succeed. The name is unique and the writer creates the
    file itself, so it gets the usual ``0o666 & ~umask`` permissions (``mkstemp`` would make it
    readable by its owner only).

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before it replaces the old file."""
    with atomic_path(path) as temporary, open(temporary, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
