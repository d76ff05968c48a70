"""`CoreBudget`: idle cores for an index build, against copies pending and steps queued."""

from __future__ import annotations

from pgmigrator.schema.cores import CoreBudget, is_index_build


def test_spare_cores_follow_the_copy_and_the_queue() -> None:
    budget = CoreBudget(4)
    budget.expect_copies(tables=10, workers=4)
    budget.queued(1)
    assert budget.spare() == 0  # four copy workers busy
    for _ in range(8):
        budget.copied()
    assert budget.spare() == 1  # two tables left for two workers; this build; one core idle
    budget.queued(2)  # two more builds of the same table, queued before any starts
    assert budget.spare() == 0
    for _ in range(2):
        budget.copied()
        budget.finished()
    assert budget.spare() == 3  # the copy is over, the build left alone gets the other cores
    for _ in range(2):
        budget.finished()
    budget.copied()  # never below zero
    budget.queued(1)
    assert budget.spare() == 3


def test_index_builds_are_recognised_after_placement_settings() -> None:
    assert is_index_build("SET default_tablespace = '';\n\nCREATE UNIQUE INDEX t_pkey ON t (id);")
    assert is_index_build("CREATE INDEX t_v ON public.t USING btree (v);")
    assert not is_index_build(
        "ALTER TABLE ONLY t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES u;"
    )
    assert not is_index_build("-- CREATE INDEX in a comment\nALTER INDEX t_v ATTACH PARTITION x;")
