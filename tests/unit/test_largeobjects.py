"""When the large objects' sync counts two objects the same, and the statements it writes."""

from __future__ import annotations

from dataclasses import replace

from pgmigrator.pipeline.largeobjects import (
    BATCH_BYTES,
    CHUNK,
    LargeObject,
    _by_bytes,
    _metadata_statements,
    _same,
)

OBJ = LargeObject(
    16390,
    5,
    "5d41402abc4b2a76b9719d911017c592",
    "app_owner",
    (("PUBLIC", "SELECT", False), ("app_owner", "SELECT", False), ("app_owner", "UPDATE", False)),
    True,
    "a comment",
)


def test_contents_and_comment_always_count() -> None:
    assert _same(OBJ, OBJ, owners=True, privileges=True)
    assert not _same(OBJ, None, owners=False, privileges=False)
    assert not _same(OBJ, replace(OBJ, digest="0" * 32), owners=False, privileges=False)
    assert not _same(OBJ, replace(OBJ, size=6), owners=False, privileges=False)
    assert not _same(OBJ, replace(OBJ, comment=None), owners=False, privileges=False)


def test_owner_and_privileges_count_only_when_copied() -> None:
    other_owner = replace(OBJ, owner="postgres")
    assert not _same(OBJ, other_owner, owners=True, privileges=False)
    assert _same(OBJ, replace(OBJ, owner="postgres", acl=()), owners=False, privileges=False)
    assert not _same(OBJ, replace(OBJ, has_acl=False, acl=()), owners=True, privileges=True)


def test_without_owners_the_owners_own_entries_match_whoever_owns_it() -> None:
    # On the destination the migrating user owns it, with the source owner's entries as its own.
    dest = replace(
        OBJ,
        owner="migrator",
        acl=(
            ("PUBLIC", "SELECT", False),
            ("migrator", "UPDATE", False),
            ("migrator", "SELECT", False),
        ),
    )
    assert _same(OBJ, dest, owners=False, privileges=True)
    assert not _same(OBJ, dest, owners=True, privileges=True)
    granted = replace(dest, acl=(*dest.acl, ("reporting", "SELECT", True)))
    assert not _same(OBJ, granted, owners=False, privileges=True)


def test_statements_quote_roles_and_comments() -> None:
    odd = replace(
        OBJ, owner='Odd "Owner"', acl=(('Odd "Owner"', "UPDATE", False), ("x y", "SELECT", True))
    )
    text = [s.as_string(None) for s in _metadata_statements(odd, owners=True, privileges=True)]
    assert text == [
        'ALTER LARGE OBJECT 16390 OWNER TO "Odd ""Owner"""',
        'REVOKE ALL ON LARGE OBJECT 16390 FROM PUBLIC, "Odd ""Owner"""',
        'GRANT UPDATE ON LARGE OBJECT 16390 TO "Odd ""Owner"""',
        'GRANT SELECT ON LARGE OBJECT 16390 TO "x y" WITH GRANT OPTION',
        "COMMENT ON LARGE OBJECT 16390 IS 'a comment'",
    ]
    text = [s.as_string(None) for s in _metadata_statements(odd, owners=False, privileges=True)]
    assert text[:2] == [
        "REVOKE ALL ON LARGE OBJECT 16390 FROM PUBLIC, CURRENT_USER",
        "GRANT UPDATE ON LARGE OBJECT 16390 TO CURRENT_USER",
    ]
    assert _metadata_statements(replace(OBJ, comment=None), owners=False, privileges=False) == []


def test_first_pieces_are_fetched_in_groups_of_bounded_size() -> None:
    sizes = [CHUNK * 5] * 100 + [10, 0] * 50  # big ones weigh one piece each here
    objects = [replace(OBJ, oid=i, size=size) for i, size in enumerate(sizes)]
    groups = [[o.oid for o in g] for g in _by_bytes(objects)]
    assert [oid for g in groups for oid in g] == list(range(len(sizes)))  # all, in order
    assert [len(g) for g in groups] == [BATCH_BYTES // CHUNK, 200 - BATCH_BYTES // CHUNK]
    for g in groups:
        assert sum(min(objects[i].size, CHUNK) for i in g) <= BATCH_BYTES
    small = [replace(OBJ, oid=i, size=100) for i in range(10_000)]
    assert len(list(_by_bytes(small))) == 1  # 1 MB of first pieces: one round trip
