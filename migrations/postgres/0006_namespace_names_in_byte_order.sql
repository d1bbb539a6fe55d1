-- Namespaces are listed by name in byte order, as SQLite lists them and as record ids
-- already sort (0001), whatever collation the database was made with.
ALTER TABLE namespaces ALTER COLUMN name TYPE TEXT COLLATE "C";
