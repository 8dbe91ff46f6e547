-- no-transaction
-- One account per e-mail address, whatever its case. The rehearsal passes:
-- the snapshot has no duplicates. But a customer signs up again after the
-- rehearsal (the demo does it, in capitals), so on live this index fails,
-- after the previous migration committed: the release restores live from
-- its pre-release snapshot.
CREATE UNIQUE INDEX CONCURRENTLY customers_email_lower_key ON customers (lower(email));
