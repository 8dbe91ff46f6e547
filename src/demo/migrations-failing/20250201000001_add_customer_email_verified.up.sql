ALTER TABLE customers ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
