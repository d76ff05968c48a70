"""The pipeline lifecycle state machine: allowed and refused transitions, listeners, idempotent stop."""

from __future__ import annotations

import itertools

import pytest

from pgmigrator.pipeline.lifecycle import (
    STATES,
    TERMINAL,
    TRANSITIONS,
    Change,
    IllegalTransition,
    Lifecycle,
)
from pgmigrator.source.replication import parse_duration_s


def at(state: str) -> Lifecycle:
    """A lifecycle driven to ``state`` along allowed transitions."""
    paths = {
        "starting": [],
        "running": ["running"],
        "paused": ["running", "paused"],
        "stopping": ["stopping"],
        "stopped": ["stopping", "stopped"],
        "failed": ["failed"],
    }
    life = Lifecycle(clock=lambda: 0.0)
    for step in paths[state]:
        life.to(step)  # type: ignore[arg-type]
    assert life.state == state
    return life


@pytest.mark.parametrize(("old", "new"), list(itertools.product(STATES, STATES)))
def test_every_pair_is_either_allowed_or_refused(old: str, new: str) -> None:
    life = at(old)
    if new in TRANSITIONS[old]:  # type: ignore[index]
        assert life.to(new).new == new  # type: ignore[arg-type]
    else:
        with pytest.raises(IllegalTransition) as err:
            life.to(new)  # type: ignore[arg-type]
        assert f"from {old} to {new}" in err.value.message
        assert life.state == old


def test_pause_resume_round_trip_notifies_listeners() -> None:
    life = at("running")
    seen: list[Change] = []
    life.subscribe(seen.append)
    life.pause("api")
    assert life.paused
    life.resume("api")
    assert [(c.old, c.new, c.reason) for c in seen] == [
        ("running", "paused", "api"),
        ("paused", "running", "api"),
    ]


def test_resume_when_not_paused_says_why() -> None:
    with pytest.raises(IllegalTransition, match="running, not paused"):
        at("running").resume()


def test_stop_and_fail_are_idempotent_at_the_end() -> None:
    life = at("paused")
    assert life.stop() is not None and life.stop() is None
    life.to("stopped")
    assert life.fail("late error") is None and life.state == "stopped"
    assert all(not TRANSITIONS[s] for s in TERMINAL)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1min", 60.0), ("500ms", 0.5), ("2s", 2.0), ("60000", 60.0), ("0", None), ("x", None)],
)
def test_wal_sender_timeout_parsing(text: str, seconds: float | None) -> None:
    assert parse_duration_s(text) == seconds
