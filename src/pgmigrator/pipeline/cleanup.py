"""``pgmigrator cleanup``: remove what a pipeline left behind on both servers.

Drops the replication slot and publication on the source, the replication origin and the
pipeline's rows (and the ``pgmigrator`` schema once no pipeline is left) on the destination.
Copied tables are left alone: they are the user's data, apart from the replica identities the
clone set to FULL (`identity`), given back on both sides. After bidirectional replication it also
drops the reverse slot and publication (destination) and the reverse origin and state (source).

``cleanup --stream`` retires a stream (``stream``, ``lake``): it only has a slot and a publication
on the source (whose comment lists the tables it made FULL) and a marker file in the state
directory. Its slot would otherwise hold the source's WAL forever.
"""

from __future__ import annotations

from pgmigrator.config import Settings
from pgmigrator.log import get_logger
from pgmigrator.pg import connect
from pgmigrator.pipeline.bidi import cleanup_reverse
from pgmigrator.pipeline.identity import noted_full, retire_source
from pgmigrator.pipeline.identity import restore as restore_identity
from pgmigrator.store.state import StateStore

log = get_logger("cleanup")


def cleanup(settings: Settings) -> list[str]:
    settings.require("source", "dest")
    done: list[str] = cleanup_reverse(settings)  # bidirectional replication's reverse objects
    source, dest = settings.source_target, settings.dest_target
    with connect(dest) as dst:
        store = StateStore(dst, settings.name)
        row = store.load()
        slot = row.slot if row else settings.slot_name
        publication = row.publication if row else settings.publication_name
        made_full = store.identity_full() if row is not None else []
        done += restore_identity(dst, "destination", made_full, publication)
        if dst.execute(
            "SELECT 1 FROM pg_replication_origin WHERE roname = %s", (settings.origin_name,)
        ).fetchone():
            dst.execute("SELECT pg_replication_origin_drop(%s)", (settings.origin_name,))
            done.append(f"dropped replication origin {settings.origin_name} on the destination")
        if row is not None:
            store.drop_pipeline()
            done.append(f"removed pipeline {settings.name!r} from the destination's state store")
        if (
            store.exists()
            and not dst.execute("SELECT 1 FROM pgmigrator.pipelines LIMIT 1").fetchone()
        ):
            dst.execute("DROP SCHEMA pgmigrator CASCADE")
            done.append("dropped schema pgmigrator on the destination")
    with connect(source) as src:
        done += retire_source(src, slot, publication, made_full, publication)
    for line in done:
        log.info(line)
    return done


def cleanup_stream(settings: Settings) -> list[str]:
    """Drop a stream's slot and publication, give back its FULL identities, remove its marker."""
    from pgmigrator.stream.setup import marker_path

    settings.require("source")
    slot, publication = settings.slot_name, settings.publication_name
    done: list[str] = []
    with connect(settings.source_target) as src:
        made_full = noted_full(src, publication)
        done += retire_source(src, slot, publication, made_full, publication)
    marker = marker_path(settings, slot)
    if marker.exists():
        marker.unlink()
        done.append(f"removed {marker}")
    for line in done:
        log.info(line)
    return done
