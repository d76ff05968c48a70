"""Compaction: the net effect per key of an ordered run of changes to one relation (pure).

Applying a batch set-based (one DELETE, one UPDATE per mask, one INSERT) is only correct when
each key appears once, so a run of changes is first folded into its net effect per key:

* insert then update = insert of the last image; insert then delete = nothing;
* update then update = one update with the last image; update then delete = delete;
* delete then insert of the same key = delete plus insert;
* an update that changes the key = delete of the old key plus insert of the new image;
* an unchanged-TOAST column ('u') takes the older value when an earlier image in the batch has
  it; otherwise it stays 'u' and the UPDATE must not touch it (updates are grouped by mask).

The result is applied in the order deletes, updates, inserts: the keys of the three groups make
that order equivalent to the ordered run (a secondary unique key swapped within the run can still
collide; the applier then replays the run in source order).

Two things cannot be folded and become *ordered steps* (the change itself, applied alone after
the net effect gathered so far): a key-changing update whose unchanged-TOAST values are only in
the destination, and every update or delete of a relation without a usable key (REPLICA
IDENTITY FULL or NOTHING), where only runs of inserts are gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeAlias, cast

from pgmigrator.events import Delete, Insert, TupleData, Update

_U = ord("u")
#: Maps a kinds string to a mask key: 'u' stays 'u', every other kind becomes '.'.
_MASK_TABLE = bytes(_U if b == _U else ord(".") for b in range(256))


@dataclass(slots=True)
class NetEffect:
    """The folded effect of a run of changes, applied as deletes, then updates, then inserts.

    ``deletes`` are tuples whose key columns name the rows to delete (other columns may be
    null); ``updates`` maps a mask (see `mask_of`) to full new images whose 'u' columns must be
    left alone; ``inserts`` are complete rows.
    """

    deletes: list[TupleData] = field(default_factory=list)
    updates: dict[bytes, list[TupleData]] = field(default_factory=dict)
    inserts: list[TupleData] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.deletes) + sum(map(len, self.updates.values())) + len(self.inserts)


#: One unit of work: a folded batch, or a change that must be applied alone, in order.
Step: TypeAlias = NetEffect | Update | Delete
Change: TypeAlias = Insert | Update | Delete


def mask_of(row: TupleData) -> bytes:
    """A key naming the unchanged-TOAST positions of ``row``: b'u' there, b'.' elsewhere."""
    return row.kinds.translate(_MASK_TABLE)


def unchanged_positions(mask: bytes) -> frozenset[int]:
    """The column positions a mask from `mask_of` marks as unchanged TOAST."""
    return frozenset(i for i, b in enumerate(mask) if b == _U)


def merge(new: TupleData, older: TupleData) -> TupleData:
    """``new`` with each unchanged-TOAST column taken from ``older`` (which may be 'u' too)."""
    if _U not in new.kinds:
        return new
    kinds = bytearray(new.kinds)
    values = list(new.values)
    for i, kind in enumerate(new.kinds):
        if kind == _U:
            kinds[i] = older.kinds[i]
            values[i] = older.values[i]
    return TupleData.unchecked(bytes(kinds), tuple(values))


class _Slot:
    """What the run does to one key: delete the original row first, then leave ``row``."""

    __slots__ = ("delete", "row", "update")

    def __init__(self, delete: TupleData | None, row: TupleData | None, update: bool) -> None:
        self.delete = delete  # a tuple naming the original row to delete, if any
        self.row = row  # the final image, None when the key ends up absent
        self.update = update  # row updates the original row (and may contain 'u')


def _key_getter(key: Sequence[int]) -> Callable[[tuple[bytes | None, ...]], Any]:
    if len(key) == 1:
        return itemgetter(key[0])
    return itemgetter(*key)


class _Folder:
    """Folds one run of keyed changes; `flush` hands out the net effect and starts anew."""

    def __init__(self, key: Sequence[int]) -> None:
        self._key = _key_getter(key)
        self._slots: dict[Any, _Slot] = {}

    def flush(self) -> NetEffect:
        net = NetEffect()
        for slot in self._slots.values():
            if slot.delete is not None:
                net.deletes.append(slot.delete)
            if slot.row is None:
                continue
            if slot.update:
                net.updates.setdefault(mask_of(slot.row), []).append(slot.row)
            else:
                net.inserts.append(slot.row)
        self._slots = {}
        return net

    def insert(self, new: TupleData) -> None:
        k = self._key(new.values)
        slot = self._slots.get(k)
        if slot is None:
            self._slots[k] = _Slot(None, new, False)
            return
        if slot.update and slot.row is not None:
            slot.delete = slot.row  # the row exists already (inconsistent stream): replace it
        slot.row, slot.update = new, False

    def delete(self, old: TupleData) -> None:
        k = self._key(old.values)
        slot = self._slots.get(k)
        if slot is None:
            self._slots[k] = _Slot(old, None, False)
        elif slot.row is not None:
            if slot.update:
                slot.delete = old
            slot.row, slot.update = None, False

    def update(self, change: Update) -> bool:
        """Fold an update; False when it cannot be folded (apply it alone after a flush)."""
        new, old = change.new, change.old
        k = self._key(new.values)
        k_old = k if old is None else self._key(old.values)
        slot = self._slots.get(k_old)
        if k_old == k:
            if slot is None:
                self._slots[k] = _Slot(None, new, True)
            elif slot.row is not None:
                slot.row = merge(new, slot.row)
            return True
        assert old is not None
        if slot is None:
            if _U in new.kinds:
                return False
            self._slots[k_old] = _Slot(old, None, False)
        elif slot.row is None:
            return True  # the old row is gone already: ordered apply changes nothing
        else:
            merged = merge(new, slot.row)
            if _U in merged.kinds:
                return False
            if slot.update:
                slot.delete = old
            slot.row, slot.update, new = None, False, merged
        self.insert(new)
        return True


def compact(changes: Sequence[Change], key: Sequence[int] | None) -> list[Step]:
    """Fold ``changes`` (one relation, source order) into steps that give the same result.

    ``key`` lists the positions of the replica identity columns; ``None`` (or empty) for a
    relation without a usable key, where only runs of inserts are gathered.
    """
    if not key or all(type(c) is Insert for c in changes):
        return _runs_of_inserts(changes)  # a run of inserts has one image per key already
    steps: list[Step] = []
    folder = _Folder(key)
    for change in changes:
        if isinstance(change, Insert):
            folder.insert(change.new)
        elif isinstance(change, Delete):
            folder.delete(change.old)
        elif not folder.update(change):
            _append(steps, folder.flush())
            steps.append(change)
    _append(steps, folder.flush())
    return steps


def _runs_of_inserts(changes: Sequence[Change]) -> list[Step]:
    if all(type(c) is Insert for c in changes):
        inserts = cast("Sequence[Insert]", changes)
        return [NetEffect(inserts=[c.new for c in inserts])] if inserts else []
    steps: list[Step] = []
    run: list[TupleData] = []
    for change in changes:
        if isinstance(change, Insert):
            run.append(change.new)
            continue
        if run:
            steps.append(NetEffect(inserts=run))
            run = []
        steps.append(change)
    if run:
        steps.append(NetEffect(inserts=run))
    return steps


def _append(steps: list[Step], net: NetEffect) -> None:
    if net.deletes or net.updates or net.inserts:
        steps.append(net)


def may_collide(steps: list[Step]) -> bool:
    """Whether set-based order could hit a unique violation that source order would not.

    Deletes run first and inserts last, so a unique value freed in the batch is free before it
    is claimed again, except between two updated rows (a swap): at least two update rows. (The
    key itself cannot collide: updates keep their keys; only other unique indexes matter.)
    """
    return (
        sum(len(rows) for s in steps if isinstance(s, NetEffect) for rows in s.updates.values()) > 1
    )
