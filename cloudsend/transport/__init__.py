"""Run commands and move files on a host. Local (subprocess) now; Fabric/SSH with the ssh provider."""

from cloudsend.transport.base import Result, Transport
from cloudsend.transport.local import LocalTransport

__all__ = ["LocalTransport", "Result", "Transport"]
