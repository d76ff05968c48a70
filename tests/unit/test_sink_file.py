"""The file sink on a real directory: size and time rotation, gzip, retention, restart appends."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from pgmigrator.errors import ConfigError
from pgmigrator.lsn import Lsn
from pgmigrator.sinks.base import Event, SinkContext, build_sink
from pgmigrator.sinks.file import FileSink
from pgmigrator.stream.encode import make_event


def ev(i: int, pad: int = 0) -> Event:
    body = orjson.dumps({"id": f"0/1:{i}", "pad": "x" * pad})
    return make_event(f"0/1:{i}", Lsn(1), "c", "s", "t", body)


def lines(path: Path) -> list[int]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return [int(orjson.loads(line)["id"].split(":")[1]) for line in data.splitlines()]


def sink(tmp_path: Path, **options: object) -> FileSink:
    built = build_sink("file", "f", {"path": str(tmp_path / "e.jsonl"), **options}, SinkContext())
    assert isinstance(built, FileSink)
    return built


async def test_size_rotation_splits_batches_and_keeps_order(tmp_path: Path) -> None:
    s = sink(tmp_path, max_bytes="1KB", fsync="never")
    await s.start()
    await s.send([ev(i, pad=80) for i in range(1, 40)])  # ~100 bytes each: 4 files
    await s.close()
    files = [*s.rotated(), s.path]
    sizes = [p.stat().st_size for p in files]
    assert len(files) >= 4 and all(size <= 1024 for size in sizes)
    assert all(size > 1024 - 110 for size in sizes[:-1]), (
        "a file rotates only when the next event does not fit"
    )
    assert [n for p in files for n in lines(p)] == list(range(1, 40))


async def test_time_rotation_gzip_and_retention(tmp_path: Path) -> None:
    s = sink(tmp_path, rotate_s="1m", gzip=True, keep=2)
    now = [1000.0]
    s.clock = lambda: now[0]
    await s.start()
    for batch in range(5):
        await s.send([ev(batch * 10 + i) for i in range(3)])
        now[0] += 61  # the next write finds the file open for more than rotate_s
    await s.close()
    rotated = s.rotated()
    assert [p.name.endswith(".gz") for p in rotated] == [True, True]
    assert [lines(p) for p in [*rotated, s.path]] == [[20, 21, 22], [30, 31, 32], [40, 41, 42]]
    assert not list(tmp_path.glob("*.partial"))


async def test_a_restart_appends(tmp_path: Path) -> None:
    first = sink(tmp_path, fsync="always")
    await first.start()
    await first.send([ev(1), ev(2)])
    await first.close()
    again = sink(tmp_path)
    await again.start()
    await again.send([ev(3)])
    await again.close()
    assert lines(again.path) == [1, 2, 3]


def test_option_errors() -> None:
    with pytest.raises(ConfigError, match="is not a size"):
        build_sink("file", "f", {"path": "/tmp/x", "max_bytes": "big"}, SinkContext())
    with pytest.raises(ConfigError, match="is not a duration"):
        build_sink("file", "f", {"path": "/tmp/x", "rotate_s": "soon"}, SinkContext())
    with pytest.raises(ConfigError, match="fsync"):
        build_sink("file", "f", {"path": "/tmp/x", "fsync": "sometimes"}, SinkContext())
