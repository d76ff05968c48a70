"""`CoreBudget`: idle cores for an index build, against copies pending and builds queued."""

from __future__ import annotations

from pgmigrator.schema.cores import CoreBudget, is_index_build


def test_idle_cores_follow_the_copy_and_the_queue() -> None:
    budget = CoreBudget(4)
    budget.expect_copies(tables=10, workers=4)
    budget.queued(1)
    assert budget.take() == 0  # four copy workers busy
    budget.finished(0)
    for _ in range(8):
        budget.copied()
    budget.queued(1)
    assert budget.take() == 1  # two tables left for two workers; this build; one core idle
    budget.finished(1)
    budget.copied()
    budget.copied()
    budget.queued(3)  # three builds of one table, queued before any starts
    assert budget.take() == 1  # the first to start takes the one idle core...
    assert budget.take() == 0  # ...and the others find none
    assert budget.take() == 0
    budget.finished(1)
    budget.finished(0)
    budget.finished(0)
    budget.copied()  # never below zero
    budget.queued(1)
    assert budget.take() == 3  # the copy is over, a build left alone takes the other cores


def test_index_builds_are_recognised_after_placement_settings() -> None:
    assert is_index_build("SET default_tablespace = '';\n\nCREATE UNIQUE INDEX t_pkey ON t (id);")
    assert is_index_build("CREATE INDEX t_v ON public.t USING btree (v);")
    assert not is_index_build(
        "ALTER TABLE ONLY t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES u;"
    )
    assert not is_index_build("-- CREATE INDEX in a comment\nALTER INDEX t_v ATTACH PARTITION x;")
