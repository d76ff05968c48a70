"""Unit tests of the state file: paths, atomic writes, reading back, the periodic persister."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from pgmigrator.errors import ConfigError, StateError
from pgmigrator.metrics import (
    Collector,
    StateFileCorrupt,
    StateFileMissing,
    StatePersister,
    list_state_files,
    read_state,
    state_path,
    write_state_file,
)

NOW = 1_772_200_000.0


def test_state_path_per_pipeline(tmp_path: Path) -> None:
    assert state_path("default", tmp_path) == tmp_path / "state.json"
    assert state_path("orders-eu", tmp_path) == tmp_path / "state-orders-eu.json"
    assert state_path().name == "state.json"
    assert state_path().parent == Path("~/.pgmigrator").expanduser()
    for bad in ("", "../etc", "a/b", ".hidden", "x" * 101):
        with pytest.raises(ConfigError):
            state_path(bad, tmp_path)


def test_round_trip_with_ages(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    snap = {"timestamp": "2026-02-27T13:46:30.000Z", "phase": "copy", "tables": [{"n": 1}]}
    write_state_file(path, snap)
    os.utime(path, (NOW - 4, NOW - 4))
    state = read_state(path, now=NOW)
    assert state.snapshot == snap
    assert state.timestamp_age_s == pytest.approx(10.0)
    assert state.mtime_age_s == pytest.approx(4.0)
    assert state.age_s == pytest.approx(10.0)
    assert not state.is_stale()
    assert state.is_stale(threshold_s=5)
    assert path.read_text().startswith('{\n  "timestamp"')  # indented, human-readable
    assert (path.stat().st_mode & 0o777) == 0o600


def test_age_falls_back_to_mtime(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state_file(path, {"phase": "copy", "timestamp": "garbage"})
    os.utime(path, (NOW - 42, NOW - 42))
    state = read_state(path, now=NOW)
    assert state.timestamp is None
    assert state.age_s == pytest.approx(42.0)
    assert state.is_stale()


def test_missing_file_has_a_friendly_error(tmp_path: Path) -> None:
    write_state_file(state_path("other", tmp_path), {})
    with pytest.raises(StateFileMissing) as info:
        read_state(state_path("mine", tmp_path))
    err = info.value
    assert isinstance(err, StateError)
    assert "no state file at" in err.message
    assert err.hint is not None and "--name" in err.hint and "other" in err.hint
    assert "hint:" in str(err)


@pytest.mark.parametrize("content", [b"", b'{"phase": "co', b"[1, 2]", b"\xff\xfe"])
def test_corrupt_file_has_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileCorrupt) as info:
        read_state(path)
    assert isinstance(info.value, StateError)
    assert str(path) in info.value.message
    assert info.value.hint


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_state_file(path, {"phase": "old"})

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_state_file(path, {"phase": "new"})
    assert orjson.loads(path.read_bytes()) == {"phase": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    big = {"tables": [{"name": f"t{i}", "rows": i} for i in range(2000)]}
    write_state_file(path, {**big, "n": -1})
    done = threading.Event()

    def writer() -> None:
        for n in range(30):
            write_state_file(path, {**big, "n": n})
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[int] = set()
    while not done.is_set():
        seen.add(read_state(path).snapshot["n"])  # raises StateFileCorrupt on a torn read
    thread.join()
    assert read_state(path).snapshot["n"] == 29
    assert seen <= set(range(-1, 30))
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_list_state_files(tmp_path: Path) -> None:
    for name in ("default", "a", "b-2"):
        write_state_file(state_path(name, tmp_path), {})
    assert list_state_files(tmp_path) == {
        "default": tmp_path / "state.json",
        "a": tmp_path / "state-a.json",
        "b-2": tmp_path / "state-b-2.json",
    }
    assert list_state_files(tmp_path / "nowhere") == {}


async def _until(predicate: Any, timeout: float = 2.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


async def test_persister_writes_periodically_and_at_stop(tmp_path: Path) -> None:
    collector = Collector("orders")
    persister = StatePersister(collector, base_dir=tmp_path, interval=0.01)
    assert persister.path == tmp_path / "state-orders.json"
    persister.start()
    persister.start()  # idempotent
    await _until(lambda: persister.writes >= 3)
    collector.set_phase("done")
    await persister.stop()
    state = read_state(persister.path)
    assert state.snapshot["phase"] == "done"
    assert state.snapshot["pipeline"] == "orders"
    assert state.age_s < 5


async def test_persister_survives_write_failures(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    collector = Collector()
    async with StatePersister(collector, blocker / "state.json", interval=0.01) as persister:
        await _until(lambda: persister.failures >= 2)
    assert persister.writes == 0
    health = collector.snapshot()["health"]["state-file"]
    assert health["status"] == "degraded"
    assert "cannot write" in health["detail"]
    persister.path = tmp_path / "state.json"  # the disk is back
    assert await persister.write_now()
    assert collector.snapshot()["health"]["state-file"]["status"] == "ok"
