-- no-transaction
-- Built without blocking writes. CREATE INDEX CONCURRENTLY cannot run inside
-- a transaction: the marker on the first line makes sqlx (and pgrehearse)
-- run this file on its own, statement by statement.
CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at);
