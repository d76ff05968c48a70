"""Control requests for the pipeline of this process: pause, resume, switchover, verify (no web code).

`PipelineControl` is what the API's ``POST /api/v1/pause|resume|switchover|verify`` reach (and the
dashboard and TUI through them). Pause and resume go to the running follower's lifecycle; they are
refused (HTTP 409) while there is no follower yet, e.g. during the copy of ``clone --follow``.
Switchover starts `pgmigrator switchover`'s logic in a background thread and answers at once (its
progress shows in the phase: ``switchover``, then ``switchover-complete``). Verify runs a live
verification (`verify_live`) in a background thread too; its outcome is the collector's
``info.verification`` (status, dashboard, state file).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pgmigrator.config import Settings
from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger
from pgmigrator.pipeline.lifecycle import IllegalTransition

log = get_logger("control")


class Pausable(Protocol):
    def pause(self) -> str: ...

    def resume(self) -> str: ...


class PipelineControl:
    """Control requests for the pipeline of this process (thread-safe)."""

    def __init__(self, settings: Settings, collector: Any = None) -> None:
        self.settings = settings
        self.collector = collector  # where a verification's outcome is shown (info.verification)
        self.target: Pausable | None = None  # the follower, once streaming starts
        self._switchover: threading.Thread | None = None
        self._verify: threading.Thread | None = None

    def _require_target(self, action: str) -> Pausable:
        if self.target is None:
            raise IllegalTransition(
                f"cannot {action}: nothing is streaming yet",
                hint="pause and resume apply to the streaming phase (follow, clone --follow, stream)",
            )
        return self.target

    async def pause(self) -> str:
        target = self._require_target("pause")
        return await asyncio.to_thread(target.pause)  # returns once the pipeline holds still

    async def resume(self) -> str:
        return self._require_target("resume").resume()

    async def switchover(self) -> str:
        if self._switchover is not None and self._switchover.is_alive():
            raise PgMigratorError("a switchover is already running")
        if self.settings.dest is None or self.target is None:
            raise PgMigratorError(
                "switchover needs a running follower",
                hint="start `follow` (or `clone --follow`) and wait until it streams",
            )
        self._switchover = threading.Thread(target=self._run_switchover, daemon=True)
        self._switchover.start()
        await asyncio.sleep(0)
        return "switchover started: watch the phase go to switchover-complete"

    def _run_switchover(self) -> None:
        from pgmigrator.pipeline.switchover import Switchover, SwitchoverOptions

        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = self.settings.state_dir / f"switchover-{self.settings.name}-{stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            options = SwitchoverOptions.from_settings(self.settings, report_path=path)
            report = Switchover(self.settings, options).run()
            log.info("switchover finished", status=report.status, report=str(path))
        except Exception as exc:  # whatever it was, it shows (the Errors card, /metrics)
            message = _what(exc)
            log.error("switchover failed", error=message)
            if self.collector is not None:
                self.collector.record_error(f"switchover failed: {message}", component="switchover")

    async def verify(self) -> str:
        """Start `verify --live` in the background; its outcome goes to ``info.verification``."""
        if self._verify is not None and self._verify.is_alive():
            raise PgMigratorError("a verification is already running")
        if self.settings.dest is None or self.settings.source is None or self.target is None:
            raise PgMigratorError(
                "a live verification needs a running follower (`follow` or `clone --follow`)",
                hint="wait until it streams; `stream` has no destination tables to compare",
            )
        self._show(f"running since {_stamp()}")
        self._verify = threading.Thread(target=self._run_verify, daemon=True)
        self._verify.start()
        await asyncio.sleep(0)
        return "live verification started: its outcome shows as info.verification in the status"

    def _run_verify(self) -> None:
        from pgmigrator.pipeline.verify import summary, verify_live
        from pgmigrator.pipeline.verify_live import LiveOptions

        s = self.settings
        try:
            checks, point = verify_live(
                s.source_target,
                s.dest_target,
                LiveOptions(s.name),
                s.tables,
                s.exclude,
                s.workers,
            )
        except Exception as exc:  # its outcome must show whatever happened (never "running")
            message = _what(exc)
            log.error("live verification failed", error=message)
            self._show(f"failed at {_stamp()}: {message}", -1)
            return
        differ = sum(c.status != "ok" for c in checks)
        outcome = f"{summary(checks)} as of {point.lsn} (checked {_stamp()})"
        log.info("live verification finished", outcome=outcome, differ=differ)
        self._show(outcome, differ)

    def _show(self, text: str, differing: int | None = None) -> None:
        """The outcome for people (``verification``) and, once finished, for alerts: tables
        differing (-1: the check failed) and when (``/metrics``: ``pgmigrator_verify_*``)."""
        if self.collector is None:
            return
        info: dict[str, object] = {"verification": text}
        if differing is not None:
            info |= {"verification_differing": differing, "verification_finished_at": time.time()}
        self.collector.update_info(info)


def _what(exc: Exception) -> str:
    """What went wrong in a background job, for the operator (whatever the exception)."""
    return exc.message if isinstance(exc, PgMigratorError) else f"{exc}".strip()


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Hosted:
    """What `serving` started: the server (None without ``api.addr``) and the token to print."""

    server: Any  # pgmigrator.api.ApiServer, or None without ``api.addr``
    token: str | None = None
    token_generated: bool = False
