"""Fixtures of the fault-injection suite."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.scenarios.faults.helpers import stop_all


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Child pgmigrator processes of a test; whatever still runs at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    stop_all(started)
