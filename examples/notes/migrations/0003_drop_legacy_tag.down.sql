-- The down migration of 0003 (never applied forward): brings the column back, empty.
ALTER TABLE notes ADD COLUMN legacy_tag text;
