"""The statements that give the destination database the source's privileges and comment."""

from __future__ import annotations

from pgmigrator.schema.dbacl import DatabaseAcl, statements


def _text(acl: DatabaseAcl, privileges: bool = True) -> list[str]:
    return [s.as_string(None) for _, s in statements(acl, "app db", privileges)]


def test_default_privileges_and_no_comment_need_nothing() -> None:
    assert _text(DatabaseAcl(False, (), None)) == []
    assert DatabaseAcl(False, (), None).by_role() == {"PUBLIC": ("CONNECT", "TEMPORARY")}


def test_public_gets_exactly_what_it_has_on_the_source() -> None:
    acl = DatabaseAcl(True, (("PUBLIC", "CONNECT", False), ("app", "CREATE", False)), None)
    assert _text(acl) == [
        'REVOKE CREATE, TEMPORARY ON DATABASE "app db" FROM PUBLIC',
        'GRANT CONNECT ON DATABASE "app db" TO PUBLIC',
        'GRANT CREATE ON DATABASE "app db" TO "app"',
    ]
    assert acl.by_role() == {"PUBLIC": ("CONNECT",), "app": ("CREATE",)}
    assert DatabaseAcl(True, (), None).by_role() == {"PUBLIC": ()}  # all revoked


def test_grant_options_apart_and_identifiers_quoted() -> None:
    acl = DatabaseAcl(
        True,
        (
            ('o"ps', "CONNECT", False),
            ('o"ps', "CREATE", True),
            ('o"ps', "TEMPORARY", True),
        ),
        "it's",
    )
    assert _text(acl) == [
        'REVOKE CREATE, CONNECT, TEMPORARY ON DATABASE "app db" FROM PUBLIC',
        'GRANT CONNECT ON DATABASE "app db" TO "o""ps"',
        'GRANT CREATE, TEMPORARY ON DATABASE "app db" TO "o""ps" WITH GRANT OPTION',
        "COMMENT ON DATABASE \"app db\" IS 'it''s'",
    ]
    assert _text(acl, privileges=False) == ["COMMENT ON DATABASE \"app db\" IS 'it''s'"]
