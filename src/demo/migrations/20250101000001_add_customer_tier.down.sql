ALTER TABLE customers DROP COLUMN tier;
