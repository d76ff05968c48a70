"""The `Lsn` value type: a PostgreSQL WAL position, printed as ``X/Y`` like the server does."""

from __future__ import annotations

import re

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class Lsn(int):
    """A 64-bit WAL position. An ``int`` so that comparisons and arithmetic stay cheap."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value < 1 << 64:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str | Lsn | int | None) -> Lsn:
        """Accept ``'16/B374D848'``, an int or None (0/0)."""
        if text is None:
            return ZERO
        if isinstance(text, int):
            return cls(text)
        m = _LSN_RE.match(text.strip())
        if m is None:
            raise ValueError(f"not an LSN: {text!r} (expected the form 16/B374D848)")
        return cls((int(m.group(1), 16) << 32) | int(m.group(2), 16))

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


ZERO = Lsn(0)
