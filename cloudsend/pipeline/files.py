"""Content-addressed uploads: every file a job needs is stored once per host by sha256."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cloudsend.digest import sha256_file
from cloudsend.providers.base import Host


@dataclass
class FileIndex:
    """Local files by sha256, hashed once per invocation."""

    by_sha: dict[str, Path] = field(default_factory=dict)
    _by_path: dict[Path, str] = field(default_factory=dict)

    def add(self, path: Path) -> str:
        sha = self._by_path.get(path)
        if sha is None:
            sha = sha256_file(path)
            self._by_path[path] = sha
            self.by_sha.setdefault(sha, path)
        return sha

    @staticmethod
    def entries(paths: list[Path]) -> list[tuple[str, Path]]:
        """(work-dir relative path, local file) for each file; directories are walked."""
        out: list[tuple[str, Path]] = []
        for path in paths:
            if path.is_dir():
                for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                    out.append((f"{path.name}/{sub.relative_to(path).as_posix()}", sub))
            else:
                out.append((path.name, path))
        return out

    def hashes(self, paths: list[Path]) -> set[str]:
        """The sha256 of every file these paths stand for."""
        return {self.add(file) for _, file in self.entries(paths)}

    def links_for(self, paths: list[Path], root: str) -> dict[str, str]:
        """Work-dir relative path → host path of the stored copy."""
        return {rel: f"{root}/files/{self.add(file)}" for rel, file in self.entries(paths)}


def sync_files(
    host: Host, index: FileIndex, needed: set[str], present: set[str] | None = None
) -> tuple[int, int]:
    """Send the files the host lacks: one listing round trip (unless the caller has a fresh
    listing), then one put per missing file. Returns (files sent, bytes sent).
    """
    if not needed:
        return 0, 0
    files_dir = f"{host.root}/files"
    if present is None:
        listing = host.transport.run(
            f"mkdir -p {shlex.quote(files_dir)} && ls -1 {shlex.quote(files_dir)}",
            what="listing the files the host already has",
        )
        present = set(listing.stdout.split())
    sent = sent_bytes = 0
    for sha in sorted(needed - present):
        local = index.by_sha[sha]
        host.transport.put(local, f"{files_dir}/{sha}")
        sent += 1
        sent_bytes += local.stat().st_size
    return sent, sent_bytes
