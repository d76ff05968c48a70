"""Loading the optional C accelerator of the pgoutput decoder (``_speedups``), or not.

The pure-Python functions in `pgmigrator.protocol.pgoutput` are the reference. When the C
extension was built (``pip install`` compiles it where a C compiler and the Python headers exist;
a failed build only leaves it out) the two per-row calls, ``_read_tuple`` and
``decode_row_change``, are replaced by C versions that build the same immutable values and hand
anything they do not fully accept to the Python functions, so errors read exactly the same.
The same extension builds the applier's COPY text lines from decoded rows (`copy_text`).
``PGMIGRATOR_PURE_PYTHON=1`` in the environment keeps the pure-Python code for both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pgmigrator.events import Delete, Insert, TupleData, Update

F = TypeVar("F", bound=Callable[..., Any])
G = TypeVar("G", bound=Callable[..., Any])


def _spec(cls: type, names: tuple[str, ...]) -> tuple[type, tuple[Any, ...]]:
    """The class and the slot descriptors of ``names``, in the order the C builder fills them."""
    return cls, tuple(cls.__dict__[name] for name in names)


def accelerate(read_tuple: F, decode_row_change: G) -> tuple[F, G, bool]:
    """The C versions of the two functions if available (and wanted), else the arguments.

    Returns ``(read_tuple, decode_row_change, accelerated)``.
    """
    if os.environ.get("PGMIGRATOR_PURE_PYTHON", "") not in ("", "0"):
        return read_tuple, decode_row_change, False
    try:
        from pgmigrator.protocol import _speedups
    except ImportError:
        return read_tuple, decode_row_change, False
    _speedups.setup(
        _spec(TupleData, ("kinds", "values")),
        _spec(Insert, ("relation_oid", "new", "xid")),
        _spec(Update, ("relation_oid", "old", "old_kind", "new", "xid")),
        _spec(Delete, ("relation_oid", "old", "old_kind", "xid")),
        read_tuple,
        decode_row_change,
    )
    return _speedups.read_tuple, _speedups.decode_row_change, True  # type: ignore[return-value]


def copy_text() -> Callable[[Sequence[TupleData]], bytes | None] | None:
    """The C builder of COPY text lines for rows, if `accelerate` set the accelerator up.

    It returns ``None`` for rows holding anything but text values and NULL/unchanged markers
    (a binary-format value), leaving the decision to the Python builder.
    """
    try:
        from pgmigrator.protocol import _speedups
    except ImportError:
        return None
    from pgmigrator.protocol import pgoutput  # its import runs `accelerate`

    return _speedups.copy_text if pgoutput.ACCELERATED else None
