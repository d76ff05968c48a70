"""Pure pieces of the clone: chunk planning, table patterns, pg_dump splitting, DSNs, config precedence."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pgmigrator import config
from pgmigrator.dsn import Target, redact
from pgmigrator.errors import ConfigError
from pgmigrator.pipeline.plan import block_ranges
from pgmigrator.pipeline.verify import key_ranges
from pgmigrator.schema.dump import split, waves
from pgmigrator.source.catalog import TableInfo, matches, select, unmatched_patterns


def _table(schema: str, name: str, root: tuple[str, str] | None = None) -> TableInfo:
    rs, rn = root or (schema, name)
    return TableInfo(
        1, schema, name, "r", root is not None, "p", "d", 0, 0, True, False, rs, rn, ("id",), ()
    )


def test_small_table_is_one_chunk() -> None:
    assert block_ranges(10 * 8192, threshold_bytes=100 * 8192, chunk_bytes=8192) == [(None, None)]


def test_large_table_ranges_are_contiguous_and_last_is_open() -> None:
    ranges = block_ranges(1000 * 8192, threshold_bytes=100 * 8192, chunk_bytes=300 * 8192)
    assert ranges[0][0] == 0 and ranges[-1][1] is None
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert hi == lo
    assert len(ranges) == 4


def test_patterns_match_schema_table_and_partition_roots() -> None:
    tables = [
        _table("public", "orders"),
        _table("sales", "orders"),
        _table("public", "events_2024", ("public", "events")),
    ]
    assert [t.qualified for t in select(tables, ["orders"], [])] == [
        "public.orders",
        "sales.orders",
    ]
    assert [t.qualified for t in select(tables, ["public.*"], ["public.orders"])] == [
        "public.events_2024"
    ]
    assert matches(tables[2], ["public.events"])
    assert unmatched_patterns(tables, ["public.*", "nope.*"]) == ["nope.*"]


DUMP = """--
-- PostgreSQL database dump
--

\\restrict abc
SET statement_timeout = 0;

--
-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);

--
-- Name: u u_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.u ADD CONSTRAINT u_pkey PRIMARY KEY (id);

--
-- Name: t_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX a ATTACH PARTITION b;

--
-- Name: u u_fk; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.u ADD CONSTRAINT u_fk FOREIGN KEY (id) REFERENCES public.t(id);

\\unrestrict abc
"""


def test_split_strips_meta_commands_and_round_trips() -> None:
    script = split(DUMP)
    assert [e.kind for e in script.entries] == [
        "CONSTRAINT",
        "CONSTRAINT",
        "INDEX ATTACH",
        "FK CONSTRAINT",
    ]
    assert "\\restrict" not in script.text and "\\unrestrict" not in script.text
    assert "SET statement_timeout" in script.preamble
    assert [e.kind for e in split(script.text).entries] == [
        e.kind for e in script.entries
    ]  # stored, then re-split


PLACED = """SET statement_timeout = 0;
SET default_tablespace = fast;

SET default_table_access_method = heap;

--
-- Name: t; Type: TABLE; Schema: public; Owner: app; Tablespace: fast
--

CREATE TABLE public.t (id integer NOT NULL, v text);


SET default_tablespace = '';

--
-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: app
--

ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);


SET default_tablespace = fast;

--
-- Name: t_v; Type: INDEX; Schema: public; Owner: app; Tablespace: fast
--

CREATE INDEX t_v ON public.t USING btree (v);


--
-- Name: v; Type: VIEW; Schema: public; Owner: app
--

CREATE VIEW public.v AS SELECT 1;
"""


def test_split_gives_each_entry_the_placement_settings_in_force() -> None:
    """pg_dump sets a tablespace before the header of the entry needing it, only on change:
    entries built apart (in parallel) must each carry the settings in force for them."""
    script = split(PLACED)
    first_sets = [
        [line for line in e.sql.splitlines() if line.startswith("SET ")] for e in script.entries
    ]
    fast, default, heap = (
        "SET default_tablespace = fast;",
        "SET default_tablespace = '';",
        "SET default_table_access_method = heap;",
    )
    assert first_sets == [[fast, heap], [default, heap], [fast, heap], [fast, heap]]
    assert [e.tablespace for e in script.entries] == ["fast", "", "fast", ""]
    assert "default_tablespace" not in script.preamble
    assert split(script.text) == script  # stored, then re-split: the same entries


def test_waves_keep_order_and_group_parallel_kinds() -> None:
    kinds = [[e.kind for e in wave] for wave in waves(split(DUMP).entries)]
    assert kinds == [["CONSTRAINT", "CONSTRAINT"], ["INDEX ATTACH"], ["FK CONSTRAINT"]]


def test_redaction_hides_passwords_in_both_syntaxes() -> None:
    for dsn in ("postgresql://u:s3cret@h:5432/db", "host=h password=s3cret dbname=db"):
        assert "s3cret" not in redact(dsn) and "***" in redact(dsn)
    assert "s3cret" not in Target("postgresql://u:s3cret@h/db", "source").safe
    assert redact("this is not a dsn ===") == "<unparsable connection string>"


def test_flags_override_env_override_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("workers: 3\nname: fromfile\nlog-level: debug\ncopy:\n  chunk_mb: 64\n")
    monkeypatch.setenv("PGMIGRATOR_WORKERS", "5")
    settings = config.load(cfg)
    assert (settings.workers, settings.name, settings.log_level, settings.copy_.chunk_mb) == (
        5,
        "fromfile",
        "debug",
        64,
    )
    assert config.load(cfg, workers=7).workers == 7
    monkeypatch.setenv("PGMIGRATOR_COPY__CHUNK_MB", "128")  # a nested section, prefixed
    assert config.load(cfg).copy_.chunk_mb == 128


def test_switchover_section_then_flags(tmp_path: Path) -> None:
    """The config's `switchover:` section is what the API's switchover does, and the defaults of
    `pgmigrator switchover`'s flags; a flag given (not None) wins."""
    from pgmigrator.pipeline.switchover import SwitchoverOptions

    cfg = tmp_path / "c.yaml"
    cfg.write_text("switchover:\n  fence: true\n  verify: live\n  schema: true\n  max_lag_mb: 8\n")
    options = SwitchoverOptions.from_settings(config.load(cfg))
    assert (options.fence, options.verify, options.schema, options.max_lag_bytes) == (
        True,
        "live",
        True,
        8 * 1024 * 1024,
    )
    flagged = SwitchoverOptions.from_settings(config.load(cfg), verify="sample", fence=None)
    assert (flagged.verify, flagged.fence, flagged.timeout_s) == ("sample", True, 60.0)
    cfg.write_text("switchover:\n  verify: everything\n")
    with pytest.raises(ConfigError, match=r"switchover\.verify"):
        config.load(cfg)


def test_invalid_config_names_each_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "workers: zero\nsource: 'host=x password=hunter2 port=notaport'\ntypo_field: 1\n"
    )
    with pytest.raises(ConfigError) as err:
        config.load(cfg)
    text = str(err.value)
    assert "workers:" in text and "typo_field: unknown setting" in text
    assert "hunter2" not in text


def test_require_names_flag_and_env() -> None:
    with pytest.raises(ConfigError, match="--source"):
        config.load(None).require("source")


def test_verify_key_ranges_cover_every_key_once_with_open_ends() -> None:
    assert key_ranges(1, 100, 4) == [(None, 26), (26, 51), (51, 76), (76, None)]
    assert key_ranges(5, 5, 3) == [(None, None)]  # one key: one range, the whole table
    assert key_ranges(-10, 9, 2) == [(None, 0), (0, None)]
    ranges = key_ranges(0, 1000, 7)
    for key in range(-5, 1006):  # every key (inside or outside the bounds) in exactly one range
        hits = [r for r in ranges if (r[0] is None or key >= r[0]) and (r[1] is None or key < r[1])]
        assert len(hits) == 1, key
