-- Delegated administration (docs/contract.md §11): the e-mail domains whose addresses an
-- organization's managers may assign seats to, as a JSON array of lower-case domains
-- (validated by the admin API). Empty: managers cannot assign. TEXT, as in the SQLite schema,
-- so both backends read it the same way.
ALTER TABLE organizations ADD COLUMN email_domains TEXT NOT NULL DEFAULT '[]';
