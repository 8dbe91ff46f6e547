-- Bulk-load statements of the sample shop, one per `-- statement:` block.
-- customers and products take $1 = how many; an orders batch takes $1 =
-- first order id, $2 = last order id, $3 = customers, $4 = products, and
-- writes the orders' items first (the order totals are their sums).
-- Repeat customers are frequent: customer ids are skewed towards 1.
-- statement: customers
INSERT INTO customers (id, name, email, phone, address, country, created_at, marketing_opt_in, notes)
SELECT g, f || ' ' || l,
       lower(f) || '.' || lower(l) || g || '@' || demo_gen.pick(ARRAY['gmail.com','outlook.com','yahoo.com',
         'web.de','gmx.net','orange.fr','icloud.com','proton.me']),
       '+' || (1 + floor(random() * 49))::int || ' ' || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
       demo_gen.address(),
       demo_gen.pick(ARRAY['DE','DE','FR','ES','IT','AT','CH','NL','GB','IE','PT','PL','US','US','CA']),
       timestamptz '2019-01-01' + random() * interval '5 years', random() < 0.3,
       CASE WHEN random() < 0.2 THEN demo_gen.words(4 + (g % 12)::int) END
FROM generate_series(1::bigint, $1::bigint) g,
     LATERAL (SELECT demo_gen.pick(ARRAY['James','Mary','Robert','Patricia','John','Jennifer','Michael','Linda',
                'David','Elizabeth','Sophie','Lukas','Emma','Noah','Mia','Elias','Hannah','Felix','Lea','Jonas',
                'Chloe','Hugo','Ines','Louis','Camille','Mateo','Lucia','Leon','Giulia','Ada']) f,
                     demo_gen.pick(ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis',
                'Martinez','Lopez','Wilson','Anderson','Taylor','Moore','Martin','Lee','White','Harris','Clark',
                'Mueller','Schmidt','Fischer','Weber','Dubois','Moreau','Rossi','Russo','Bianchi','Lovelace'])
                     l WHERE g > 0) n;
-- statement: products
INSERT INTO products (id, sku, name, description, price, attributes, created_at)
SELECT g, 'SKU-' || lpad(g::text, 6, '0'),
       demo_gen.pick(ARRAY['Classic','Premium','Organic','Compact','Deluxe','Smart','Eco','Vintage','Modern',
         'Portable']) || ' ' || demo_gen.pick(ARRAY['Chair','Table','Lamp','Kettle','Blender','Backpack',
         'Jacket','Sneaker','Watch','Headphones','Speaker','Mug','Notebook','Blanket','Desk','Bottle','Tent']),
       demo_gen.words(10 + (g % 30)::int), round((2.99 + random() * 400)::numeric, 2),
       jsonb_build_object('weight_g', (50 + random() * 5000)::int,
         'color', demo_gen.pick(ARRAY['black','white','red','blue','green','grey']),
         'in_stock', random() < 0.9,
         'tags', jsonb_build_array(demo_gen.pick(ARRAY['kitchen','outdoor','office','travel','kids','sale']),
           demo_gen.pick(ARRAY['new','bestseller','eco','limited','classic']))),
       timestamptz '2018-06-01' + random() * interval '5 years'
FROM generate_series(1::bigint, $1::bigint) g;
-- statement: orders
WITH items AS (
  INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
  SELECT o, l, p.id, 1 + ((o * 31 + l * 7) % 4)::int, p.price
  FROM generate_series($1::bigint, $2::bigint) o
  CROSS JOIN LATERAL generate_series(1, 1 + (o % 4)::int) l
  JOIN products p ON p.id = 1 + ((o * 7919 + l * 104729) % $4::bigint)
  RETURNING order_id, line_no, product_id, quantity, unit_price
), sums AS (
  SELECT order_id, sum(quantity * unit_price) AS sub, count(*) AS lines,
         jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad(product_id::text, 6, '0'), 'qty', quantity)
                   ORDER BY line_no) AS skus
  FROM items GROUP BY order_id
)
INSERT INTO orders (id, customer_id, status, currency, subtotal, tax, total, shipping_address, notes, metadata,
                    created_at, updated_at)
SELECT s.order_id, 1 + floor(random() * random() * $3::bigint)::bigint, t.st,
       demo_gen.pick(ARRAY['EUR','EUR','EUR','USD','USD','GBP','CHF']),
       s.sub, round(s.sub * 0.19, 2), round(s.sub * 1.19, 2), demo_gen.address(),
       CASE WHEN random() < 0.6 THEN demo_gen.words(3 + (s.order_id % 16)::int) END,
       jsonb_build_object('channel', demo_gen.pick(ARRAY['web','web','app','phone','marketplace']),
         'lines', s.lines, 'skus', s.skus, 'gift', random() < 0.05,
         'coupon', CASE WHEN random() < 0.1 THEN 'SAVE' || (5 + (s.order_id % 4) * 5) END,
         'payment_ref', 'pi_' || substr(md5(s.order_id::text || random()::text), 1, 24)),
       t.ts, t.ts + random() * interval '20 days'
FROM sums s,
     LATERAL (SELECT timestamptz '2021-01-01' + s.order_id * interval '97 seconds' AS ts,
                     CASE WHEN r < 0.70 THEN 'delivered' WHEN r < 0.80 THEN 'shipped' WHEN r < 0.88 THEN 'paid'
                          WHEN r < 0.95 THEN 'pending' ELSE 'cancelled' END AS st
              FROM (SELECT random() AS r WHERE s.order_id > 0) x) t;
