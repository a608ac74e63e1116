"""A file on an SSH host read over SFTP as a RemoteFile, pipelined in bounded windows.

paramiko's own prefetch asks for a whole file at once and, when the reader stops early, leaves
its requests (and a thread issuing them) behind; here each window of WINDOW bytes is requested
at once and read to its end before the next one, so at most WINDOW bytes are ever asked for.
What has arrived but is not read yet is bounded further by the SSH channel's flow control
(paramiko's 2 MB window): the reader's memory stays flat whatever the file's size.
Measured on loopback (300 MB): windows of 4 MB 67 MB/s, 16 MB 98 MB/s, SFTPClient.get 105 MB/s;
peak RSS the same for all.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import paramiko

from cloudsend.errors import TransportError

WINDOW = 16 << 20  # bytes asked for ahead of the reader (512 SFTP requests of 32 KB)
PIECE = paramiko.SFTPFile.MAX_REQUEST_SIZE  # one SFTP read request


def _request(fh: paramiko.SFTPFile, start: int, end: int) -> None:
    """Ask for [start, end) at once, as SFTPFile.prefetch does but from this thread: prefetch's
    own thread, still sending when the link dies, would print its traceback on the terminal.
    (Sending the requests never blocks: 512 of them are ~20 KB.)"""
    send = getattr(fh, "_prefetch_thread", None)
    if send is None:  # a paramiko without it: its threaded prefetch then
        fh.prefetch(end)
        return
    fh._prefetching = True
    fh._prefetch_done = False
    send([(n, min(PIECE, end - n)) for n in range(start, end, PIECE)], None)


class SftpReader:
    """`failed(exc)` turns an exception into the TransportError to raise (and forgets a broken
    SFTP session); `received` counts the bytes read."""

    def __init__(
        self, fh: paramiko.SFTPFile, failed: Callable[[Exception], TransportError]
    ) -> None:
        self._fh = fh
        self._failed = failed
        self.received = 0
        self.broken = False  # the session is unusable: do not even close the file over it

    def _fail(self, exc: Exception) -> TransportError:
        self.broken = True
        return self._failed(exc)

    def size(self) -> int:
        try:
            return int(self._fh.stat().st_size or 0)
        except Exception as exc:
            raise self._fail(exc) from exc

    def pread(self, offset: int, n: int) -> bytes:
        try:
            self._fh.seek(offset)
            data: bytes = self._fh.read(n)
        except Exception as exc:
            raise self._fail(exc) from exc
        self.received += len(data)
        return data

    def chunks(self, offset: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
        end = self.size() if end is None else end
        fh, pos, window_end = self._fh, offset, offset
        try:
            fh.seek(pos)
            while pos < end:
                window_end = min(end, pos + WINDOW)
                _request(fh, pos, window_end)
                while pos < window_end:
                    data = fh.read(min(PIECE, window_end - pos))
                    if not data:
                        raise OSError(f"file shrank to {pos} bytes while being read")
                    pos += len(data)
                    self.received += len(data)
                    yield data
        except GeneratorExit:
            # the reader stopped early: take in the window's answers still on their way, or
            # they would come before the answer to the session's next request
            try:
                while pos < window_end:
                    data = fh.read(min(PIECE, window_end - pos))
                    if not data:
                        break
                    pos += len(data)
            except Exception as exc:
                self._fail(exc)
            raise
        except Exception as exc:
            raise self._fail(exc) from exc
