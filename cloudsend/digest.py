"""The sha256 of a file, read in 1 MiB chunks (files are content-keyed everywhere: uploads,
the shipped wheel, the maestro's bundle and fetched results)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
