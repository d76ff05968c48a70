"""Where a switchover sets a destination sequence: the source's value plus a margin, in the
sequence's own direction and within its bounds."""

from __future__ import annotations

from pgmigrator.pipeline.sequences import SequenceState


def test_no_margin_copies_the_state_as_it_is() -> None:
    assert SequenceState(41, False).target(0) == (41, False)
    assert SequenceState(41, True).target(0) == (41, True)


def test_the_margin_goes_the_way_the_sequence_goes() -> None:
    assert SequenceState(500, True, increment=5).target(1000) == (1500, True)
    # descending: -1, -2, ... -500 handed out; the destination must go on below them
    down = SequenceState(-500, True, increment=-1, minimum=-(2**31), maximum=-1)
    assert down.target(1000) == (-1500, True)


def test_the_margin_stops_at_the_bounds() -> None:
    small = SequenceState(32_000, True, increment=1, minimum=1, maximum=32_767)
    assert small.target(1000) == (32_767, True)  # setval(33000) would fail the switchover
    down = SequenceState(-32_000, True, increment=-1, minimum=-32_768, maximum=-1)
    assert down.target(1000) == (-32_768, True)
