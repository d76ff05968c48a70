"""The logical replication stream: START_REPLICATION over psycopg's low-level ``pgconn``.

Only the low-level connection can carry COPY_BOTH; it runs non-blocking under asyncio (the socket
is watched with ``add_reader``). Keepalives that request a reply are answered at once; a standby
status update (write / flush / apply) also goes out every ``status_interval`` seconds, and within
`FLUSH_REPORT_S` of ``flushed`` moving. ``flushed``
is set by the consumer to what the destination has durably committed and never moves backwards:
the slot may only discard WAL the destination already has (DESIGN.md rules 3 and 5).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import pq, sql

from pgmigrator.aio import wait_for
from pgmigrator.dsn import Target
from pgmigrator.errors import ReplicationError, RetryableReplicationError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect
from pgmigrator.protocol import (
    PrimaryKeepalive,
    XLogData,
    build_standby_status_update,
    parse_copy_data,
)
from pgmigrator.source._rowpump import RowPump, new_txn_state, row_pump
from pgmigrator.source.slots import slot_gone_error, slot_lost_error

if TYPE_CHECKING:
    from pgmigrator.protocol._speedups import TxnState

log = get_logger("replication")
_XLOG_TAG = ord("w")
_WAL_END = struct.Struct("!Q").unpack_from
_int_new = int.__new__  # an unpacked UInt64 is always a valid LSN: skip the range check
#: Extra non-blocking reads a `pump` may make when libpq's buffer (16 KB to start) runs dry: it
#: takes what the kernel holds at once (a turn of the follow loop per 16 KB made the catch-up of
#: single-row transactions one destination commit per handful of transactions).
REFILLS = 16
FLUSH_REPORT_S = 1.0  # a flush position that moved is acknowledged within this (see `tick`)


class RowSink(Protocol):
    """Where `ReplicationStream.pump`'s C loop puts row changes and transaction ends (`Reader`)."""

    def fast_rows(self, txn: TxnState) -> tuple[list[Any], int] | None:
        """The list for row changes and how many it may take, or None: not now.

        ``txn`` is filled with the batch's transaction state for the C loop to carry on.
        """

    def rows_added(self, count: int, txn: TxnState) -> None:
        """The C loop put ``count`` row changes into the list and left ``txn`` as it is now."""


class ReplicationStream:
    def __init__(
        self,
        target: Target,
        slot: str,
        publication: str,
        *,
        status_interval: float = 10.0,
        streaming: bool = True,
    ) -> None:
        self.target = target
        self.slot = slot
        self.publication = publication
        self.status_interval = status_interval
        self.streaming = streaming
        self.conn: Conn | None = None
        self.received = Lsn(0)  # highest WAL position seen (XLogData or keepalive)
        self.flushed = Lsn(0)  # what the destination committed: the slot's confirmed flush
        self.idle = False  # set by the consumer when it holds nothing unapplied
        self._keepalives = 0
        self._last_status = 0.0
        self._sent_flush = Lsn(0)  # the flush position of the last status update
        self._txn = new_txn_state()  # the C loop's view of the consumer's transaction state
        self._waiter: asyncio.Future[bool] | None = None  # what `wake` resolves

    def open(self, start_lsn: Lsn) -> None:
        """Connect and start streaming from ``start_lsn`` (blocking: done once per connection)."""
        self.conn = connect(self.target, replication=True)
        pgconn = self.conn.pgconn
        timeout_s = _sender_timeout_s(pgconn)
        if timeout_s:  # status updates well inside the walsender's timeout, even while paused
            self.status_interval = min(self.status_interval, max(0.2, timeout_s / 4))
        options = [
            ("proto_version", "2"),
            ("publication_names", self.publication),
            ("messages", "true"),
        ]
        if self.streaming:
            options.append(("streaming", "on"))
        opts = ", ".join(f"{k} {_quote_literal(v)}" for k, v in options)
        ident = sql.Identifier(self.slot).as_string(self.conn)
        command = f"START_REPLICATION SLOT {ident} LOGICAL {start_lsn} ({opts})"
        pgconn.send_query(command.encode())
        res = pgconn.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            self.close()
            raise _start_error(self.slot, self.publication, res)
        pgconn.nonblocking = 1
        self.flushed = max(self.flushed, start_lsn)
        self.received = max(self.received, start_lsn)
        log.info(
            "streaming", slot=self.slot, publication=self.publication, start_lsn=str(start_lsn)
        )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send_status(self, reply: bool = False) -> None:
        """Report write/flush/apply positions to the walsender (flush never passes ``flushed``)."""
        if self.conn is None:
            return
        pgconn = self.conn.pgconn
        msg = build_standby_status_update(
            max(self.received, self.flushed), self.flushed, self.flushed, reply_requested=reply
        )
        try:
            if pgconn.put_copy_data(msg) != 1:
                raise RetryableReplicationError(
                    f"cannot send status to the source: {pgconn.get_error_message()}"
                )
            while pgconn.flush() == 1:
                time.sleep(0.001)
        except psycopg.Error as exc:
            raise RetryableReplicationError(
                f"replication connection lost while sending status: {exc}"
            ) from exc
        self._last_status = time.monotonic()
        self._sent_flush = self.flushed

    def pump(
        self,
        feed: Callable[[memoryview | bytes, Lsn], None],
        limit: int,
        rows: RowSink | None = None,
    ) -> int:
        """Feed up to ``limit`` XLogData messages already received, with no ``await`` each.

        The backlog hot path: ``next`` costs an event-loop round per message; this reads what
        libpq and the kernel hold in a tight loop (keepalives handled as usual; up to `REFILLS`
        non-blocking reads of the socket) and returns how many it fed.
        With ``rows`` and the C loop available, runs of row changes skip ``feed``: they are
        decoded from libpq's buffer straight into the list ``rows.fast_rows()`` names.
        """
        assert self.conn is not None, "open() first"
        pgconn = self.conn.pgconn
        txn = self._txn
        fast = row_pump() if rows is not None and txn is not None else None
        fed = 0
        refills, dry = REFILLS, False  # dry: the last refill brought no complete message
        try:
            while fed < limit:
                target = None
                if fast is not None and rows is not None and txn is not None:
                    target = rows.fast_rows(txn)
                if target is not None:
                    assert fast is not None and rows is not None and txn is not None
                    want = min(target[1], limit - fed)
                    appended, rest = self._pump_rows(fast, rows, txn, target[0], want)
                    fed += appended
                    dry = dry and not appended
                    if rest is None:
                        if appended < want and not txn.flush_due:
                            if dry or not refills:
                                break  # no further complete message, here or in the kernel
                            refills, dry = refills - 1, True
                            pgconn.consume_input()  # what the kernel holds meanwhile
                        continue
                    data: memoryview | bytes = rest
                else:
                    size, data = pgconn.get_copy_data(1)
                    if size < 0:
                        raise self._stream_end()
                    if size == 0:  # as above
                        if dry or not refills:
                            break
                        refills, dry = refills - 1, True
                        pgconn.consume_input()
                        continue
                dry = False
                fed += self._handle(data, feed)
        except psycopg.Error as exc:
            raise RetryableReplicationError(f"replication connection lost: {exc}") from exc
        self.tick()  # a backlog keeps `next` from ever finding the socket empty
        return fed

    def _pump_rows(
        self, fast: RowPump, rows: RowSink, txn: TxnState, pending: list[Any], want: int
    ) -> tuple[int, bytes | None]:
        """One run of the C loop: (changes appended, the message it handed back or None)."""
        assert self.conn is not None
        pgconn = self.conn.pgconn
        ptr: int | None = getattr(pgconn, "pgconn_ptr", None)
        if ptr is None:
            raise RetryableReplicationError("replication connection lost: it is closed")
        appended, wal_end, rest = fast(ptr, pending, want, txn)
        rows.rows_added(appended, txn)
        if wal_end > self.received:
            self.received = _int_new(Lsn, wal_end)
        if type(rest) is int:
            if rest == -1:
                raise self._stream_end()
            message = pgconn.get_error_message() or "error in PQgetCopyData"
            raise RetryableReplicationError(f"replication connection lost: {message}")
        return appended, rest if type(rest) is bytes else None

    def _handle(
        self, data: memoryview | bytes, feed: Callable[[memoryview | bytes, Lsn], None]
    ) -> int:
        """One CopyData message from the Python loop: 1 when it was XLogData (fed), else 0."""
        if data[0] == _XLOG_TAG:
            wal_end = _int_new(Lsn, _WAL_END(data, 9)[0])
            if wal_end > self.received:
                self.received = wal_end
            feed(data[25:], wal_end)
            return 1
        msg = parse_copy_data(data)
        assert isinstance(msg, PrimaryKeepalive)
        self._keepalive(msg)
        return 0

    def tick(self) -> None:
        """Send a status update when one is due; keeps the walsender alive while we do not read.

        Due every ``status_interval`` seconds, and every `FLUSH_REPORT_S` while ``flushed``
        moves: the slot's confirmed and restart positions (and so the WAL the source keeps, and
        what a reconnect decodes again) only advance on acknowledged positions, and while data
        streams in `next` never finds the socket empty, so acknowledgements went out only when
        the walsender asked for one (every ``wal_sender_timeout`` / 2).
        """
        since = time.monotonic() - self._last_status
        if since >= self.status_interval or (
            since >= FLUSH_REPORT_S and self.flushed > self._sent_flush
        ):
            self.send_status()

    async def next(self, timeout: float) -> XLogData | None:
        """The next XLogData, or None when nothing arrived within ``timeout`` seconds (0: only what
        is there) or when `wake` was called meanwhile."""
        assert self.conn is not None, "open() first"
        pgconn = self.conn.pgconn
        deadline = time.monotonic() + timeout
        polled = woken = False
        while True:
            try:
                n, data = pgconn.get_copy_data(1)
            except psycopg.Error as exc:
                raise RetryableReplicationError(f"replication connection lost: {exc}") from exc
            if n > 0:
                msg = parse_copy_data(data)
                if isinstance(msg, XLogData):
                    if msg.wal_end > self.received:
                        self.received = msg.wal_end
                    return msg
                self._keepalive(msg)
                continue
            if n < 0:
                raise self._stream_end()
            self.tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or woken:
                if (
                    timeout == 0 and not polled
                ):  # read what the kernel already holds before saying "nothing"
                    polled = True
                    self._consume(pgconn)
                    continue
                return None
            woken = await self._wait_readable(pgconn.socket, min(remaining, self.status_interval))
            self._consume(pgconn)

    async def settle(self, timeout: float = 0.5) -> None:
        """On a clean stop with nothing unapplied (``idle``): acknowledge all the walsender read.

        The slot's restart point moves only to a running-transactions record that lies below an
        acknowledged position, and the one written after the last change (a checkpoint's, or the
        next 15 s one) is beyond the last commit we applied. Asking the walsender for a
        keepalive and acknowledging its position (nothing unapplied lies before it) moves the
        restart point past the WAL already applied, so the next start does not decode it again
        (bench/follow.py's single-row catch-up after a 300k-row one: its walsender 6.0 -> 3.9 s
        of CPU, the drain 6.9 -> 4.8 s). Gives up at once if a change arrives (it is not
        applied: nothing moves past it). The caller's final status update carries the position.
        """
        if not self.idle or self.conn is None:
            return
        seen = self._keepalives
        self.send_status(reply=True)
        deadline = time.monotonic() + timeout
        while self._keepalives == seen and (left := deadline - time.monotonic()) > 0:
            if await self.next(timeout=min(left, 0.05)) is not None:
                self.idle = False
                return

    def wake(self) -> None:
        """Make a `next` that is waiting for the socket return (None if nothing came) at once."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def _wait_readable(self, fd: int, timeout: float) -> bool:
        """Wait until ``fd`` is readable, ``timeout`` passed or `wake` was called (then True)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut

        def ready() -> None:
            if not fut.done():
                fut.set_result(False)

        loop.add_reader(fd, ready)
        try:
            return await wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            self._waiter = None
            loop.remove_reader(fd)

    @staticmethod
    def _consume(pgconn: pq.abc.PGconn) -> None:
        try:
            pgconn.consume_input()
        except psycopg.Error as exc:
            raise RetryableReplicationError(
                f"replication connection lost: {str(exc).strip()}"
            ) from exc

    def _keepalive(self, msg: PrimaryKeepalive) -> None:
        self._keepalives += 1
        if msg.wal_end > self.received:
            self.received = msg.wal_end
        if self.idle and msg.wal_end > self.flushed:
            self.flushed = msg.wal_end  # nothing of ours is pending: let an idle slot advance
        if msg.reply_requested:
            self.send_status()

    def _stream_end(self) -> ReplicationError:
        assert self.conn is not None
        res = self.conn.pgconn.get_result()
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            err = _result_error(res, self.slot, self.publication)
            return err
        return RetryableReplicationError(
            "the source ended the replication stream",
            hint="the walsender was terminated or the server restarted: reconnecting resumes from the last flushed LSN",
        )


def _sender_timeout_s(pgconn: pq.abc.PGconn) -> float | None:
    """The source's ``wal_sender_timeout`` in seconds (None when off or unknown)."""
    res = pgconn.exec_(b"SHOW wal_sender_timeout")
    if res.status != pq.ExecStatus.TUPLES_OK or not res.ntuples:
        return None
    return parse_duration_s((res.get_value(0, 0) or b"").decode())


_UNITS = {"us": 1e-6, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str) -> float | None:
    """``'1min'`` -> 60.0, ``'500ms'`` -> 0.5, ``'0'`` -> None (disabled), as the server prints them."""
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789."))
    try:
        value = float(text[:digits])
    except ValueError:
        return None
    unit = text[digits:].strip() or "ms"  # wal_sender_timeout's base unit is milliseconds
    factor = _UNITS.get(unit)
    if factor is None or value <= 0:
        return None
    return value * factor


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _result_error(res: pq.abc.PGresult, slot: str, publication: str) -> ReplicationError:
    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    text = (res.error_message or b"").decode(errors="replace").strip()
    if state == "42704" and "slot" in text:  # (checked or created before streaming started)
        return slot_gone_error(slot)
    if state == "55006":  # retryable: after a reconnect, our own old walsender may still be exiting
        return RetryableReplicationError(  # (follow refuses a slot in use up front, at start)
            f"replication slot {slot!r} is in use by another consumer: {text}",
            hint="stop the other `follow` (or subscriber) using this slot, or use another --name",
        )
    if state == "42704" and "publication" in text:
        return ReplicationError(
            f"publication {publication!r} does not exist on the source",
            hint="create it (`pgmigrator clone` does) or pass the right --publication",
        )
    if state == "55000" and "slot has been invalidated" in text:  # (max_slot_wal_keep_size)
        return slot_lost_error(slot)
    if state[:2] in ("57", "08"):
        return RetryableReplicationError(f"source: {text}")
    return ReplicationError(f"source replication error: {text} (SQLSTATE {state})")


def _start_error(slot: str, publication: str, res: pq.abc.PGresult | None) -> ReplicationError:
    if res is None:
        return RetryableReplicationError(
            "the source closed the connection before streaming started"
        )
    return _result_error(res, slot, publication)
