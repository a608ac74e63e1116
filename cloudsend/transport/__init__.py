"""Run commands and move files on a host: local (subprocess) now, SSH (Fabric) next."""

from cloudsend.transport.base import Result, Transport
from cloudsend.transport.local import LocalTransport

__all__ = ["LocalTransport", "Result", "Transport"]
