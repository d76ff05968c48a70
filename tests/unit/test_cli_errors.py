"""How the command line reports errors: ours with their hint, a server error no step translated
as the server's message (not as a bug), anything else as a bug."""

from __future__ import annotations

import psycopg
import pytest

from pgmigrator.cli import handle_errors
from pgmigrator.errors import PreflightError


def _exit_and_stderr(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    @handle_errors
    def command() -> None:
        raise exc

    with pytest.raises(SystemExit) as ended:
        command()
    return int(ended.value.code or 0), capsys.readouterr().err


def test_our_errors_print_message_and_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_and_stderr(PreflightError("no slot", hint="run clone"), capsys)
    assert code == 1 and err == "error: no slot\n  hint: run clone\n"


def test_a_server_error_is_the_servers_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_and_stderr(
        psycopg.errors.NumericValueOutOfRange("value out of range"), capsys
    )
    assert code == 1
    assert err.startswith("error: the server said: value out of range\n  hint: re-run with")
    assert "internal error" not in err


def test_anything_else_is_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_and_stderr(KeyError("x"), capsys)
    assert code == 70 and err.startswith("internal error: KeyError") and "bug" in err
