"""The benchmark database: realistic, moderately compressible rows generated
in SQL (never pgbench alone, whose data compresses 50x).

  customers  name, e-mail, phone, postal address, notes
  products   SKU, name, description, price, jsonb attributes
  orders     the bulk: timestamps, status, currency, numeric amounts, shipping
             address, jsonb line items, free-text notes, md5-style references

`orders` grows in batches until the tables hold `target_mib` of data (heap +
TOAST, indexes not counted). pg_dump's output of it compresses about 2.5-3x
with zstd -1; the snapshot benchmark reports the ratio it measured.
"""

import json
import time

from common import log

VERSION = 1  # bump when the SQL changes: `--keep` clusters are regenerated

FIRST = ("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
         "Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra "
         "Mark Margaret Paul Ashley Steven Kimberly Andrew Emily Kenneth Donna Joshua Michelle Sophie Lukas "
         "Emma Noah Mia Elias Hannah Felix Lea Jonas Chloe Hugo Ines Louis Camille Mateo Lucia Leon Giulia")
LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
        "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
        "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
        "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Mueller Schmidt Schneider Fischer Weber "
        "Meyer Wagner Becker Schulz Hoffmann Dubois Moreau Laurent Rossi Russo Ferrari Esposito Bianchi")
STREET = ("Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Sunset Church Mill River Spring Chestnut "
          "Highland Forest Meadow Ridge Willow Broad Market Station Garden Bridge Victoria Mozart Linden "
          "Bahnhof Kirch Schiller Goethe Rue_de_la_Paix Via_Roma Harbour Orchard Valley Cherry Walnut")
SUFFIX = "Street Avenue Road Lane Drive Way Boulevard Court Place Strasse Gasse Weg"
CITY = ("Berlin:DE Hamburg:DE Munich:DE Cologne:DE Paris:FR Lyon:FR Marseille:FR Madrid:ES Barcelona:ES "
        "Rome:IT Milan:IT Vienna:AT Zurich:CH Amsterdam:NL Rotterdam:NL Brussels:BE London:GB Manchester:GB "
        "Dublin:IE Lisbon:PT Porto:PT Warsaw:PL Prague:CZ Copenhagen:DK Stockholm:SE Oslo:NO Helsinki:FI "
        "Boston:US Chicago:US Denver:US Seattle:US Austin:US Portland:US Toronto:CA Montreal:CA")
WORDS = ("please leave the parcel at front door back side garden gate with neighbour if nobody is home call "
         "before delivery ring bell twice fragile handle care gift wrap birthday present do not include "
         "invoice in box customer asked for express shipping invoice address differs from delivery address "
         "deliver after pm before am weekdays only weekend office reception floor building entrance code "
         "apartment second third left right door blue green red large small package order was paid by bank "
         "transfer card refund requested partial item missing damaged replaced returned exchange size colour "
         "wrong corrected address updated phone number changed new contact person contacted support ticket "
         "resolved pending review approved shipped warehouse north south east west priority standard "
         "economy carrier tracking delayed due to weather holiday season stock backorder expected next week")
ADJ = "Classic Premium Organic Compact Deluxe Ultra Smart Eco Vintage Modern Rustic Wireless Portable Heavy Light"
NOUN = ("Chair Table Lamp Kettle Blender Backpack Jacket Sneaker Watch Headphones Speaker Mug Notebook Pen "
        "Blanket Pillow Shelf Desk Bottle Knife Pan Toaster Router Keyboard Mouse Monitor Charger Cable Tent")


def _arr(words):
    return "ARRAY[" + ",".join("'" + w.replace("_", " ") + "'" for w in words.split()) + "]"


SETUP = f"""
CREATE SCHEMA bench_gen;
CREATE FUNCTION bench_gen.pick(a text[]) RETURNS text LANGUAGE sql VOLATILE
  AS $$ SELECT a[1 + floor(random() * cardinality(a))::int] $$;
CREATE FUNCTION bench_gen.words(n int) RETURNS text LANGUAGE sql VOLATILE
  AS $$ SELECT string_agg(bench_gen.pick({_arr(WORDS)}), ' ') FROM generate_series(1, n) $$;
CREATE FUNCTION bench_gen.address() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT (1 + floor(random() * 240))::int || ' ' || bench_gen.pick({_arr(STREET)}) || ' '
      || bench_gen.pick({_arr(SUFFIX)}) || ', ' || lpad(floor(random() * 99999)::int::text, 5, '0') || ' '
      || replace(bench_gen.pick({_arr(CITY)}), ':', ', ') $$;

CREATE TABLE customers (
  id int PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, email text NOT NULL,
  phone text, address text NOT NULL, created_at timestamptz NOT NULL, marketing_opt_in boolean NOT NULL,
  notes text);
CREATE TABLE products (
  id int PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL, description text NOT NULL,
  price numeric(10,2) NOT NULL, attributes jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE orders (
  id bigint PRIMARY KEY, customer_id int NOT NULL, created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL, status text NOT NULL, currency char(3) NOT NULL,
  subtotal numeric(12,2) NOT NULL, tax numeric(12,2) NOT NULL, total numeric(12,2) NOT NULL,
  shipping_name text NOT NULL, shipping_address text NOT NULL, items jsonb NOT NULL, notes text,
  tracking_code text, payment_ref text NOT NULL, client_ip inet);
"""

CUSTOMERS = """
INSERT INTO customers
SELECT g, f, l, lower(f) || '.' || lower(l) || g || '@' || bench_gen.pick(ARRAY['gmail.com','outlook.com',
         'yahoo.com','web.de','gmx.net','orange.fr','icloud.com','proton.me']),
       '+' || (1 + floor(random() * 49))::int || ' ' || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
       bench_gen.address(), timestamptz '2018-01-01' + random() * interval '6 years', random() < 0.3,
       CASE WHEN random() < 0.2 THEN bench_gen.words(4 + (g % 12)) END
FROM generate_series(1, {n}) g,
     LATERAL (SELECT bench_gen.pick({first}) f, bench_gen.pick({last}) l WHERE g > 0) n
""".replace("{first}", _arr(FIRST)).replace("{last}", _arr(LAST))

PRODUCTS = f"""
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 6, '0'), bench_gen.pick({_arr(ADJ)}) || ' ' || bench_gen.pick({_arr(NOUN)}),
       bench_gen.words(10 + g % 30), round((2.99 + random() * 400)::numeric, 2),
       jsonb_build_object('weight_g', (50 + random() * 5000)::int, 'color',
         bench_gen.pick(ARRAY['black','white','red','blue','green','grey']), 'in_stock', random() < 0.9,
         'tags', jsonb_build_array(bench_gen.pick({_arr(ADJ)}), bench_gen.pick({_arr(NOUN)}))),
       timestamptz '2017-06-01' + random() * interval '6 years'
FROM generate_series(1, {{n}}) g
"""

ORDERS = f"""
INSERT INTO orders
SELECT g, c.id, ts, ts + random() * interval '20 days', st,
       bench_gen.pick(ARRAY['EUR','EUR','EUR','USD','USD','GBP','CHF']),
       li.sub, round(li.sub * 0.19, 2), round(li.sub * 1.19, 2),
       bench_gen.pick({_arr(FIRST)}) || ' ' || bench_gen.pick({_arr(LAST)}), bench_gen.address(), li.items,
       CASE WHEN random() < 0.6 THEN bench_gen.words(3 + (g % 16)) END,
       CASE WHEN st IN ('shipped', 'delivered') THEN upper(substr(md5(random()::text), 1, 18)) END,
       'pi_' || substr(md5(g::text || random()::text), 1, 24),
       ((1 + floor(random() * 223))::int || '.' || floor(random() * 256)::int || '.'
         || floor(random() * 256)::int || '.' || (1 + floor(random() * 254))::int)::inet
FROM generate_series({{lo}}, {{hi}}) g,
     LATERAL (SELECT 1 + floor(random() * {{customers}})::int AS id WHERE g > 0) c,
     LATERAL (SELECT timestamptz '2020-01-01' + g * interval '60 seconds' + random() * interval '50 seconds' AS ts,
                     CASE WHEN r < 0.70 THEN 'delivered' WHEN r < 0.80 THEN 'shipped' WHEN r < 0.88 THEN 'paid'
                          WHEN r < 0.95 THEN 'pending' ELSE 'cancelled' END AS st
              FROM (SELECT random() AS r WHERE g > 0) x) t,
     LATERAL (SELECT jsonb_agg(jsonb_build_object('sku', sku, 'qty', qty, 'unit_price', price,
                       'discount_pct', disc)) AS items, sum(qty * price * (100 - disc) / 100)::numeric(12,2) AS sub
              FROM (SELECT 'SKU-' || lpad((1 + floor(random() * {{products}}))::int::text, 6, '0') AS sku,
                           1 + floor(random() * 3)::int AS qty, round((2.99 + random() * 200)::numeric, 2) AS price,
                           (ARRAY[0, 0, 0, 5, 10, 15])[1 + floor(random() * 6)::int] AS disc
                    FROM generate_series(1, 1 + g % 4)) x) li
"""

FINISH = """
ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
CREATE INDEX orders_created_at_idx ON orders (created_at);
DROP SCHEMA bench_gen CASCADE;
"""


def params(quick):
    if quick:
        return {"version": VERSION, "target_mib": 50, "customers": 20_000, "products": 2_000, "batch": 50_000}
    return {"version": VERSION, "target_mib": 640, "customers": 200_000, "products": 10_000, "batch": 200_000}


def table_mib(cluster, db):
    return int(cluster.psql("SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relkind = 'r' "
                            "AND relnamespace = 'public'::regnamespace", db)) / (1 << 20)


def create(cluster, db, p):
    """Creates database `db` with the dataset; returns a description of it."""
    t0 = time.monotonic()
    cluster.psql(f"CREATE DATABASE {db}")
    cluster.psql(SETUP, db)
    cluster.psql(CUSTOMERS.replace("{n}", str(p["customers"])), db)
    cluster.psql(PRODUCTS.replace("{n}", str(p["products"])), db)
    lo = 1
    while table_mib(cluster, db) < p["target_mib"]:
        hi = lo + p["batch"] - 1
        cluster.psql(ORDERS.format(lo=lo, hi=hi, customers=p["customers"], products=p["products"]), db)
        lo = hi + 1
        log(f"  orders: {hi} rows, {table_mib(cluster, db):.0f} of {p['target_mib']} MiB")
    cluster.psql(FINISH, db)
    cluster.psql("VACUUM (FREEZE, ANALYZE)", db)
    cluster.psql("CHECKPOINT", db)
    log(f"dataset created in {time.monotonic() - t0:.0f} s")
    return describe(cluster, db, p)


def describe(cluster, db, p):
    rows = cluster.psql("SELECT string_agg(relname || ' ' || n_live_tup, ', ' ORDER BY relname) "
                        "FROM pg_stat_user_tables", db)
    size = int(cluster.psql(f"SELECT pg_database_size('{db}')", db)) / (1 << 20)
    return {"params": p, "database_mib": round(size), "table_mib": round(table_mib(cluster, db)), "rows": rows}


def ensure(cluster, db, quick):
    """The dataset, reused from a `--keep` cluster when it was made with the same parameters."""
    p = params(quick)
    marker = cluster.dir / "dataset.json"
    if cluster.kept and marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("params") == p:
            log(f"reusing the dataset of the kept cluster in {cluster.dir}")
            return saved
        log("the kept cluster's dataset has other parameters: recreating it")
        cluster.psql(f"DROP DATABASE IF EXISTS {db}")
    elif cluster.kept:
        cluster.psql(f"DROP DATABASE IF EXISTS {db}")
    info = create(cluster, db, p)
    if cluster.kept:
        marker.write_text(json.dumps(info))
    return info
