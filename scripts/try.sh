#!/usr/bin/env bash
# Try pgrehearse on a fresh machine: builds it, starts a throwaway PostgreSQL
# cluster under ./pgrehearse-demo with a sample database, takes a snapshot
# into a local store, lists it, downloads it and restores it with pg_restore,
# then compares row counts. Re-runnable; stops its cluster on exit.
# (`pgrehearse demo` will replace this with the whole release cycle.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pgrehearse-target}

if ! command -v pg_config >/dev/null; then
    echo "==> Installing PostgreSQL (apt-get install postgresql-15)"
    apt-get update -qq && apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
fi
bindir=$(pg_config --bindir)

echo "==> Building pgrehearse"
cargo build --locked --quiet
bin="$CARGO_TARGET_DIR/debug/pgrehearse"

demo="$root/pgrehearse-demo"
sock=$(mktemp -d /tmp/pgr-try-XXXX)
rm -rf "$demo/data" "$demo/state"
mkdir -p "$demo"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root.
    chown postgres "$demo" "$sock"
    as_pg=(runuser -u postgres --)
fi
cleanup() { "${as_pg[@]}" "$bindir/pg_ctl" -D "$demo/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$sock"; }
trap cleanup EXIT

echo "==> Starting a throwaway PostgreSQL cluster in $demo/data"
"${as_pg[@]}" "$bindir/initdb" -D "$demo/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$demo/data" -l "$demo/postgres.log" -w \
    -o "-c listen_addresses='' -c unix_socket_directories=$sock -c fsync=off -p 5432" start >/dev/null
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -U postgres "$@"; }

echo "==> Creating a sample shop database"
psql -c "CREATE DATABASE shop"
psql -d shop <<'SQL'
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE, created_at timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, total numeric(12,2), items jsonb, note text, placed_at timestamptz);
CREATE INDEX orders_customer ON orders (customer_id);
INSERT INTO customers (name, email) SELECT 'Customer ' || i, 'c' || i || '@example.com' FROM generate_series(1, 20000) i;
INSERT INTO orders (customer_id, total, items, note, placed_at)
SELECT 1 + (i % 20000), round((random() * 500)::numeric, 2),
       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (i % 997), 'qty', 1 + i % 5)),
       (ARRAY['gift wrap', 'leave at door', 'call first', ''])[1 + i % 4] || ' ' || md5(i::text),
       now() - (i || ' minutes')::interval
FROM generate_series(1, 300000) i;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 400;
SQL

cat > "$demo/pgrehearse.toml" <<TOML
state_dir = "$demo/state"
[[targets]]
name = "shop"
live_url = "postgres://postgres@localhost/shop?host=$sock&port=5432"
retention = { keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 3 }
TOML

run() { echo "\$ pgrehearse $*"; "$bin" -c "$demo/pgrehearse.toml" "$@"; }
echo "==> Snapshot"
run snapshot
run snapshots
echo "==> Download and restore with pg_restore"
rm -f "$demo/shop.dump"
run download latest -o "$demo/shop.dump"
psql -c "CREATE DATABASE shop_restored"
"$bindir/pg_restore" -h "$sock" -U postgres -d shop_restored --exit-on-error "$demo/shop.dump"
a=$(psql -d shop -Atc "SELECT count(*) FROM orders")
b=$(psql -d shop_restored -Atc "SELECT count(*) FROM orders")
echo "orders: live $a rows, restored $b rows"
[ "$a" = "$b" ]
echo "==> Done. Config: $demo/pgrehearse.toml; snapshots: $demo/state/snapshots"
