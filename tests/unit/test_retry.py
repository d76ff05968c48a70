"""Unit tests: the backoff policy, the consecutive-failure counter and error classification."""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg import errors as pgerrors

from pgmigrator import config
from pgmigrator.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    DatabaseError,
    DiskFull,
    PgMigratorError,
    PrivilegeError,
    RetryableApplyError,
    RetryableCopyError,
    RetryableReplicationError,
    is_retryable,
    sqlstate_is_retryable,
)
from pgmigrator.retry import Backoff, RetryPolicy, exhausted


def test_delays_grow_geometrically_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=5.0, multiplier=2.0, jitter=0.0, max_attempts=7)
    assert list(policy.delays()) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_its_band_and_under_the_cap() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=8.0, multiplier=2.0, jitter=0.25, max_attempts=0)
    rng = random.Random(7)
    for retry in range(1, 40):
        base = policy.base_delay(retry)
        delay = policy.delay(retry, rng)
        assert base * 0.75 <= delay <= min(base * 1.25, 8.0)
    values = {round(policy.delay(1, rng), 6) for _ in range(20)}
    assert len(values) > 10  # really random, not a constant factor


def test_unlimited_attempts_never_end_and_huge_retry_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=30.0, multiplier=10.0, jitter=0.0, max_attempts=0)
    gen = policy.delays()
    first = [next(gen) for _ in range(1000)]
    assert first[-1] == 30.0 and len(first) == 1000
    assert policy.base_delay(10**6) == 30.0
    assert policy.allows(10**9)


def test_max_attempts_counts_the_first_attempt() -> None:
    assert list(RetryPolicy(max_attempts=1).delays()) == []
    assert len(list(RetryPolicy(max_attempts=3).delays())) == 2
    policy = RetryPolicy(max_attempts=3)
    assert policy.allows(1) and policy.allows(2) and not policy.allows(3)


def test_should_retry_combines_classification_and_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    lost = ConnectionFailed("connection lost")
    assert policy.should_retry(lost, 1) and policy.should_retry(lost, 2)
    assert not policy.should_retry(lost, 3)
    assert not policy.should_retry(AuthenticationFailed("bad password"), 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": -1},
        {"initial_s": 5, "max_s": 1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"max_attempts": -1},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy().base_delay(0)


def test_backoff_counts_consecutive_failures_and_gives_up() -> None:
    backoff = Backoff(RetryPolicy(initial_s=1, max_s=4, jitter=0, max_attempts=4))
    assert [backoff.failed(0.1), backoff.failed(0.1), backoff.failed(0.1)] == [1, 2, 4]
    assert backoff.failed(0.1) is None  # the 4th attempt failed: no 5th
    assert backoff.failures == 4


def test_backoff_starts_over_after_a_healthy_attempt() -> None:
    backoff = Backoff(RetryPolicy(initial_s=1, max_s=4, jitter=0, max_attempts=3))
    assert backoff.failed(0) == 1 and backoff.failed(0) == 2
    assert backoff.failed(4.0) == 1  # ran as long as the longest delay: a fresh outage
    assert backoff.failures == 1
    custom = Backoff(RetryPolicy(jitter=0, max_attempts=0), healthy_after_s=100)
    custom.failed(0)
    assert custom.failed(50) == 1.0 and custom.failures == 2
    custom.reset()
    assert custom.failures == 0


def test_exhausted_error_keeps_the_message_and_says_what_to_change() -> None:
    err = exhausted(RetryableReplicationError("walsender gone", hint="restart it"), 10)
    assert not err.retryable
    assert "walsender gone" in err.message and "10 attempts" in err.message
    assert err.hint is not None and "restart it" in err.hint and "retry.max_attempts" in err.hint


@pytest.mark.parametrize(
    ("sqlstate", "retryable"),
    [
        ("08006", True),  # connection failure
        ("08P01", True),
        ("57P01", True),  # admin shutdown (walsender or backend terminated)
        ("57P02", True),  # crash shutdown
        ("57P03", True),  # cannot connect now (server starting)
        ("40001", True),  # serialization failure
        ("40P01", True),  # deadlock
        ("55P03", True),  # lock timeout
        ("57014", True),  # statement timeout
        ("25P03", True),  # idle in transaction timeout
        ("53300", True),  # too many connections
        (None, True),  # no answer at all: the connection broke
        ("28P01", False),  # authentication
        ("28000", False),
        ("42501", False),  # permission
        ("42P01", False),  # undefined table
        ("42703", False),  # undefined column
        ("22P02", False),  # data: invalid text representation
        ("22001", False),  # data: string too long
        ("23505", False),  # unique violation
        ("53100", False),  # disk full
        ("57P04", False),  # database dropped
    ],
)
def test_sqlstate_classification(sqlstate: str | None, retryable: bool) -> None:
    assert sqlstate_is_retryable(sqlstate) is retryable
    assert DatabaseError("x", sqlstate=sqlstate).retryable is retryable


def test_is_retryable_for_our_errors_psycopg_errors_and_builtins() -> None:
    assert is_retryable(ConnectionFailed("x"))
    assert is_retryable(RetryableCopyError("x")) and is_retryable(RetryableApplyError("x"))
    assert not is_retryable(PrivilegeError("x")) and not is_retryable(DiskFull("x"))
    assert not is_retryable(ConfigError("x"))
    assert is_retryable(PgMigratorError("x", retryable=True))
    assert is_retryable(pgerrors.AdminShutdown("terminating connection"))
    assert is_retryable(pgerrors.SerializationFailure("x"))
    assert is_retryable(pgerrors.DeadlockDetected("x"))
    assert is_retryable(pgerrors.QueryCanceled("statement timeout"))
    assert not is_retryable(pgerrors.UndefinedTable("x"))
    assert not is_retryable(pgerrors.UndefinedColumn("x"))
    assert not is_retryable(pgerrors.InsufficientPrivilege("x"))
    assert not is_retryable(pgerrors.InvalidTextRepresentation("x"))
    assert is_retryable(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert is_retryable(TimeoutError()) and is_retryable(ConnectionResetError())
    assert not is_retryable(ValueError("bug"))


def test_retry_and_wal_budget_settings_load_and_validate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = config.load()
    assert settings.retry.max_attempts == 10 and settings.copy_.max_attempts is None
    assert settings.retry.policy() == RetryPolicy(0.5, 30.0, 2.0, 0.2, 10)
    assert settings.retry.policy(3).max_attempts == 3  # copy.max_attempts overrides for chunks
    path = tmp_path / "c.yaml"
    path.write_text(
        "retry: {initial_s: 0.1, max_s: 2, multiplier: 3, jitter: 0, max_attempts: 0}\n"
        "wal_budget: {warn_mb: 10, max_mb: 20, check_s: 1, heartbeat_s: 5}\n"
        "copy: {max_attempts: 2}\n"
    )
    loaded = config.load(path)
    assert loaded.retry.policy() == RetryPolicy(0.1, 2.0, 3.0, 0.0, 0)
    assert loaded.wal_budget.max_mb == 20 and loaded.wal_budget.heartbeat_s == 5
    assert loaded.copy_.max_attempts == 2
    path.write_text(
        "retry: {initial_s: 5, max_s: 1, jitter: 1.5}\nwal_budget: {warn_mb: 9, max_mb: 3}\n"
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    text = info.value.message
    assert "retry.jitter" in text and "retry" in text and "wal_budget" in text
    path.write_text("retry: {initial: 1}\n")
    with pytest.raises(ConfigError, match=r"retry\.initial: unknown setting"):
        config.load(path)
