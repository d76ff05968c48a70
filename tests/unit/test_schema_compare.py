"""Comparing two sides' pg_dump entries: missing, extra, differing (with the first change)."""

from __future__ import annotations

from pgmigrator.schema.compare import diff, keyed, render
from pgmigrator.schema.dump import split

SOURCE = """SET statement_timeout = 0;
--
-- Name: t; Type: TABLE; Schema: public; Owner: app
--

CREATE TABLE public.t (
    id integer NOT NULL,
    v text
);
--
-- Name: t_v; Type: INDEX; Schema: public; Owner: app
--

CREATE INDEX t_v ON public.t USING btree (v);
"""


def entries(text: str) -> dict[tuple[str, str, str], str]:
    return keyed(split(text))


def test_equal_sides_whatever_the_owner_comment() -> None:
    other = SOURCE.replace("Owner: app", "Owner: someone")
    result = diff(entries(SOURCE), entries(other))
    assert result.compared == 2 and not result.differences
    assert render(result) == "schema: 2 object(s) compared, all equal"


def test_missing_extra_and_the_first_differing_line() -> None:
    dest = (
        SOURCE.replace("    v text\n", "    v varchar(10)\n")
        .replace("Name: t_v; Type: INDEX", "Name: t_w; Type: INDEX")
        .replace("INDEX t_v", "INDEX t_w")
    )
    result = diff(entries(SOURCE), entries(dest))
    got = [(d.kind, d.name, d.status, d.detail) for d in result.differences]
    assert got == [
        ("INDEX", "t_v", "missing", "CREATE INDEX t_v ON public.t USING btree (v);"),
        ("INDEX", "t_w", "extra", "CREATE INDEX t_w ON public.t USING btree (v);"),
        ("TABLE", "t", "differs", "source: v text / destination: v varchar(10)"),
    ]
    text = render(result)
    assert text.splitlines()[0] == "schema: 2 object(s) compared, 3 differ"
    assert "  missing on the destination: INDEX public.t_v" in text


PLACED = """SET default_tablespace = fast;

SET default_table_access_method = heap;

--
-- Name: t; Type: TABLE; Schema: public; Owner: app; Tablespace: fast
--

CREATE TABLE public.t (id integer);

--
-- Name: v; Type: VIEW; Schema: public; Owner: app
--

CREATE VIEW public.v AS SELECT 1;
"""


def test_placement_compared_on_the_objects_it_places_only() -> None:
    """Each side's settings in force carry over to later entries: a view after a table in
    another tablespace or access method is not a difference, the table is."""
    other = PLACED.replace("SET default_tablespace = fast;", "SET default_tablespace = '';")
    other = other.replace("; Tablespace: fast", "").replace("= heap;", "= columnar;")
    result = diff(entries(PLACED), entries(other))
    assert [(d.status, d.name) for d in result.differences] == [("differs", "t")]
    assert "default_table_access_method" in result.differences[0].detail, result.differences[0]
