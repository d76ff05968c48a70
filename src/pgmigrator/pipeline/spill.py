"""Spool files for streamed (in-progress) transactions, so memory stays bounded.

With ``streaming 'on'`` the server sends a large transaction in chunks before it commits, possibly
interleaved with other transactions, and may abort it (or one of its subtransactions) later.
Each top-level transaction's raw pgoutput change messages are appended to its own file
(length-prefixed); a subtransaction abort truncates the file back to where that subtransaction
began (as native logical replication does); a commit replays the file in order, then deletes it.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_LEN = struct.Struct("!I")


class SpillStore:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pgmigrator-spill-", dir=directory))
        self._files: dict[int, BinaryIO] = {}
        self._sub_start: dict[int, dict[int, int]] = {}
        self.bytes_spilled = 0

    def _path(self, xid: int) -> Path:
        return self.dir / f"{xid}.spill"

    def append(self, top_xid: int, sub_xid: int, payload: bytes | memoryview) -> None:
        fh = self._files.get(top_xid)
        if fh is None:
            fh = self._files[top_xid] = open(self._path(top_xid), "ab+")  # noqa: SIM115 - kept open across calls
            self._sub_start[top_xid] = {}
        starts = self._sub_start[top_xid]
        if sub_xid not in starts:
            starts[sub_xid] = fh.tell()
        fh.write(_LEN.pack(len(payload)))
        fh.write(payload)
        self.bytes_spilled += len(payload) + _LEN.size

    def abort(self, top_xid: int, sub_xid: int) -> None:
        """Forget a whole transaction, or truncate back to where an aborted subtransaction began."""
        fh = self._files.get(top_xid)
        if fh is None:
            return
        if sub_xid == top_xid or sub_xid == 0:
            self.discard(top_xid)
            return
        start = self._sub_start[top_xid].pop(sub_xid, None)
        if start is not None:
            fh.flush()
            fh.truncate(start)
            fh.seek(start)
            self._sub_start[top_xid] = {
                k: v for k, v in self._sub_start[top_xid].items() if v < start
            }

    def replay(self, top_xid: int) -> Iterator[bytes]:
        """Yield the transaction's messages in order, then delete its file."""
        fh = self._files.pop(top_xid, None)
        self._sub_start.pop(top_xid, None)
        if fh is None:
            return
        try:
            fh.flush()
            fh.seek(0)
            while header := fh.read(_LEN.size):
                (size,) = _LEN.unpack(header)
                yield fh.read(size)
        finally:
            fh.close()
            os.unlink(self._path(top_xid))

    def discard(self, top_xid: int) -> None:
        fh = self._files.pop(top_xid, None)
        self._sub_start.pop(top_xid, None)
        if fh is not None:
            fh.close()
            os.unlink(self._path(top_xid))

    def discard_all(self) -> None:
        for xid in list(self._files):
            self.discard(xid)

    def open_transactions(self) -> int:
        return len(self._files)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
