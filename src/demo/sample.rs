//! What the demo puts in its sandbox: the sample shop database on the live
//! cluster (customers, products, orders with text/numeric/jsonb, their
//! items — generated in SQL, `schema.sql`, `load.sql`, `finish.sql`), the
//! example sqlx migrations (a safe one, a table rewrite, a concurrent index,
//! and a failing release kept aside in `migrations-failing/`), and the
//! configuration file every stage reads.

use std::path::Path;

use sqlx::{Connection, PgConnection, Row};

use super::DemoError;
use super::cluster::{Cluster, Postgres};
use super::sandbox::Sandbox;
use crate::pg::ConnUrl;

/// The target's name, its database and the role that owns it.
pub const TARGET: &str = "shop";
pub const DATABASE: &str = "shop";
const OWNER: &str = "shop";

const SCHEMA: &str = include_str!("schema.sql");
const LOAD: &str = include_str!("load.sql");
const FINISH: &str = include_str!("finish.sql");

/// The first release: applied.
pub const RELEASE_1: [(&str, &str); 6] = [
    ("20250101000001_add_customer_tier.up.sql", include_str!("migrations/20250101000001_add_customer_tier.up.sql")),
    ("20250101000001_add_customer_tier.down.sql", include_str!("migrations/20250101000001_add_customer_tier.down.sql")),
    (
        "20250101000002_widen_order_item_quantity.up.sql",
        include_str!("migrations/20250101000002_widen_order_item_quantity.up.sql"),
    ),
    (
        "20250101000002_widen_order_item_quantity.down.sql",
        include_str!("migrations/20250101000002_widen_order_item_quantity.down.sql"),
    ),
    (
        "20250101000003_index_orders_created_at.up.sql",
        include_str!("migrations/20250101000003_index_orders_created_at.up.sql"),
    ),
    (
        "20250101000003_index_orders_created_at.down.sql",
        include_str!("migrations/20250101000003_index_orders_created_at.down.sql"),
    ),
];

/// The second release: passes its rehearsal, fails on live.
pub const RELEASE_2: [(&str, &str); 4] = [
    (
        "20250201000001_add_customer_email_verified.up.sql",
        include_str!("migrations-failing/20250201000001_add_customer_email_verified.up.sql"),
    ),
    (
        "20250201000001_add_customer_email_verified.down.sql",
        include_str!("migrations-failing/20250201000001_add_customer_email_verified.down.sql"),
    ),
    (
        "20250201000002_unique_customer_email.up.sql",
        include_str!("migrations-failing/20250201000002_unique_customer_email.up.sql"),
    ),
    (
        "20250201000002_unique_customer_email.down.sql",
        include_str!("migrations-failing/20250201000002_unique_customer_email.down.sql"),
    ),
];

/// What was loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dataset {
    pub customers: i64,
    pub products: i64,
    pub orders: i64,
    pub order_items: i64,
    /// Heap and TOAST of the four tables (the data itself).
    pub bytes: i64,
    /// With their indexes.
    pub total_bytes: i64,
    pub database_bytes: i64,
}

impl Dataset {
    pub fn rows(&self) -> i64 {
        self.customers + self.products + self.orders + self.order_items
    }
}

/// Creates the `shop` role and database on `live` and fills it until its
/// tables hold at least `size_mb` MiB of data (indexes not counted);
/// `progress` gets the MiB loaded after each batch of orders.
pub async fn load(live: &Cluster, size_mb: u64, mut progress: impl FnMut(u64)) -> Result<Dataset, DemoError> {
    let sql = |what: &'static str| move |source| DemoError::Sql { what, source };
    let mut admin = connect(&live.url("postgres", "postgres")).await?;
    sqlx::raw_sql(&format!("CREATE ROLE {OWNER} LOGIN")).execute(&mut admin).await.map_err(sql("create the role"))?;
    sqlx::raw_sql(&format!("CREATE DATABASE {DATABASE} OWNER {OWNER}"))
        .execute(&mut admin)
        .await
        .map_err(sql("create the database"))?;
    admin.close().await.ok();

    let mut c = connect(&live.url(OWNER, DATABASE)).await?;
    sqlx::raw_sql(SCHEMA).execute(&mut c).await.map_err(sql("create the tables"))?;
    let size = size_mb.max(1) as i64;
    let customers = (size * 300).max(500);
    let products = (size * 16).clamp(200, 2000);
    let batch = (size * 160).max(1000);
    sqlx::query(statement("customers")).bind(customers).execute(&mut c).await.map_err(sql("load customers"))?;
    sqlx::query(statement("products")).bind(products).execute(&mut c).await.map_err(sql("load products"))?;
    let target = size << 20;
    let mut next = 1i64;
    loop {
        sqlx::query(statement("orders"))
            .bind(next)
            .bind(next + batch - 1)
            .bind(customers)
            .bind(products)
            .execute(&mut c)
            .await
            .map_err(sql("load orders"))?;
        next += batch;
        let (bytes, _) = tables_bytes(&mut c).await?;
        progress((bytes >> 20) as u64);
        if bytes >= target {
            break;
        }
    }
    sqlx::raw_sql(FINISH).execute(&mut c).await.map_err(sql("add constraints and indexes"))?;
    sqlx::raw_sql("VACUUM ANALYZE customers, products, orders, order_items")
        .execute(&mut c)
        .await
        .map_err(sql("vacuum"))?;
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM customers) AS customers, (SELECT count(*) FROM products) AS products, \
                (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM order_items) AS order_items, \
                pg_database_size(current_database()) AS db",
    )
    .fetch_one(&mut c)
    .await
    .map_err(sql("count the rows"))?;
    let (bytes, total_bytes) = tables_bytes(&mut c).await?;
    c.close().await.ok();
    Ok(Dataset {
        customers: row.get("customers"),
        products: row.get("products"),
        orders: row.get("orders"),
        order_items: row.get("order_items"),
        bytes,
        total_bytes,
        database_bytes: row.get("db"),
    })
}

/// After the second release's rehearsal, on live only: a customer signs
/// up again with customer 1's address in capitals — the duplicate the
/// failing migration's unique index trips over. Returns the address.
pub async fn sign_up_again(live: &ConnUrl) -> Result<String, DemoError> {
    let mut c = pg_connect(live).await?;
    let email: String = sqlx::query_scalar(
        "INSERT INTO customers (name, email, phone, address, country, created_at, marketing_opt_in) \
         SELECT name, upper(email), phone, address, country, now(), true FROM customers WHERE id = 1 \
         RETURNING email",
    )
    .fetch_one(&mut c)
    .await
    .map_err(|source| DemoError::Sql { what: "insert the duplicate customer", source })?;
    c.close().await.ok();
    Ok(email)
}

/// What live looks like after the demo: the applied migration versions,
/// whether the duplicate customer is there, and the databases kept by a
/// failed release (`shop_failed_*`), read through the target's live URL.
pub async fn live_state(live: &ConnUrl, email: &str) -> Result<(Vec<String>, bool, Vec<String>), DemoError> {
    let q = |source| DemoError::Sql { what: "read live's state", source };
    let mut c = pg_connect(live).await?;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut c)
        .await
        .map_err(q)?;
    let present: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM customers WHERE email = $1)")
        .bind(email)
        .fetch_one(&mut c)
        .await
        .map_err(q)?;
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'shop\\_failed\\_%' ORDER BY 1")
            .fetch_all(&mut c)
            .await
            .map_err(q)?;
    c.close().await.ok();
    Ok((versions.iter().map(i64::to_string).collect(), present, kept))
}

async fn connect(url: &str) -> Result<PgConnection, DemoError> {
    let url = ConnUrl::parse(url).map_err(|reason| DemoError::Setup(format!("bad cluster URL {url}: {reason}")))?;
    pg_connect(&url).await
}

async fn pg_connect(url: &ConnUrl) -> Result<PgConnection, DemoError> {
    crate::pg::connect(url, "pgrehearse-demo").await.map_err(|e| DemoError::Setup(e.to_string()))
}

/// The tables' data (heap + TOAST) and their total size with indexes.
async fn tables_bytes(c: &mut PgConnection) -> Result<(i64, i64), DemoError> {
    sqlx::query_as(
        "SELECT coalesce(sum(pg_table_size(oid)), 0)::int8, coalesce(sum(pg_total_relation_size(oid)), 0)::int8 \
         FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
    )
    .fetch_one(c)
    .await
    .map_err(|source| DemoError::Sql { what: "measure the tables", source })
}

/// The statement after `-- statement: <name>` in `load.sql`.
fn statement(name: &str) -> &'static str {
    let marker = format!("-- statement: {name}\n");
    let start = LOAD.find(&marker).map(|i| i + marker.len()).expect("load.sql names every statement");
    let rest = &LOAD[start..];
    rest.find("-- statement: ").map_or(rest, |end| &rest[..end])
}

/// Writes the first release into `migrations/` and the failing one into
/// `migrations-failing/`.
pub fn write_migrations(sandbox: &Sandbox) -> Result<(), DemoError> {
    write_files(&sandbox.migrations(), &RELEASE_1)?;
    write_files(&sandbox.failing(), &RELEASE_2)
}

/// Copies the failing release into `migrations/`: it becomes the pending plan.
pub fn queue_failing_release(sandbox: &Sandbox) -> Result<(), DemoError> {
    write_files(&sandbox.migrations(), &RELEASE_2)
}

fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<(), DemoError> {
    std::fs::create_dir_all(dir).map_err(|e| DemoError::io(dir, e))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| DemoError::io(&path, e))?;
    }
    Ok(())
}

/// The configuration file: a local store, `.eml` mail, a window that is
/// always open, the live cluster's superuser as `admin_url` (a failed
/// release restores and renames databases), the other cluster as shadow.
pub fn config_text(sandbox: &Sandbox, pg: &Postgres, live: &Cluster, shadow: &Cluster) -> String {
    let s = |p: &Path| toml_str(&p.display().to_string());
    format!(
        r#"# Written by `pgrehearse demo`; the next demo run in this directory replaces it.
# Try: pgrehearse -c {config} status   (with the live cluster started, see report.txt)
state_dir = {state}

[store]
kind = "local"
path = {store}

[snapshot]
pg_bindir = {bindir}

[email]
transport = "file"
dir = {mail}
from = "pgrehearse demo <pgrehearse@demo.example.com>"
to = ["dba@demo.example.com"]

[[targets]]
name = "{TARGET}"
live_url = {live}
admin_url = {admin}
shadow_url = {shadow}
migrations = {{ kind = "sqlx", dir = {migrations} }}
windows = [{{ cron = "* * * * * *", duration = "24h", timezone = "UTC" }}]
lock_timeout = "5s"
on_failure = "restore"
restore_jobs = 2
checks = [
  {{ name = "every order has items", sql = "SELECT NOT EXISTS (SELECT 1 FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id))", expect = "true" }},
]
"#,
        config = sandbox.config().display(),
        state = s(&sandbox.state()),
        store = s(&sandbox.store()),
        bindir = s(&pg.bindir),
        mail = s(&sandbox.mail()),
        live = toml_str(&live.url(OWNER, DATABASE)),
        admin = toml_str(&live.url("postgres", "postgres")),
        shadow = toml_str(&shadow.url("postgres", "postgres")),
        migrations = s(&sandbox.migrations()),
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_load_statement_is_found() {
        for name in ["customers", "products", "orders"] {
            let sql = statement(name);
            assert!(sql.trim_start().starts_with("INSERT") || sql.trim_start().starts_with("WITH"), "{name}: {sql}");
            assert!(!sql.contains("-- statement:"), "{name} runs into the next statement");
        }
    }

    #[test]
    fn the_failing_migration_runs_outside_a_transaction() {
        // Otherwise the release would run in one transaction and roll
        // back instead of restoring: the demo must show a restore.
        assert!(RELEASE_2.iter().any(|(n, t)| n.ends_with(".up.sql") && t.starts_with("-- no-transaction")));
        assert!(RELEASE_1.iter().chain(RELEASE_2.iter()).all(|(_, t)| t.ends_with('\n')));
    }
}
