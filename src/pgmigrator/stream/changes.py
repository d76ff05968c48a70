"""From pgoutput messages to encoded events, with the commit marks that drive acknowledgement.

`ChangeEncoder.feed` takes one XLogData payload; events pile up in ``out`` until the runner takes
them with `drain`, together with ``mark``: the end LSN of the last transaction all of whose events
are in the drained list (the slot may be flushed there once every durable sink has them). Event
ids are ``<commit LSN>:<index>`` where the index counts every change of the transaction, filtered
or not, so ids stay the same across restarts and filter changes. After a reconnect, transactions
already published whole (commit LSN at or below ``skip_through``) are skipped, keeping duplicates
to what the sinks had not acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from pgmigrator.events import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    TupleData,
    Update,
)
from pgmigrator.lsn import Lsn
from pgmigrator.protocol import PgOutputDecoder
from pgmigrator.sinks.base import Event
from pgmigrator.stream.encode import ColumnSpec, TableCodec, encode, iso_from_pg_us, message_event
from pgmigrator.stream.filters import Filters


class ChangeEncoder:
    def __init__(self, db: str, filters: Filters) -> None:
        self.db = db
        self.filters = filters
        self.decoder = PgOutputDecoder()
        self.codecs: dict[int, TableCodec | None] = {}
        self._relations: dict[int, Relation] = {}
        self.out: list[Event] = []
        self.out_bytes = 0  # size of the event documents in out
        self.mark: Lsn | None = None
        self.skip_through = Lsn(0)
        self.last_commit = Lsn(0)  # commit LSN of the last transaction whose events are in out
        self.last_commit_time = 0  # its commit time (µs since 2000-01-01 UTC)
        self.in_txn = False
        self.transactions = 0
        self._lsn = Lsn(0)
        self._prefix = ""
        self._index = 0
        self._xid: int | None = None
        self._commit_iso: str | None = None
        self._skipping = False
        self._sources: dict[int, orjson.Fragment] = {}
        self._ops = filters.operations

    def reset(self) -> None:
        """After a reconnect: a new decoder, no open transaction (the server resends it)."""
        self.decoder = PgOutputDecoder()
        self.in_txn = False

    def drain(self) -> tuple[list[Event], Lsn | None]:
        events, mark = self.out, self.mark
        self.out, self.mark, self.out_bytes = [], None, 0
        return events, mark

    def _emit(self, event: Event) -> None:
        self.out.append(event)
        self.out_bytes += len(event.body)

    def feed(self, payload: memoryview | bytes) -> None:
        msg = self.decoder.decode(payload)
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)

    def _begin(self, msg: Begin) -> None:
        self.in_txn = True
        self._lsn = msg.final_lsn
        self._prefix = f"{msg.final_lsn}:"
        self._index = 0
        self._xid = msg.xid
        self._commit_iso = iso_from_pg_us(msg.commit_time)
        self._sources.clear()
        self._skipping = msg.final_lsn <= self.skip_through

    def _commit(self, msg: Commit) -> None:
        self.in_txn = False
        self.mark = msg.end_lsn
        self.last_commit = msg.commit_lsn
        self.last_commit_time = msg.commit_time
        self.transactions += 1

    def set_filters(self, filters: Filters) -> None:
        """Swap the filters (config reload) between transactions; tables known stay known."""
        self.filters = filters
        self._ops = filters.operations
        self._sources.clear()
        for msg in self._relations.values():
            self._build_codec(msg)

    def _relation(self, msg: Relation) -> None:
        if self._relations.get(msg.oid) == msg:
            return  # the same layout again (sent per session and after invalidations)
        self._relations[msg.oid] = msg
        self._build_codec(msg)

    def _build_codec(self, msg: Relation) -> None:
        if not self.filters.table_allowed(msg.namespace, msg.name):
            self.codecs[msg.oid] = None
            return
        names = [c.name for c in msg.columns]
        rules = self.filters.columns(msg.namespace, msg.name, names)
        columns = [ColumnSpec(c.name, c.type_oid, c.is_key) for c in msg.columns]
        self.codecs[msg.oid] = TableCodec(
            self.db, msg.namespace, msg.name, columns, rules.drop, rules.mask
        )

    def _source(self, oid: int, codec: TableCodec) -> orjson.Fragment:
        src = self._sources.get(oid)
        if src is None:
            src = self._sources[oid] = codec.source(str(self._lsn), self._xid, self._commit_iso)
        return src

    def _target(self, oid: int, op: str) -> TableCodec | None:
        """The codec when this change is to be emitted (counts the change's index either way)."""
        self._index += 1
        if self._skipping or (self._ops is not None and op not in self._ops):
            return None
        return self.codecs.get(oid)

    def _insert(self, msg: Insert) -> None:
        codec = self._target(msg.relation_oid, "c")
        if codec is not None:
            self._emit(
                codec.insert(
                    msg.new.values,
                    f"{self._prefix}{self._index}",
                    self._lsn,
                    self._source(msg.relation_oid, codec),
                    "c",
                )
            )

    def _update(self, msg: Update) -> None:
        codec = self._target(msg.relation_oid, "u")
        if codec is None:
            return
        new = msg.new
        unchanged: list[str] | None = None
        if b"u" in new.kinds:
            after, unchanged = codec.row_toast(new.kinds, new.values)
        else:
            after = codec.row(new.values)
        before = _old_image(codec, msg.old, msg.old_kind)
        self._emit(
            encode(
                codec,
                f"{self._prefix}{self._index}",
                self._lsn,
                "u",
                self._source(msg.relation_oid, codec),
                codec.key(new.values),
                before,
                after,
                unchanged,
            )
        )

    def _delete(self, msg: Delete) -> None:
        codec = self._target(msg.relation_oid, "d")
        if codec is None:
            return
        old = msg.old
        self._emit(
            encode(
                codec,
                f"{self._prefix}{self._index}",
                self._lsn,
                "d",
                self._source(msg.relation_oid, codec),
                codec.key(old.values),
                _old_image(codec, old, msg.old_kind),
                None,
            )
        )

    def _truncate(self, msg: Truncate) -> None:
        for oid in msg.relation_oids:
            codec = self._target(oid, "t")
            if codec is None:
                continue
            self._emit(
                encode(
                    codec,
                    f"{self._prefix}{self._index}",
                    self._lsn,
                    "t",
                    self._source(oid, codec),
                    None,
                    None,
                    None,
                )
            )

    def _message(self, msg: Message) -> None:
        if self.in_txn:
            self._index += 1
            if self._skipping:
                return
            event_id, lsn, xid, when = (
                f"{self._prefix}{self._index}",
                self._lsn,
                self._xid,
                self._commit_iso,
            )
        else:
            if msg.lsn <= self.skip_through:
                return
            event_id, lsn, xid, when = f"{msg.lsn}:0", msg.lsn, None, None
            self.mark = msg.lsn if self.mark is None else max(self.mark, msg.lsn)
        if self._ops is not None and "m" not in self._ops:
            return
        self._emit(
            message_event(
                self.db, event_id, lsn, xid, when, msg.transactional, msg.prefix, msg.content
            )
        )


def _old_image(codec: TableCodec, old: TupleData | None, kind: str | None) -> dict[str, Any] | None:
    if old is None:
        return None
    if kind == "O":
        return (
            codec.row_toast(old.kinds, old.values)[0]
            if b"u" in old.kinds
            else codec.row(old.values)
        )
    return codec.key(old.values)


_HANDLERS: dict[type, Callable[[ChangeEncoder, Any], None]] = {
    Begin: ChangeEncoder._begin,
    Commit: ChangeEncoder._commit,
    Relation: ChangeEncoder._relation,
    Insert: ChangeEncoder._insert,
    Update: ChangeEncoder._update,
    Delete: ChangeEncoder._delete,
    Truncate: ChangeEncoder._truncate,
    Message: ChangeEncoder._message,
}
