-- Contract: a dropped column (rule drop-column); its rollback plan is the .down.sql beside it.
ALTER TABLE notes DROP COLUMN legacy_tag;
