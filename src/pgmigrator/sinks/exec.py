"""The ``exec`` sink: events written as JSON lines to a child process's stdin.

``command`` is an argument list (run directly) or a string (run by ``/bin/sh -c``). Each event is
one line: its JSON document and ``\\n``. Acknowledgement (``ack``):

* ``write`` (default): a batch counts as delivered once the pipe accepted it (``drain``). Lines
  still in the pipe when the child dies are lost to it, so this is at-least-once only for what
  the child read.
* ``stdout``: the child answers one line on its stdout per event it has processed (any text, the
  event id is a good choice); a batch counts as delivered once every event got its line. Events
  not answered when the child dies are sent again: at-least-once, duplicates with the same id.

The child's stderr (and its stdout with ``ack: write``) is logged line by line. When the child
exits, or does not answer within ``ack_timeout_s``, it is (killed and) started again, after an
exponential backoff (``restart`` options), and the unacknowledged rest of the batch is sent
again. ``restart.attempts`` consecutive failures without progress raise `RetryableSinkError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pgmigrator.aio import wait_for
from pgmigrator.errors import ConfigError, RetryableSinkError
from pgmigrator.log import get_logger
from pgmigrator.sinks._backoff import BackoffOptions, fold_flat
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.exec")

_LINE_LIMIT = 1 << 20  # longest stdout/stderr line read from the child


class ExecOptions(BaseModel):
    """Options of an ``exec`` sink."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        data = fold_flat(data, "restart_", "restart")
        data = fold_flat(data, "env.", "env")
        return data

    command: list[str] | str
    ack: Literal["write", "stdout"] = "write"
    ack_timeout_s: float = Field(default=30.0, gt=0)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)  # added to the inherited environment
    restart: BackoffOptions = Field(default_factory=lambda: BackoffOptions(attempts=0))

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: list[str] | str) -> list[str] | str:
        if (isinstance(value, str) and not value.strip()) or (
            isinstance(value, list) and (not value or not value[0])
        ):
            raise ValueError("command must not be empty")
        return value


class _ChildGone(Exception):
    """The child exited, closed a pipe or stopped answering, after acknowledging ``acked``."""

    def __init__(self, reason: str, acked: int = 0) -> None:
        super().__init__(reason)
        self.acked = acked


class ExecSink:
    """Feed events to a child process; see the module docstring."""

    durable = True

    def __init__(self, name: str, opts: ExecOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.ctx = ctx
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._acks: asyncio.Queue[bytes] = asyncio.Queue()
        self._failures = 0  # consecutive failed attempts without progress
        self._spawned = False
        self._closing = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        cmd = self.opts.command
        env = {**os.environ, **self.opts.env} if self.opts.env else None
        stdout = asyncio.subprocess.PIPE
        try:
            if isinstance(cmd, str):
                proc = await asyncio.create_subprocess_shell(
                    cmd, stdin=asyncio.subprocess.PIPE, stdout=stdout,
                    stderr=asyncio.subprocess.PIPE, cwd=self.opts.cwd, env=env, limit=_LINE_LIMIT,
                )  # fmt: skip
            else:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdin=asyncio.subprocess.PIPE, stdout=stdout,
                    stderr=asyncio.subprocess.PIPE, cwd=self.opts.cwd, env=env, limit=_LINE_LIMIT,
                )  # fmt: skip
        except OSError as exc:
            shown = cmd if isinstance(cmd, str) else cmd[0]
            raise ConfigError(
                f"exec sink {self.name}: cannot start {shown!r}: {exc.strerror or exc}",
                hint="check the command, its path and that it is executable",
            ) from exc
        self._proc, self._spawned = proc, True
        self._acks = asyncio.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        ack_out = self.opts.ack == "stdout"
        self._readers = [
            asyncio.create_task(self._read_lines(proc.stderr, "stderr", False)),
            asyncio.create_task(self._read_lines(proc.stdout, "stdout", ack_out)),
            asyncio.create_task(self._watch(proc)),
        ]
        log.info("exec sink child started", sink=self.name, pid=proc.pid)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Say so when the child exits on its own (it is started again on the next send)."""
        code = await proc.wait()
        if self._proc is proc and not self._closing:
            log.warning("exec sink child exited", sink=self.name, pid=proc.pid, returncode=code)

    async def _read_lines(self, stream: asyncio.StreamReader, which: str, acks: bool) -> None:
        """Log (or, for acknowledgements, queue) every line the child writes."""
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line = b"<line too long, skipped>\n"
            except OSError:
                line = b""
            if not line:
                if acks:
                    self._acks.put_nowait(b"")  # end of stdout: wake a waiting send
                return
            if acks:
                self._acks.put_nowait(line)
            else:
                text = line.decode("utf-8", "replace").rstrip("\n")
                log.info("exec sink child output", sink=self.name, stream=which, line=text)

    async def send(self, events: Sequence[Event]) -> None:
        done = 0
        while done < len(events):
            if self._proc is None or self._proc.returncode is not None:
                await self._restart()
            try:
                done += await self._feed(events[done:])
                self._failures = 0
            except _ChildGone as exc:
                done += exc.acked
                self._failures = 1 if exc.acked else self._failures + 1
                log.warning(
                    "exec sink child failed; restarting and sending again",
                    sink=self.name,
                    reason=str(exc),
                    unacknowledged=len(events) - done,
                )
                await self._stop_child()
                if self.opts.restart.exhausted(self._failures):
                    raise RetryableSinkError(
                        f"exec sink {self.name}: the child failed {self._failures} times in a row",
                        hint="see the child's stderr in the log",
                    ) from exc

    async def _restart(self) -> None:
        """Start the child again (after a backoff delay), or for the first time."""
        if self._proc is not None:
            await self._stop_child()
        if self._spawned:
            self.restarts += 1
            if self.ctx.collector is not None:
                self.ctx.collector.sink_counter(self.name, retried=1)
            await asyncio.sleep(self.opts.restart.delay(max(1, self._failures)))
        await self._spawn()

    async def _feed(self, events: Sequence[Event]) -> int:
        """Write ``events``; return how many are acknowledged (all, unless the child fails)."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        data = b"\n".join(e.body for e in events) + b"\n"
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ChildGone(f"stdin closed ({type(exc).__name__})") from exc
        if self.opts.ack == "write":
            return len(events)
        return await self._await_acks(len(events))

    async def _await_acks(self, count: int) -> int:
        got = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.ack_timeout_s
        while got < count:
            try:
                line = await wait_for(self._acks.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _ChildGone(
                    f"no answer on stdout within {self.opts.ack_timeout_s:g}s "
                    f"({got} of {count} acknowledged)",
                    got,
                ) from None
            if not line:
                raise _ChildGone(f"stdout closed after {got} of {count} acknowledgements", got)
            got += 1
            deadline = loop.time() + self.opts.ack_timeout_s
        return got

    async def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await wait_for(task, 5)
        self._readers = []
        log.info("exec sink child ended", sink=self.name, pid=proc.pid, returncode=code)

    async def close(self) -> None:
        """Close the child's stdin, give it ``ack_timeout_s`` to finish, then kill it."""
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await wait_for(proc.wait(), self.opts.ack_timeout_s)
        await self._stop_child()


@register("exec", ExecOptions)
def make_exec(name: str, opts: ExecOptions, ctx: SinkContext) -> ExecSink:
    return ExecSink(name, opts, ctx)
