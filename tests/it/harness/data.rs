//! Test data and the checks that compare a restored database with its
//! source: schema by `pg_dump --schema-only`, rows by an MD5 over every
//! table's sorted rows, sequences by their current values.

use super::pg::{Cluster, quote_ident};
use super::{run_ok, zstd_decompress};
use std::path::Path;

/// Tables with text, numeric, jsonb, bytea, a sequence, an index and a view,
/// created by `owner` (so the dump has ownership to restore).
pub fn create_rich_schema(c: &Cluster, db: &str, owner: &str, rows: u32) {
    let sql = format!(
        r#"
SET ROLE {owner};
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    balance numeric(14,2) NOT NULL DEFAULT 0,
    profile jsonb,
    avatar bytea,
    created_at timestamptz NOT NULL DEFAULT '2024-01-01T00:00:00Z'
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    invoice bigint NOT NULL DEFAULT nextval('invoice_no'),
    total numeric NOT NULL,
    note text,
    items jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX customers_profile_idx ON customers USING gin (profile);
CREATE VIEW big_spenders AS
    SELECT c.id, c.name, sum(o.total) AS spent
    FROM customers c JOIN orders o ON o.customer_id = c.id
    GROUP BY c.id, c.name;
CREATE TABLE "Odd Name" ("weird col" text, n int);
INSERT INTO customers (name, email, balance, profile, avatar)
SELECT 'customer ' || i || E' \u00e9\t"quoted"',
       'c' || i || '@example.com',
       (i * 17.31) % 100000,
       jsonb_build_object('tier', i % 5, 'tags', jsonb_build_array('a' || i % 7, i), 'nested', jsonb_build_object('x', i)),
       decode(md5(i::text), 'hex')
FROM generate_series(1, {rows}) i;
INSERT INTO orders (customer_id, total, note, items)
SELECT 1 + (i % {rows}), (i * 3.14159)::numeric(12,5), CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i END,
       jsonb_build_array(jsonb_build_object('sku', 'S' || i, 'qty', i % 9))
FROM generate_series(1, {rows} * 2) i;
INSERT INTO "Odd Name" VALUES ('a,b', 1), (NULL, 2), (E'line\nbreak', 3);
SELECT setval('invoice_no', 5000);
RESET ROLE;
"#,
        owner = quote_ident(owner)
    );
    c.psql(db, &sql);
}

/// A table of `mb` megabytes of incompressible bytea (16 KiB of SHA-256
/// output per row; stored EXTERNAL so PostgreSQL does not try to compress
/// it), so that a dump takes a while and zstd cannot shrink it.
pub fn create_blob_table(c: &Cluster, db: &str, owner: &str, mb: u32) {
    let rows = mb * 64;
    c.psql(
        db,
        &format!(
            "SET ROLE {owner};
             CREATE TABLE blobs (id int PRIMARY KEY, payload bytea NOT NULL);
             ALTER TABLE blobs ALTER COLUMN payload SET STORAGE EXTERNAL;
             INSERT INTO blobs
             SELECT i, (SELECT string_agg(sha256(int8send(i::bigint * 100000 + j)), ''::bytea)
                        FROM generate_series(1, 512) j)
             FROM generate_series(1, {rows}) i;
             RESET ROLE;",
            owner = quote_ident(owner)
        ),
    );
}

/// Base tables of `db` as `(schema, name)`, sorted.
pub fn tables(c: &Cluster, db: &str) -> Vec<(String, String)> {
    let out = c.psql(
        db,
        "SELECT table_schema || E'\\t' || table_name FROM information_schema.tables
         WHERE table_type = 'BASE TABLE'
           AND table_schema NOT IN ('pg_catalog', 'information_schema')
         ORDER BY 1",
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (s, t) = l.split_once('\t').unwrap();
            (s.to_string(), t.to_string())
        })
        .collect()
}

/// Row count and MD5 of all rows in text form, sorted, of one table.
pub fn table_digest(c: &Cluster, db: &str, schema: &str, table: &str) -> String {
    c.psql(
        db,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-')
             FROM {}.{} t",
            quote_ident(schema),
            quote_ident(table)
        ),
    )
}

pub fn row_count(c: &Cluster, db: &str, schema: &str, table: &str) -> u64 {
    c.psql(db, &format!("SELECT count(*) FROM {}.{}", quote_ident(schema), quote_ident(table))).parse().unwrap()
}

/// `pg_dump --schema-only` without comments, blank lines and the random
/// `\restrict`/`\unrestrict` keys that current pg_dump writes.
pub fn schema_dump(c: &Cluster, db: &str) -> String {
    let raw = run_ok(c.client("pg_dump").args(["--schema-only", "-d", db]));
    raw.lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sequence name → `last_value,is_called`, for every sequence.
fn sequences(c: &Cluster, db: &str) -> Vec<String> {
    let names =
        c.psql(db, "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences ORDER BY 1");
    names
        .lines()
        .filter(|l| !l.is_empty())
        .map(|n| format!("{n}={}", c.psql(db, &format!("SELECT last_value || ',' || is_called FROM {n}"))))
        .collect()
}

/// Asserts that `copy` has the same schema, rows and sequence values as
/// `original` (both databases on cluster `c`).
pub fn assert_same_database(c: &Cluster, original: &str, copy: &str) {
    let (a, b) = (schema_dump(c, original), schema_dump(c, copy));
    assert!(a == b, "schemas differ:\n--- {original}\n{a}\n--- {copy}\n{b}");
    let ta = tables(c, original);
    assert_eq!(ta, tables(c, copy), "table lists differ");
    assert!(!ta.is_empty(), "no tables to compare in {original}");
    for (s, t) in &ta {
        assert_eq!(
            table_digest(c, original, s, t),
            table_digest(c, copy, s, t),
            "rows of {s}.{t} differ between {original} and {copy}"
        );
    }
    assert_eq!(sequences(c, original), sequences(c, copy), "sequence values differ");
}

/// Creates `db` and restores a plain custom-format archive into it with
/// `pg_restore --exit-on-error` as the superuser.
pub fn restore_archive(c: &Cluster, archive: &Path, db: &str) {
    c.psql("postgres", &format!("CREATE DATABASE {}", quote_ident(db)));
    run_ok(c.client("pg_restore").args(["--exit-on-error", "-d", db]).arg(archive));
}

/// `zstd -d` the stored object, check it is a pg_dump custom archive, and
/// restore it into `db`. Returns the decompressed size.
pub fn restore_stored_zst(c: &Cluster, stored: &Path, db: &str) -> u64 {
    let plain = stored.with_extension("restored.pgdump");
    zstd_decompress(stored, &plain);
    assert_eq!(super::file_head(&plain, 5), b"PGDMP", "decompressed object is not a pg_dump archive");
    restore_archive(c, &plain, db);
    let size = std::fs::metadata(&plain).unwrap().len();
    std::fs::remove_file(&plain).unwrap();
    size
}
