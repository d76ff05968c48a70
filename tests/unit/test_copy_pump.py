"""The loader of the optional C COPY loop: which libpq it binds to, and when it stays out."""

from __future__ import annotations

import os
import subprocess
import sys

from pgmigrator._libpq import libpq_paths

MAPS = """\
7f01a000-7f01b000 r--p 00000000 fd:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f02a000-7f02b000 r-xp 00001000 fd:01 456 /venv/site-packages/psycopg_binary.libs/libpq-e9b5.so.5.18
7f02b000-7f02c000 r--p 00002000 fd:01 456 /venv/site-packages/psycopg_binary.libs/libpq-e9b5.so.5.18
7f03a000-7f03b000 rw-p 00000000 00:00 0
7ffd0000-7ffd1000 rw-p 00000000 00:00 0                          [stack]
"""


def test_libpq_paths_reads_each_mapped_library_once() -> None:
    assert libpq_paths(MAPS) == {"/venv/site-packages/psycopg_binary.libs/libpq-e9b5.so.5.18"}


def test_two_libpq_libraries_are_both_seen_so_the_loader_declines() -> None:
    extra = "7f04a000-7f04b000 r-xp 00000000 fd:01 789 /usr/lib/x86_64-linux-gnu/libpq.so.5\n"
    assert len(libpq_paths(MAPS + extra)) == 2


def test_pure_python_switch_keeps_the_python_loop() -> None:
    code = "from pgmigrator.pipeline._pump import c_pump; assert c_pump() is None"
    env = {**os.environ, "PGMIGRATOR_PURE_PYTHON": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
