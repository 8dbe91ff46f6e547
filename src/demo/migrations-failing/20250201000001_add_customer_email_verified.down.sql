ALTER TABLE customers DROP COLUMN email_verified;
