"""Options about what the clone does with the source's schema, shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def keyless_option(fn: F) -> F:
    """``--keyless-tables``: what publishing does with tables that have no replica identity."""
    return click.option(
        "--keyless-tables",
        type=click.Choice(["refuse", "full"]),
        help="tables with neither a primary key nor a replica identity: refuse them (default;"
        " published, the source would refuse their UPDATE and DELETE), or set REPLICA IDENTITY"
        " FULL on them on the source",
    )(fn)


def owner_options(fn: F) -> F:
    """``--no-owner`` / ``--no-privileges`` / ``--no-tablespaces`` / ``--no-large-objects``: what
    of the schema is left out."""
    fn = click.option(
        "--no-large-objects",
        "large_objects",
        flag_value=False,
        default=None,
        help="leave the source's large objects out (by default the clone copies them, the"
        " switchover brings them up to date and verify compares them)",
    )(fn)
    fn = click.option(
        "--no-tablespaces",
        "tablespaces",
        flag_value=False,
        default=None,
        help="put every copied table and index in the destination database's default tablespace"
        " (by default in the source's tablespaces, which must exist on the destination)",
    )(fn)
    fn = click.option(
        "--no-privileges",
        "privileges",
        flag_value=False,
        default=None,
        help="do not copy GRANTs (by default they are, and their grantees must exist on the"
        " destination)",
    )(fn)
    return click.option(
        "--no-owner",
        "owners",
        flag_value=False,
        default=None,
        help="the destination's user owns every copied object (by default the source's owners,"
        " which must exist on the destination)",
    )(fn)


def roles_option(fn: F) -> F:
    """``--roles``: create the roles the copied schema involves that the destination lacks."""
    return click.option(
        "--roles",
        "roles",
        flag_value=True,
        default=None,
        help="create on the destination the roles this database involves that it lacks (owners,"
        " grantees and their members, with attributes, settings, memberships and password"
        " hashes when the source's user may read them); existing roles are left as they are",
    )(fn)
