"""Encoding decoded changes as the one JSON event document every sink receives (the hot path).

A `TableCodec` is built once per table layout (a pgoutput ``Relation``, or the catalog for
snapshot rows) with one converter per kept column, chosen by type OID, the filter's dropped and
masked columns already folded in; encoding a row is then one dict comprehension plus one
``orjson.dumps``. The ``source`` object is encoded once per transaction and table and embedded
as an ``orjson.Fragment``. Values arrive in PostgreSQL's text output form (the stream session
runs with ``DateStyle=ISO``, ``TimeZone=UTC``, ``bytea_output=hex``, ``extra_float_digits=3``):

- int2/int4/int8/oid -> JSON integer; float4/float8 -> number (``NaN``/``Infinity`` as strings);
- numeric -> string (keeps precision); bool -> true/false; json/jsonb -> embedded JSON;
- bytea -> base64; timestamptz -> ISO 8601 in UTC (``...Z``); timestamp -> ISO 8601 (``T``);
- arrays and every other type -> the text form as a string.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pgmigrator.events import pg_timestamp_to_datetime
from pgmigrator.lsn import Lsn
from pgmigrator.sinks.base import Event

Converter = Callable[[bytes], Any]
MASK = "***"

_SPECIAL_FLOATS = frozenset({b"NaN", b"Infinity", b"-Infinity"})


def _text(value: bytes) -> str:
    return value.decode()


def _bool(value: bytes) -> bool:
    return value == b"t"


def _float(value: bytes) -> float | str:
    if value in _SPECIAL_FLOATS:
        return value.decode()
    return float(value)


def _bytea(value: bytes) -> str:
    if value[:2] == b"\\x":
        return binascii.b2a_base64(binascii.unhexlify(value[2:]), newline=False).decode()
    return value.decode()  # escape format: the session asked for hex, keep the text as is


def _timestamp(value: bytes) -> str:
    text = value.decode()
    if text[-1:].isdigit():  # not 'infinity' nor a BC date
        return text.replace(" ", "T", 1)
    return text


def _timestamptz(value: bytes) -> str:
    text = value.decode()
    if text.endswith("+00"):
        return text[:-3].replace(" ", "T", 1) + "Z"
    try:  # a session whose TimeZone is not UTC: convert
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text  # infinity, BC dates
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_MASKED: Converter = lambda value: MASK  # noqa: E731

#: Converters by type OID; every OID not listed keeps its text form.
CONVERTERS: dict[int, Converter] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    26: int,
    700: _float,
    701: _float,
    1700: _text,
    114: orjson.Fragment,
    3802: orjson.Fragment,
    17: _bytea,
    1114: _timestamp,
    1184: _timestamptz,
}


def converter(type_oid: int) -> Converter:
    return CONVERTERS.get(type_oid, _text)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    type_oid: int
    is_key: bool


def iso_from_pg_us(us: int) -> str:
    """A server timestamp (µs since 2000-01-01 UTC) as ISO 8601 UTC text."""
    try:
        return pg_timestamp_to_datetime(us).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return str(us)


_EVENT_FIELDS = ("id", "lsn", "op", "schema", "table", "body")
_EVENT_SETTERS = tuple(Event.__dict__[f].__set__ for f in _EVENT_FIELDS)
_new_event: Callable[[type[Event]], Event] = object.__new__


def make_event(
    event_id: str, lsn: Lsn, op: str, schema: str | None, table: str | None, body: bytes
) -> Event:
    """`Event(...)` without the frozen dataclass's ``object.__setattr__`` per field (hot path)."""
    event = _new_event(Event)
    s_id, s_lsn, s_op, s_schema, s_table, s_body = _EVENT_SETTERS
    s_id(event, event_id)
    s_lsn(event, lsn)
    s_op(event, op)
    s_schema(event, schema)
    s_table(event, table)
    s_body(event, body)
    return event


def _expression(conv: Converter, i: int, ns: dict[str, Any]) -> str:
    """Python source converting ``x`` (not None) with ``conv``, inlined for the common types."""
    if conv is _text:
        return "x.decode()"
    if conv is int:
        return "int(x)"
    if conv is _bool:
        return "x == b't'"
    ns[f"c{i}"] = conv
    return f"c{i}(x)"


class TableCodec:
    """Encodes rows of one table layout; see the module docstring.

    ``row``, ``key`` and ``insert`` are compiled per layout (plain Python source with the column
    names and converters baked in): no loop, no per-column lookups on the hot path.
    """

    __slots__ = ("cols", "db", "insert", "key", "key_cols", "names", "row", "schema", "table")

    def __init__(
        self,
        db: str,
        schema: str,
        table: str,
        columns: Sequence[ColumnSpec],
        drop: frozenset[str] = frozenset(),
        mask: frozenset[str] = frozenset(),
    ) -> None:
        self.db, self.schema, self.table = db, schema, table
        self.names = tuple(c.name for c in columns)
        # (index in the wire tuple, name, converter) for every kept column
        self.cols: tuple[tuple[int, str, Converter], ...] = tuple(
            (i, c.name, _MASKED if c.name in mask else converter(c.type_oid))
            for i, c in enumerate(columns)
            if c.name not in drop
        )
        self.key_cols = tuple(col for col in self.cols if columns[col[0]].is_key)
        self._compile()

    def _compile(self) -> None:
        ns: dict[str, Any] = {
            "dumps": orjson.dumps,
            "make_event": make_event,
            "SCHEMA": self.schema,
            "TABLE": self.table,
            "EMPTY": [],
        }
        conv = [
            f"    a{i} = None if (x := values[{i}]) is None else {_expression(c, i, ns)}\n"
            for i, _, c in self.cols
        ]
        after = ", ".join(f"{n!r}: a{i}" for i, n, _ in self.cols)
        key = ", ".join(f"{n!r}: a{i}" for i, n, _ in self.key_cols)
        key_conv = [conv[j] for j, col in enumerate(self.cols) if col in self.key_cols]
        source = (
            f"def row(values):\n{''.join(conv)}    return {{{after}}}\n"
            f"def key(values):\n{''.join(key_conv)}    return {{{key}}}\n"
            f"def insert(values, eid, lsn, src, op):\n{''.join(conv)}"
            f"    return make_event(eid, lsn, op, SCHEMA, TABLE, dumps({{'id': eid, 'op': op,"
            f" 'source': src, 'key': {{{key}}}, 'before': None, 'after': {{{after}}},"
            f" 'unchanged_toast': EMPTY}}))\n"
        )
        exec(compile(source, f"<codec {self.schema}.{self.table}>", "exec"), ns)
        self.row: Callable[[Sequence[bytes | None]], dict[str, Any]] = ns["row"]
        self.key: Callable[[Sequence[bytes | None]], dict[str, Any]] = ns["key"]
        self.insert: Callable[[Sequence[bytes | None], str, Lsn, orjson.Fragment, str], Event] = ns[
            "insert"
        ]

    def source(self, lsn: str | None, xid: int | None, commit_time: str | None) -> orjson.Fragment:
        return orjson.Fragment(
            orjson.dumps(
                {
                    "db": self.db,
                    "schema": self.schema,
                    "table": self.table,
                    "lsn": lsn,
                    "xid": xid,
                    "commit_time": commit_time,
                }
            )
        )

    def row_toast(
        self, kinds: bytes, values: Sequence[bytes | None]
    ) -> tuple[dict[str, Any], list[str]]:
        """Kept columns except unchanged TOAST ones, which are returned by name."""
        row: dict[str, Any] = {}
        unchanged: list[str] = []
        for i, n, c in self.cols:
            if kinds[i] == 0x75:  # 'u'
                unchanged.append(n)
            else:
                v = values[i]
                row[n] = None if v is None else c(v)
        return row, unchanged


def encode(
    codec: TableCodec,
    event_id: str,
    lsn: Lsn,
    op: str,
    source: orjson.Fragment,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    unchanged: list[str] | None = None,
) -> Event:
    body = orjson.dumps(
        {
            "id": event_id,
            "op": op,
            "source": source,
            "key": key,
            "before": before,
            "after": after,
            "unchanged_toast": unchanged or [],
        }
    )
    return make_event(event_id, lsn, op, codec.schema, codec.table, body)


def message_event(
    db: str,
    event_id: str,
    lsn: Lsn,
    xid: int | None,
    commit_time: str | None,
    transactional: bool,
    prefix: str,
    content: bytes,
) -> Event:
    """A logical decoding message (``pg_logical_emit_message``) as an ``op: "m"`` event."""
    try:
        text: str | None = content.decode()
    except UnicodeDecodeError:
        text = None
    body = orjson.dumps(
        {
            "id": event_id,
            "op": "m",
            "source": {
                "db": db,
                "schema": None,
                "table": None,
                "lsn": str(lsn),
                "xid": xid,
                "commit_time": commit_time,
            },
            "key": None,
            "before": None,
            "after": None,
            "unchanged_toast": [],
            "message": {
                "transactional": transactional,
                "prefix": prefix,
                "content": text,
                "content_base64": None
                if text is not None
                else binascii.b2a_base64(content, newline=False).decode(),
            },
        }
    )
    return Event(event_id, lsn, "m", None, None, body)
