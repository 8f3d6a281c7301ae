"""The on-disk cache of explanation graphs: where it lives, how entries are keyed and written.

Building an explanation graph differentiates the whole model, so it is done once per
(model, method, options, varrt version) and kept as an ONNX file. Each file stores its own key in
its metadata and ends with a sha256 of everything before it (one more metadata entry, appended as
a protobuf record, so the file stays a plain ONNX model). A truncated or bit-flipped file (checksum
differs) or a file written for something else (key differs) is reported once and rebuilt instead of
being trusted.

>>> key = graph_cache_key(b"model bytes", "gradient", {"classes": "top5"})
>>> len(key)
64
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import onnx
import varrt.export
import varrt.kernels
from varrt.core.version import __version__
from varrt.files import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Metadata entry of a cached graph that holds the key it was stored under.
KEY_METADATA = "varrt.cache_key"
#: Metadata entry, last in the file, holding the sha256 (hex) of the bytes before it.
CHECKSUM_METADATA = "varrt.sha256"


def checksum_trailer(body: bytes) -> bytes:
    """The record appended to ``body``: a ModelProto with one metadata entry, its sha256.

    Protobuf merges concatenated messages (repeated fields append), so ``body + trailer`` parses
    as ``body`` with one more metadata entry; the trailer has a fixed length, so the checksum is
    checked on the raw bytes, without re-serializing.
    """
    trailer = onnx.ModelProto()
    trailer.metadata_props.add(key=CHECKSUM_METADATA, value=hashlib.sha256(body).hexdigest())
    return trailer.SerializeToString()


def verify_checksum(data: bytes) -> bool:
    """True when ``data`` ends with the checksum trailer of the bytes before it."""
    size = len(checksum_trailer(b""))
    return len(data) > size and data[-size:] == checksum_trailer(data[:-size])


def default_cache_dir() -> Path:
    """``$VARRT_CACHE_DIR`` if set, else ``~/.cache/varrt``."""
    env = os.environ.get("VARRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "varrt"


@functools.lru_cache(maxsize=1)
def exporter_fingerprint() -> str:
    """sha256 of the exporter's own source: a changed rule must not be served a stale graph, even
    between two builds that share a version number (editable installs, development)."""
    digest = hashlib.sha256()
    for package in (varrt.export, varrt.kernels):
        (root,) = (Path(entry) for entry in package.__path__)
        for source in sorted(root.rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def graph_cache_key(
    model_bytes: bytes, method: str, options: dict[str, Any], version: str = __version__
) -> str:
    """sha256 over the model bytes, the method, its options (order-insensitive), varrt's version
    and the exporter's source fingerprint."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model_bytes).digest())
    digest.update(
        json.dumps(
            {"method": method, "options": options, "varrt": version, "exporter": exporter_fingerprint()},
            sort_keys=True, default=repr,
        ).encode()
    )
    return digest.hexdigest()


class GraphCache:
    """Explanation graphs stored as ``<dir>/graphs/<key>.onnx``.

    >>> cache = GraphCache("/tmp/varrt-doctest-cache")
    >>> cache.load("0" * 64) is None
    True
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / "graphs" / f"{key}.onnx"

    def load(self, key: str) -> onnx.ModelProto | None:
        """The cached graph for ``key``, or None when missing, corrupt or stored for another key."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            logger.warning("varrt: cannot read cached graph %s (%s); rebuilding it", path, error)
            return None
        if not verify_checksum(data):
            logger.warning("varrt: cached graph %s is corrupt (checksum mismatch); rebuilding it", path)
            return None
        try:
            model = onnx.load_from_string(data)
        except Exception as error:  # protobuf raises DecodeError, or others on garbage
            logger.warning(
                "varrt: cached graph %s is corrupt (%s); rebuilding it", path, type(error).__name__
            )
            return None
        stored = {entry.key: entry.value for entry in model.metadata_props}.get(KEY_METADATA)
        if stored != key or not model.graph.output:
            logger.warning("varrt: cached graph %s does not match its key; rebuilding it", path)
            return None
        return model

    def store(self, key: str, model: onnx.ModelProto) -> Path:
        """Write ``model`` under ``key`` (atomically) and return its path; ``model`` is not modified."""
        stamped = onnx.ModelProto()
        stamped.CopyFrom(model)
        for entry in list(stamped.metadata_props):
            if entry.key in (KEY_METADATA, CHECKSUM_METADATA):
                stamped.metadata_props.remove(entry)
        stamped.metadata_props.add(key=KEY_METADATA, value=key)
        path = self.path(key)
        body = stamped.SerializeToString()
        atomic_write_bytes(path, body + checksum_trailer(body))
        return path
