-- A table rewrite: integer -> bigint changes how every row is stored, so
-- PostgreSQL rewrites order_items and rebuilds its indexes while it holds
-- ACCESS EXCLUSIVE (no reads, no writes). The rehearsal measures how long.
ALTER TABLE order_items ALTER COLUMN quantity TYPE bigint;
