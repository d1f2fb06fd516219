-- rhone:irreversible
ALTER TABLE orders DROP COLUMN note, ALTER COLUMN id SET NOT NULL;
ALTER TABLE "Orders" RENAME TO archive;
