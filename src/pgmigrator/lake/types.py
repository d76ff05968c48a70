"""PostgreSQL to Iceberg/Arrow type mapping, and text values to typed Arrow arrays.

Both the initial copy (COPY ... CSV) and the change stream (pgoutput text values) deliver each
value in its type's text output form. They become an Arrow string array per column first, then
one vectorised cast per column (`to_arrow`): no Python object per value, except for ``bytea``
(hex text) and ``uuid`` (16 bytes), which are converted value by value.

| PostgreSQL | Iceberg | Arrow |
| --- | --- | --- |
| smallint, integer | int | int32 |
| bigint, oid | long | int64 |
| real / double precision | float / double | float32 / float64 |
| numeric(p,s), p <= 38 | decimal(p,s) | decimal128(p,s) |
| numeric without precision or p > 38 | string | string |
| boolean | boolean | bool |
| date | date | date32 |
| time | time | time64(us) |
| timestamp | timestamp | timestamp(us) |
| timestamptz | timestamptz | timestamp(us, UTC) |
| uuid | uuid | uuid (16 bytes) |
| bytea | binary | binary |
| text, varchar, char, name, json, jsonb, arrays, anything else | string | string |
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from pgmigrator.errors import PgMigratorError

MAX_DECIMAL_PRECISION = 38


class LakeError(PgMigratorError):
    """Writing to the data lake failed (catalog, warehouse, a value that does not convert)."""


class RetryableLakeError(LakeError):
    """The catalog or the warehouse failed temporarily (a locked catalog database, I/O)."""

    retryable = True


@dataclass(frozen=True, slots=True)
class LakeType:
    """How one PostgreSQL column is stored: its Iceberg type, Arrow type and conversion kind."""

    kind: str  # int, float, decimal, bool, date, time, timestamp, timestamptz, uuid, binary, string
    iceberg: IcebergType
    arrow: pa.DataType

    @property
    def name(self) -> str:
        return str(self.iceberg)


_SIMPLE: dict[int, LakeType] = {
    16: LakeType("bool", BooleanType(), pa.bool_()),
    17: LakeType("binary", BinaryType(), pa.large_binary()),
    20: LakeType("int", LongType(), pa.int64()),
    21: LakeType("int", IntegerType(), pa.int32()),
    23: LakeType("int", IntegerType(), pa.int32()),
    26: LakeType("int", LongType(), pa.int64()),
    700: LakeType("float", FloatType(), pa.float32()),
    701: LakeType("float", DoubleType(), pa.float64()),
    1082: LakeType("date", DateType(), pa.date32()),
    1083: LakeType("time", TimeType(), pa.time64("us")),
    1114: LakeType("timestamp", TimestampType(), pa.timestamp("us")),
    1184: LakeType("timestamptz", TimestamptzType(), pa.timestamp("us", tz="UTC")),
    2950: LakeType("uuid", UUIDType(), pa.uuid()),
}
STRING = LakeType("string", StringType(), pa.large_string())
NUMERIC_OID = 1700


def map_type(type_oid: int, typmod: int) -> LakeType:
    """The lake type of a column of type ``type_oid`` with modifier ``typmod`` (-1: none)."""
    simple = _SIMPLE.get(type_oid)
    if simple is not None:
        return simple
    if type_oid == NUMERIC_OID and typmod >= 4:
        precision = ((typmod - 4) >> 16) & 0xFFFF
        scale = (typmod - 4) & 0xFFFF
        if 0 < precision <= MAX_DECIMAL_PRECISION and scale <= precision:
            return LakeType(
                "decimal", DecimalType(precision, scale), pa.decimal128(precision, scale)
            )
    return STRING


def to_arrow(text: pa.Array, t: LakeType, column: str) -> pa.Array:
    """Convert an Arrow string array of PostgreSQL text values to the column's Arrow type."""
    try:
        return _convert(text, t)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise LakeError(
            f"column {column!r}: a value does not convert to {t.name}: {str(exc)[:200]}",
            hint="values such as 'infinity' dates or NaN numerics have no Iceberg form; exclude the table or change the column",
        ) from exc


def _convert(text: pa.Array, t: LakeType) -> pa.Array:
    kind = t.kind
    if kind == "string":
        return text.cast(pa.large_string())
    if kind in ("int", "float", "decimal", "date", "timestamp", "timestamptz"):
        return pc.cast(text, t.arrow)
    if kind == "bool":
        return pc.equal(text, "t")
    if kind == "time":
        stamped = pc.binary_join_element_wise("1970-01-01 ", text, "")
        return pc.cast(pc.cast(stamped, pa.timestamp("us")), t.arrow)
    if kind == "binary":
        values = [None if v is None else bytes.fromhex(v[2:]) for v in text.to_pylist()]
        return pa.array(values, pa.large_binary())
    if kind == "uuid":
        raw = [None if v is None else uuid.UUID(v).bytes for v in text.to_pylist()]
        return pa.ExtensionArray.from_storage(pa.uuid(), pa.array(raw, pa.binary(16)))
    raise ValueError(f"unknown conversion {kind!r}")


def from_iceberg(t: IcebergType) -> LakeType:
    """The conversion for an existing Iceberg column (the table's schema is the source of truth)."""
    if isinstance(t, DecimalType):
        return LakeType("decimal", t, pa.decimal128(t.precision, t.scale))
    for candidate in _SIMPLE.values():
        if candidate.iceberg == t:
            return candidate
    return STRING
