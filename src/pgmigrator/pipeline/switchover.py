"""``pgmigrator switchover``: prove the destination has every source transaction, then hand over.

While ``follow`` runs: check it streams with little lag; optionally *fence* the source (new sessions
default to read-only, open sessions of the database are terminated: reversible with ``unfence``);
emit a transactional sentinel with ``pg_logical_emit_message(true, 'pgmigrator', ...)``. The
follower writes the sentinel's id into ``pgmigrator.sentinels`` in the same destination transaction
that applies everything committed before it, so seeing that row is proof. Then sequences are synced
(plus a safety margin), large objects brought up to date (logical replication does not carry them),
tables verified, and a cutover report written. On a timeout or a
verification failure the command exits non-zero and unfences the source unless told otherwise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.errors import DatabaseError, PgMigratorError, PreflightError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn, connect
from pgmigrator.pipeline import largeobjects, sentinel
from pgmigrator.pipeline import verify as verifymod
from pgmigrator.pipeline.newtables import refuse_unreplicated
from pgmigrator.pipeline.sequences import sync_sequences
from pgmigrator.pipeline.verify_live import LiveOptions
from pgmigrator.schema import compare
from pgmigrator.schema.extconfig import sync_config_rows
from pgmigrator.source.slots import slot_status
from pgmigrator.store.state import StateStore

log = get_logger("switchover")


class SwitchoverFailed(PgMigratorError):
    """The switchover did not complete (timeout, verification); the report says where it stopped."""


@dataclass
class SwitchoverOptions:
    timeout_s: float = 60.0
    fence: bool = False
    keep_fence_on_failure: bool = False
    verify: str = "full"  # full, sample, none; live: before the fence, while writes go on
    schema: bool = False  # compare the schemas first (`schema.compare`); a difference stops it
    sequence_margin: int = 1000
    max_lag_bytes: int = 64 * 1024 * 1024
    report_path: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SwitchoverOptions:
        """The ``switchover:`` section of the settings, then ``overrides`` (flags; None: unset)."""
        conf = settings.switchover
        options = cls(
            timeout_s=conf.timeout_s,
            fence=conf.fence,
            verify=conf.verify,
            schema=conf.schema_,
            sequence_margin=conf.sequence_margin,
            max_lag_bytes=conf.max_lag_mb * 1024 * 1024,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(options, key, value)
        return options


@dataclass
class Report:
    pipeline: str
    started_at: str
    status: str = "running"
    fenced: bool = False
    fence_actions: list[str] = field(default_factory=list)
    sentinel_id: str = ""
    sentinel_lsn: str | None = None
    lag_bytes_before: int | None = None
    sentinel_wait_s: float | None = None
    write_downtime_s: float | None = None
    sequences_synced: int = 0
    sequence_margin: int = 0
    large_objects: str | None = None  # what the large objects' sync did (None: left out)
    extension_rows: list[str] = field(default_factory=list)  # configuration tables' user rows
    verification: list[dict[str, Any]] = field(default_factory=list)
    verified_at_lsn: str | None = None  # --verify live: the source LSN both sides were read at
    schema: dict[str, Any] | None = None  # --schema: what `schema.compare` found
    error: str | None = None
    finished_at: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Switchover:
    def __init__(self, settings: Settings, options: SwitchoverOptions) -> None:
        settings.require("source", "dest")
        self.settings = settings
        self.options = options
        self.source = settings.source_target
        self.dest = settings.dest_target
        self.report = Report(settings.name, _now(), sequence_margin=options.sequence_margin)
        self._t0 = time.monotonic()

    def _mark(self, step: str) -> None:
        self.report.timings_s[step] = round(time.monotonic() - self._t0, 3)

    def run(self) -> Report:
        with connect(self.source) as src, connect(self.dest) as dst:
            store = StateStore(dst, self.settings.name)
            pipeline = store.require()
            store.ensure_schema()  # (a store older than the columns read below)
            if pipeline.phase not in ("streaming", "switchover", "switchover-complete"):
                raise PreflightError(
                    f"pipeline {self.settings.name!r} is in phase {pipeline.phase!r}, not streaming",
                    hint="wait for the clone to finish and `follow` to start, then retry",
                )
            self._precheck(src, pipeline.slot)
            refuse_unreplicated(src, pipeline.publication, store.selection(), self.settings.exclude)
            try:
                if self.options.schema:
                    self._compare_schema()
                if self.options.verify == "live":
                    self._verify_live()
                fence_t0 = time.monotonic()  # (the checks above ran while writes went on)
                if self.options.fence:
                    self.report.fence_actions = fence(src)
                    self.report.fenced = True
                    self._mark("fenced")
                store.set_phase("switchover")
                self._sentinel(src, dst)
                self.report.sequences_synced = sync_sequences(
                    src, dst, self.options.sequence_margin
                )
                self._mark("sequences")
                self.report.extension_rows = sync_config_rows(src, dst)
                large = largeobjects.sync_pipeline(src, dst, self.settings)
                if large is not None:
                    self.report.large_objects = str(large)
                    self._mark("large_objects")
                if self.report.fenced:
                    self.report.write_downtime_s = round(time.monotonic() - fence_t0, 3)
                self._verify()
                store.set_phase("switchover-complete")
                self.report.status = "complete"
            except (PgMigratorError, psycopg.Error) as exc:
                error = _as_error(exc)
                self.report.status, self.report.error = "failed", error.message
                if self.report.fenced and not self.options.keep_fence_on_failure:
                    self.report.fence_actions += unfence(src)
                    self.report.fenced = False
                if error is not exc:
                    raise error from exc
                raise
            finally:
                self.report.finished_at = _now()
                self._write_report()
        return self.report

    def _precheck(self, src: Conn, slot: str) -> None:
        status = slot_status(src, slot)
        if status is None:
            raise PreflightError(
                f"no replication slot {slot!r} on the source",
                hint="run `pgmigrator clone` and `follow` first",
            )
        if not status.active:
            raise PreflightError(
                f"the follower is not streaming (slot {slot!r} is not active)",
                hint="start `pgmigrator follow` (or `clone --follow`) and retry once it has caught up",
            )
        row = src.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (slot,),
        ).fetchone()
        lag = int(row[0]) if row and row[0] is not None else 0
        self.report.lag_bytes_before = lag
        if lag > self.options.max_lag_bytes:
            raise PreflightError(
                f"the follower is {lag:,} bytes behind (more than {self.options.max_lag_bytes:,})",
                hint="wait until it catches up (see `pgmigrator status`), or raise --max-lag",
            )
        self._mark("prechecked")

    def _sentinel(self, src: Conn, dst: Conn) -> None:
        sentinel_id, lsn = sentinel.emit(src, "switchover", self.settings.name)
        self.report.sentinel_id = sentinel_id
        self.report.sentinel_lsn = str(lsn)
        self._mark("sentinel_emitted")
        timeout = self.options.timeout_s
        waited = sentinel.await_applied(
            dst,
            sentinel_id,
            timeout,
            lambda: SwitchoverFailed(
                f"the destination did not apply the sentinel within {timeout:g} s",
                hint="check that `follow` is running and healthy (`pgmigrator status`), then retry",
            ),
        )
        self.report.sentinel_wait_s = round(waited, 3)
        self._mark("sentinel_applied")
        log.info(
            "sentinel applied", lsn=self.report.sentinel_lsn, seconds=self.report.sentinel_wait_s
        )

    def _compare_schema(self) -> None:
        """Both schemas equal, object by object, before anything else (a missing index would
        slow the application down right after the cutover)."""
        s = self.settings
        result = compare.compare(self.source, self.dest, s.tables, s.exclude, s.dump_options)
        self.report.schema = result.to_dict()
        self._mark("schema_compared")
        if result.differences:
            raise SwitchoverFailed(
                f"the schemas differ ({len(result.differences)} object(s)); nothing was fenced",
                hint="see the report (or `pgmigrator verify --schema`), fix the destination, retry",
            )

    def _verify_live(self) -> None:
        """Verify before the fence, both sides lined up while the application still writes
        (`verify_live`): the write downtime then no longer grows with the database's size."""
        checks, point = verifymod.verify_live(
            self.source,
            self.dest,
            LiveOptions(self.settings.name, follower_timeout_s=self.options.timeout_s),
            self.settings.tables,
            self.settings.exclude,
            self.settings.workers,
        )
        self.report.verified_at_lsn = str(point.lsn)
        self._record(checks)

    def _verify(self) -> None:
        mode = self.options.verify
        if mode in ("none", "live"):
            return
        checks = verifymod.verify(
            self.source,
            self.dest,
            self.settings.tables,
            self.settings.exclude,
            self.settings.workers,
            sample=(mode == "sample"),
            large_objects=self.settings.large_objects,
        )
        self._record(checks)

    def _record(self, checks: list[verifymod.TableCheck]) -> None:
        self.report.verification = [c.to_dict() for c in checks]
        self._mark("verified")
        bad = [c.table for c in checks if c.status != "ok"]
        if bad:
            raise SwitchoverFailed(
                f"verification failed for {len(bad)} table(s): {', '.join(bad[:10])}",
                hint="see the report; the source is unfenced unless --keep-fence-on-failure",
            )

    def _write_report(self) -> None:
        path = self.options.report_path
        if path is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = Path.cwd() / f"pgmigrator-switchover-{self.settings.name}-{stamp}.json"
        path.write_bytes(self.report.to_json())
        self.report_file = path


def _as_error(exc: PgMigratorError | psycopg.Error) -> PgMigratorError:
    """A server error no step translated, as one of ours (the fence is undone either way)."""
    if isinstance(exc, PgMigratorError):
        return exc
    primary = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    return DatabaseError(f"switchover failed: {primary}", sqlstate=exc.sqlstate)


def _database(conn: Conn) -> sql.Identifier:
    row = conn.execute("SELECT current_database()").fetchone()
    return sql.Identifier(row[0] if row else "")


def fence(src: Conn) -> list[str]:
    """Make the source database read-only for new sessions and end the open ones (reversible)."""
    db = _database(src)
    src.execute("SET default_transaction_read_only = off")  # a re-run starts under the fence
    src.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(db))
    killed = src.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchone()
    actions = [
        f"ALTER DATABASE {db.as_string(src)} SET default_transaction_read_only = on",
        f"terminated {killed[0] if killed else 0} open session(s) of the database",
    ]
    for line in actions:
        log.warning("fence", action=line)
    return actions


def unfence(src: Conn) -> list[str]:
    db = _database(src)
    src.execute("SET default_transaction_read_only = off")  # this session started under the fence
    src.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(db))
    action = f"ALTER DATABASE {db.as_string(src)} RESET default_transaction_read_only"
    log.info("unfence", action=action)
    return [action]


def render(report: Report) -> str:
    lines = [f"switchover of pipeline {report.pipeline}: {report.status.upper()}"]
    if report.error:
        lines.append(f"  error: {report.error}")
    lines.append(
        f"  sentinel {report.sentinel_id or '-'} at {report.sentinel_lsn or '-'}, applied after {report.sentinel_wait_s} s"
    )
    lines.append(
        f"  lag before: {report.lag_bytes_before} bytes; write downtime: "
        + (
            f"{report.write_downtime_s} s"
            if report.write_downtime_s is not None
            else "none (not fenced)"
        )
    )
    lines += [f"  fence: {a}" for a in report.fence_actions]
    lines.append(f"  sequences synced: {report.sequences_synced} (margin {report.sequence_margin})")
    if report.large_objects is not None:
        lines.append(f"  large objects: {report.large_objects}")
    lines += [f"  extension configuration rows: {line}" for line in report.extension_rows]
    if report.schema is not None:
        differ = len(report.schema["differences"])
        lines.append(f"  schema: {report.schema['compared']} object(s) compared, {differ} differ")
    if report.verification:
        bad = [v for v in report.verification if v["status"] != "ok"]
        when = (
            f" (live, before the fence, at {report.verified_at_lsn})"
            if report.verified_at_lsn
            else ""
        )
        lines.append(
            f"  verification{when}: {len(report.verification)} table(s), {len(bad)} differ"
        )
        lines += [f"    {v['table']}: {v['status']} {v['detail']}" for v in bad[:20]]
    return "\n".join(lines)
