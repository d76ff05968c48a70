"""The terminal UI (``pgmigrator tui``): a Textual app over the HTTP API of a running pipeline."""

from pgmigrator.tui.app import ApiClient, ConfirmScreen, PgMigratorTui, run_tui

__all__ = ["ApiClient", "ConfirmScreen", "PgMigratorTui", "run_tui"]
