-- Safe: since PostgreSQL 11 a constant default is kept in the catalog, so
-- adding this column rewrites nothing and holds its lock for milliseconds.
ALTER TABLE customers ADD COLUMN tier text NOT NULL DEFAULT 'standard';
