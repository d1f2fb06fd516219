-- Expand: a nullable column (rule add-column-nullable); the running artifact never sees it.
ALTER TABLE notes ADD COLUMN author text;
