"""``pgmigrator tui``: a Textual terminal UI over the HTTP API of a running pipeline.

The TUI knows nothing of pipeline internals: it polls ``GET /api/v1/status`` (the collector's
snapshot, the same one the dashboard and ``/metrics`` show) and ``GET /api/v1/logs``, so it works
just as well against a pipeline on another machine. Keys: ``p`` pause, ``r`` resume, ``v`` live
verification (its outcome shows under the summary), ``s`` switchover (after a confirmation
dialog), ``q`` quit; control requests carry the bearer token.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Label,
    ProgressBar,
    RichLog,
    Sparkline,
    Static,
)

from pgmigrator.metrics.format import (
    format_bytes,
    format_count,
    format_duration,
    format_rate,
    progress_bar,
)

DEFAULT_API = "http://127.0.0.1:8080"
CHART_POINTS = 60
LOG_LINES = 500
TABLE_COLUMNS = (
    ("table", "table"),
    ("state", "state"),
    ("progress", "progress"),
    ("rows", "rows"),
    ("rate", "rate"),
    ("eta", "ETA"),
)


def normalize_url(url: str) -> str:
    """``127.0.0.1:8080`` -> ``http://127.0.0.1:8080``; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def overall_percent(snap: Mapping[str, Any]) -> float:
    """Copy progress of the whole pipeline: table percents weighted by estimated size."""
    tables = [t for t in snap.get("tables") or [] if isinstance(t, Mapping)]
    if not tables:
        return 100.0 if snap.get("phase") == "done" else 0.0
    weights = [max(int(t.get("bytes_total") or 0), 1) for t in tables]
    done = sum(w * float(t.get("percent") or 0.0) for w, t in zip(weights, tables, strict=True))
    return done / sum(weights)


def table_cells(t: Mapping[str, Any]) -> tuple[Text, ...]:
    """The cells of one table's row, in :data:`TABLE_COLUMNS` order (plain text, no markup)."""
    pct = float(t.get("percent") or 0.0)
    state = str(t.get("state", "?")) + (f": {t['error']}" if t.get("error") else "")
    rate = t.get("rows_per_s")
    cells = (
        f"{t.get('schema')}.{t.get('name')}",
        state,
        f"{progress_bar(pct, 20)} {pct:5.1f}%",
        f"{format_count(t.get('rows_copied'))}/{format_count(t.get('rows_total'))}",
        format_rate(rate) if rate and t.get("state") == "copying" else "-",
        format_duration(t.get("eta_s")),
    )
    return tuple(Text(c) for c in cells)


def new_log_entries(
    seen: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The entries of ``entries`` that come after the last one of ``seen`` (all if not found)."""
    if not seen:
        return list(entries)
    last = seen[-1]
    for index in range(len(entries) - 1, -1, -1):
        if entries[index] == last:
            return list(entries[index + 1 :])
    return list(entries)


def log_line(e: Mapping[str, Any]) -> str:
    fields = " ".join(f"{k}={v}" for k, v in (e.get("fields") or {}).items())
    text = f"{e.get('time', '?')} {e.get('level', '?'):<7} {e.get('component', '')}: {e.get('message')}"
    return f"{text} {fields}".rstrip()


class ApiClient:
    """The few API calls the TUI makes, with the bearer token on every request."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            base_url=normalize_url(base_url), headers=headers, timeout=timeout
        )

    async def status(self) -> dict[str, Any]:
        res = await self.http.get("/api/v1/status")
        res.raise_for_status()
        body: dict[str, Any] = res.json()
        return body

    async def logs(self, limit: int = 200) -> list[dict[str, Any]]:
        res = await self.http.get("/api/v1/logs", params={"limit": limit})
        res.raise_for_status()
        entries: list[dict[str, Any]] = res.json().get("logs", [])
        return entries

    async def control(self, action: str) -> tuple[bool, str]:
        """POST a control request; ``(accepted, message)`` without raising for HTTP errors."""
        try:
            res = await self.http.post(f"/api/v1/{action}")
        except httpx.HTTPError as exc:
            return False, f"{action} failed: {exc}"
        try:
            message = str(res.json().get("message", ""))
        except ValueError:
            message = res.text[:200]
        if res.status_code == 401:
            return False, f"{action} refused: wrong or missing token (--token)"
        return res.is_success, (message if res.is_success else f"{action} refused: {message}")

    async def aclose(self) -> None:
        await self.http.aclose()


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no dialog; dismisses with True only on an explicit yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    #dialog { width: 60; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    #dialog Horizontal { height: auto; margin-top: 1; }
    #dialog Button { margin-right: 2; }
    #question { width: 100%; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PgMigratorTui(App[None]):
    """The terminal UI; see the module docstring."""

    TITLE = "pgmigrator"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("v", "verify", "Verify"),
        Binding("s", "switchover", "Switchover"),
        Binding("q", "quit", "Quit"),
    ]
    DEFAULT_CSS = """
    #summary { height: auto; padding: 0 1; }
    #overall { height: 1; margin: 0 1; }
    #overall Bar { width: 60; }
    #numbers { height: auto; }
    #numbers Static { width: 1fr; padding: 0 1; height: auto; }
    #numbers #rate { width: 2fr; }
    #throughput { height: 3; margin: 0 1; }
    #tables { height: 1fr; min-height: 5; }
    #log { height: 10; border-top: solid $primary; }
    #message { height: 1; padding: 0 1; color: $warning; }
    """

    def __init__(
        self, api_url: str = DEFAULT_API, token: str | None = None, *, interval: float = 1.0
    ) -> None:
        super().__init__()
        self.api_url = normalize_url(api_url)
        self.client = ApiClient(self.api_url, token)
        self.interval = interval
        self.snapshot: dict[str, Any] | None = None
        self.rates: deque[float] = deque(maxlen=CHART_POINTS)
        self.last_message = ""
        self._seen_logs: list[Mapping[str, Any]] = []
        self._refreshing = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"connecting to {self.api_url} ...", id="summary")
        yield ProgressBar(total=100, show_eta=False, id="overall")
        with Horizontal(id="numbers"):
            yield Static("lag -", id="lag")
            yield Static("rate -", id="rate")
            yield Static("errors 0", id="errors")
        yield Sparkline([], id="throughput")
        yield DataTable(id="tables", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="log", max_lines=LOG_LINES, wrap=False, markup=False)
        yield Static("", id="message")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#tables", DataTable)
        for key, label in TABLE_COLUMNS:
            table.add_column(label, key=key)
        self.sub_title = self.api_url
        await self.refresh_data()
        self.set_interval(self.interval, self.refresh_data)

    async def on_unmount(self) -> None:
        await self.client.aclose()

    # -- polling -----------------------------------------------------------------------------------

    async def refresh_data(self) -> None:
        """Fetch the snapshot and the log, and redraw; a failure shows in the summary line."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            snap = await self.client.status()
            logs = await self.client.logs()
        except (httpx.HTTPError, ValueError) as exc:
            with contextlib.suppress(NoMatches):
                self.query_one("#summary", Static).update(
                    Text.assemble(("disconnected", "bold red"), f" from {self.api_url}: {exc}")
                )
            return
        finally:
            self._refreshing = False
        self.snapshot = snap
        self.rates.append(float(snap.get("rows_per_s") or 0.0))
        with contextlib.suppress(NoMatches):  # the app may have closed during the requests
            self._draw(snap)
            self._append_logs(logs)

    def _draw(self, snap: Mapping[str, Any]) -> None:
        pct = overall_percent(snap)
        self.query_one("#summary", Static).update(
            Text.assemble(
                "pipeline ",
                (str(snap.get("pipeline", "?")), "bold"),
                "   phase ",
                (str(snap.get("phase", "?")), "bold"),
                f"   state {snap.get('state', '?')}   uptime {format_duration(snap.get('uptime_s'))}"
                f"   tables {snap.get('tables_copied', 0)}/{snap.get('tables_total', 0)} copied"
                f"   {pct:.1f}%",
                *_verification(snap),
            )
        )
        self.query_one("#overall", ProgressBar).update(total=100, progress=pct)
        self.query_one("#lag", Static).update(Text(f"lag {snap.get('lag_formatted') or 'unknown'}"))
        self.query_one("#rate", Static).update(
            Text(
                f"rate {format_rate(snap.get('rows_per_s'))}, {format_rate(snap.get('bytes_per_s'), 'bytes')}"
                f"   total {format_count(snap.get('total_rows'))} rows, {format_bytes(snap.get('total_bytes'))}"
            )
        )
        last = snap.get("last_error") or {}
        errors = f"errors {snap.get('error_count', 0)}"
        if last:
            errors += f"  last: {last.get('message', '')}"
        self.query_one("#errors", Static).update(Text(errors))
        self.query_one("#throughput", Sparkline).data = list(self.rates)
        self._draw_tables(snap.get("tables") or [])

    def _draw_tables(self, tables: Sequence[Mapping[str, Any]]) -> None:
        widget = self.query_one("#tables", DataTable)
        wanted = {f"{t.get('schema')}.{t.get('name')}": t for t in tables}
        for key in [k.value for k in widget.rows if k.value not in wanted]:
            if key is not None:
                widget.remove_row(key)
        for key, t in wanted.items():
            cells = table_cells(t)
            if key in widget.rows:
                for (column, _), value in zip(TABLE_COLUMNS, cells, strict=True):
                    widget.update_cell(key, column, value)
            else:
                widget.add_row(*cells, key=key)

    def _append_logs(self, entries: Sequence[Mapping[str, Any]]) -> None:
        fresh = new_log_entries(self._seen_logs, entries)
        if fresh:
            view = self.query_one("#log", RichLog)
            for entry in fresh:
                view.write(log_line(entry))
            self._seen_logs = list(entries)

    # -- control -----------------------------------------------------------------------------------

    async def _control(self, action: str) -> None:
        ok, message = await self.client.control(action)
        self.last_message = message
        with contextlib.suppress(NoMatches):  # the app may have closed during the request
            self.query_one("#message", Static).update(Text(message))
            self.notify(message, severity="information" if ok else "error", markup=False)

    async def action_pause(self) -> None:
        await self._control("pause")

    async def action_resume(self) -> None:
        await self._control("resume")

    async def action_verify(self) -> None:
        await self._control("verify")

    def action_switchover(self) -> None:
        question = (
            "Start the switchover?\n\nStop writes on the source first: the pipeline waits for the "
            "destination to catch up, then stops streaming."
        )

        async def answered(yes: bool | None) -> None:
            if yes:
                await self._control("switchover")
            else:
                self.query_one("#message", Static).update("switchover cancelled")

        self.push_screen(ConfirmScreen(question), answered)


def run_tui(api_url: str = DEFAULT_API, token: str | None = None, interval: float = 1.0) -> None:
    """Run the TUI in the terminal until the user quits."""
    PgMigratorTui(api_url, token, interval=interval).run()


def _verification(snap: Mapping[str, Any]) -> tuple[str, ...]:
    """The last live verification's outcome, on a line of its own, when there is one."""
    info = snap.get("info")
    found = info.get("verification") if isinstance(info, Mapping) else None
    return (f"\nverification: {found}",) if found else ()
