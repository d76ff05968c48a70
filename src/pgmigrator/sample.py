"""Sample schema and data with the types and objects a migration must carry.

Used by ``pgmigrator demo`` and by the test suite: every common type (numeric NaN, infinite dates,
arrays with NULLs, jsonb, bytea, enums, domains, composites, ranges, inet, uuid, tsvector, TOASTed
values), quoted/unicode/reserved identifiers, several schemas, a partitioned table, generated and
identity columns, sequences, foreign keys, triggers, views, a materialized view and large objects
(one larger than the pieces they are copied in, one with a comment, one empty).
"""

from __future__ import annotations

SCHEMA_SQL = r'''
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA sales;
CREATE SCHEMA "Ünïcode Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE address AS (street text, zip varchar(10));

CREATE TABLE public.every_type (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n numeric, r real, d double precision, i2 smallint, b boolean,
    dt date, ts timestamp, tstz timestamptz, iv interval, t time,
    txt text, vc varchar(20), ch char(3),
    js jsonb, j json, ba bytea, u uuid, ip inet, cidr_ cidr, mac macaddr,
    arr int[], tarr text[], m mood, p positive_int, addr address,
    rng int4range, tsr tstzrange, tsv tsvector, big text,
    doubled numeric GENERATED ALWAYS AS (n * 2) STORED
);

CREATE TABLE sales.customers (
    id serial PRIMARY KEY,
    "select" text NOT NULL,
    "Mixed Case" text,
    email text UNIQUE
);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES sales.customers (id),
    amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE TABLE sales.audit (id bigserial PRIMARY KEY, order_id bigint, note text);
CREATE FUNCTION sales.audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO sales.audit (order_id, note) VALUES (NEW.id, 'trigger'); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.audit_order();

CREATE TABLE sales.bookings (
    id int PRIMARY KEY, code text NOT NULL, during tstzrange NOT NULL,
    CONSTRAINT bookings_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (during WITH &&)
);

CREATE TABLE "Ünïcode Schema"."Tåble ""quoted""" ("ÿ column" text PRIMARY KEY, "order" int);

CREATE TABLE public.events (
    id bigint NOT NULL, at date NOT NULL, payload text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');

CREATE TABLE public.no_key (a int, b text);
CREATE TABLE public.full_identity (a int, b text);
ALTER TABLE public.full_identity REPLICA IDENTITY FULL;

CREATE TABLE public.documents (id int PRIMARY KEY, title text, body oid);

CREATE VIEW sales.order_totals AS SELECT customer_id, sum(amount) AS total FROM sales.orders GROUP BY customer_id;
CREATE MATERIALIZED VIEW sales.big_customers AS SELECT customer_id, total FROM sales.order_totals WHERE total > 100;
'''

DATA_SQL = r'''
INSERT INTO public.every_type (n, r, d, i2, b, dt, ts, tstz, iv, t, txt, vc, ch, js, j, ba, u, ip, cidr_, mac,
                               arr, tarr, m, p, addr, rng, tsr, tsv, big)
SELECT CASE WHEN g % 7 = 0 THEN 'NaN'::numeric ELSE g * 1.5 END,
       g / 3.0, CASE WHEN g % 11 = 0 THEN 'Infinity'::float8 ELSE g / 7.0 END, (g % 300)::smallint, g % 2 = 0,
       CASE WHEN g % 13 = 0 THEN 'infinity'::date WHEN g % 17 = 0 THEN '-infinity'::date ELSE DATE '2020-01-01' + g END,
       CASE WHEN g % 19 = 0 THEN 'infinity'::timestamp ELSE TIMESTAMP '2021-06-01 12:00' + g * INTERVAL '1 minute' END,
       TIMESTAMPTZ '2022-03-04 05:06:07.123456+02' + g * INTERVAL '1 second',
       g * INTERVAL '1 hour 3 minutes', TIME '01:02:03' + g * INTERVAL '1 second',
       'row ' || g || E' with \t tab and "quotes" and \\ backslash', left('vc' || g, 20), 'abc',
       jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'two', NULL)), '{"k": [1, 2]}',
       decode(md5(g::text), 'hex'), gen_random_uuid(), '192.168.0.1'::inet + g, '10.0.0.0/8', '08:00:2b:01:02:03',
       ARRAY[g, NULL, g + 1], ARRAY['a', NULL, 'c ' || g], (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood, g + 1,
       ROW('street ' || g, '12345')::address, int4range(g, g + 10), tstzrange(now(), NULL),
       to_tsvector('english', 'the quick brown fox ' || g),
       CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 4000) END
FROM generate_series(1, %(rows)s) g;

INSERT INTO sales.customers ("select", "Mixed Case", email)
SELECT 'customer ' || g, CASE WHEN g % 2 = 0 THEN 'x' END, 'c' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO sales.orders (customer_id, amount) SELECT 1 + g % 200, (g % 1000) / 10.0 FROM generate_series(1, %(rows)s) g;
INSERT INTO "Ünïcode Schema"."Tåble ""quoted""" SELECT 'clé ' || g, g FROM generate_series(1, 100) g;
INSERT INTO sales.bookings SELECT g, 'B' || g,
    tstzrange(TIMESTAMPTZ '2024-01-01' + g * INTERVAL '1 hour', TIMESTAMPTZ '2024-01-01' + (g + 1) * INTERVAL '1 hour')
FROM generate_series(1, %(rows)s) g;
INSERT INTO public.events SELECT g, DATE '2024-01-01' + (g % 700), 'payload ' || g FROM generate_series(1, %(rows)s) g;
INSERT INTO public.no_key SELECT g % 10, 'dup' FROM generate_series(1, 100) g;
INSERT INTO public.full_identity SELECT g % 10, 'dup' FROM generate_series(1, 100) g;
REFRESH MATERIALIZED VIEW sales.big_customers;
INSERT INTO public.documents VALUES
    (1, 'greeting', lo_from_bytea(0, convert_to('hello from a large object', 'UTF8'))),
    (2, 'scan', lo_from_bytea(0, decode(repeat(md5('scan'), 20000), 'hex'))),
    (3, 'empty', lo_create(0));
DO $$ BEGIN
    EXECUTE format('COMMENT ON LARGE OBJECT %s IS %L',
                   (SELECT body FROM public.documents WHERE id = 1), 'the first document');
END $$;
'''


def load(conn: object, rows: int = 2000) -> None:
    """Create the sample schema and fill it (``conn``: an autocommit psycopg connection)."""
    conn.execute(SCHEMA_SQL)  # type: ignore[attr-defined]
    conn.execute(DATA_SQL.replace("%(rows)s", str(int(rows))))  # type: ignore[attr-defined]
